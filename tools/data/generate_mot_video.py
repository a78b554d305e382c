#!/usr/bin/env python3
"""Generate seeded short videos of moving textured shapes in MOTChallenge format.

Usage::

    python tools/data/generate_mot_video.py --out data/mot_gen --splits val \
        --num-seqs 4 --num-frames 60 --size 256 --seed 0

writes, for each split::

    <out>/<split>/SHAPES-01/img1/000001.jpg ...    the frames (JPEG, quality 95)
    <out>/<split>/SHAPES-01/gt/gt.txt              frame,id,x,y,w,h,conf,class,visibility
    <out>/<split>/SHAPES-01/seqinfo.ini            MOT17's [Sequence] block
    <out>/annotations/<split>_cocoformat.json      mmdet's MOTChallengeDataset format

The json is what ``tools/dataset_converters/mot2coco.py`` of MMDetection writes for MOT17
(``videos``; ``images`` with ``frame_id`` (0-based), ``mot_frame_id``, ``video_id``;
``annotations`` with ``instance_id``, ``mot_instance_id``, ``mot_conf``, ``visibility``), so a
config reads it with ``data_root=<out>, ann_file='annotations/<split>_cocoformat.json',
data_prefix=dict(img_path='<split>')``.

Objects are the shapes of ``generate_coco_shapes.py`` (same outlines, textures, background and
clutter). They move with piecewise-constant velocities (random turns and speed changes plus
small accelerations), change scale (a log-scale random walk with changing rate) and sometimes
rotate; each has a depth, so crossing objects occlude each other. Objects enter through the image
border or appear inside it, leave through the border (a track ends when its object is fully
outside, and never comes back), and some sequences contain a stretch of frames with no object at
all (a scene cut: the objects present vanish, new ones appear afterwards). The camera is static;
each frame gets a small brightness flicker and its own pixel noise.

Labels, as MOT17 (and why):

* The box is the tight box of the object's full (amodal) mask clipped to the image, with
  exclusive ``x + w``, ``y + h`` bounds, exactly as ``generate_coco_shapes.py``: a detector trained
  on that set predicts these boxes.
* ``visibility`` = pixels of the object inside the image not hidden by objects above it / all
  pixels of its (unclipped) mask, as MOT17's visibility ratio covers occlusion and truncation.
* ``conf`` (column 7) and ``class`` (column 8) are ``1,1`` ('pedestrian'): the MOTChallenge
  evaluation (trackeval's ``MotChallenge2DBox``, mmdet's ``MOTChallengeMetric``) scores only
  class 1, so every object is class 1 as MOT17's people are. An object less than
  ``ignore_visibility`` (0.1) visible is written ``0,8`` (conf 0, class 8 'distractor'), MOT17's
  don't-care marking: the evaluation drops it from the GT *and* drops a tracker box matched to it,
  so hiding behind another object is neither a miss nor a false positive.
  The shape class is in the json's extra ``shape_label`` key (index into ``SHAPE_CLASSES``) and in
  ``<seq>/gt/labels.txt`` (``id,label`` per track).
* An object fully outside the image is not annotated in that frame.

Every sequence comes from its own generator seeded with ``(seed, crc32(split), index)``, so a set
is reproducible and sequence *i* does not depend on how many are generated.
"""
import argparse
import configparser
import json
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_coco_shapes import (SHAPE_CLASSES, SHAPE_OUTLINES, _FILL_SHIFT, draw_background,  # noqa: E402
                                  draw_clutter, object_texture)

FRAME_RATE = 30
# MOT17's classes, as mmdet's mot2coco.py writes them (ids 1..13)
MOT_CLASSES = ('pedestrian', 'person_on_vehicle', 'car', 'bicycle', 'motorbike', 'non_mot_vehicle',
               'static_person', 'distractor', 'occluder', 'occluder_on_ground', 'occluder_full', 'reflection',
               'crowd')
PEDESTRIAN, DISTRACTOR = 1, 8


@dataclass
class MovingShape:
    """One object over a whole sequence.

    polygons: outline at ``radius`` around (0, 0), unrotated (the shape's own frame).
    texture: (T, T, 3) float32 BGR texture in the shape's own frame, centred.
    states: per frame of its life, (cx, cy, scale, angle).
    """

    track_id: int
    label: int
    radius: float
    polygons: List[np.ndarray]
    texture: np.ndarray
    blur: float
    depth: float
    start: int
    states: List[Tuple[float, float, float, float]] = field(default_factory=list)

    @property
    def end(self) -> int:
        """Exclusive last frame."""
        return self.start + len(self.states)


def _draw_object(obj: MovingShape, state: Tuple[float, float, float, float], size: int):
    """Rasterise the object at ``state``: (origin (x0, y0), alpha (L, L) float32 in [0, 1],
    full mask (L, L) bool, texture (L, L, 3) float32), all in a patch around the object."""
    cx, cy, scale, angle = state
    radius = obj.radius * scale
    half = int(np.ceil(radius)) + 4
    side = 2 * half + 1
    origin = (int(np.floor(cx)) - half, int(np.floor(cy)) - half)
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, s], [-s, c]])  # row vectors: p @ rotation rotates by ``angle``
    shift = np.array([cx - origin[0], cy - origin[1]])
    local = [np.round(((p * scale) @ rotation + shift) * (1 << _FILL_SHIFT)).astype(np.int32)
             for p in obj.polygons]
    alpha = np.zeros((side, side), np.uint8)
    cv2.fillPoly(alpha, local, 255, cv2.LINE_AA, _FILL_SHIFT)
    full = alpha >= 128
    # texture frame -> patch: p_patch = scale * R (p_tex - c_tex) + shift
    tex_c = (obj.texture.shape[0] - 1) / 2.0
    a = scale * np.array([[c, -s], [s, c]])
    m = np.concatenate([a, (shift - a @ np.array([tex_c, tex_c]))[:, None]], axis=1)
    texture = cv2.warpAffine(obj.texture, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    alpha_f = alpha.astype(np.float32) / 255.0
    if obj.blur > 0:
        texture = cv2.GaussianBlur(texture, (0, 0), obj.blur)
        alpha_f = cv2.GaussianBlur(alpha_f, (0, 0), obj.blur)
    return origin, alpha_f, full, texture


def _window(origin: Tuple[int, int], side: int, size: int):
    """(image rows, image cols, patch rows, patch cols) of a patch clipped to the image."""
    x0, y0 = origin
    ix0, iy0 = min(max(x0, 0), size), min(max(y0, 0), size)
    ix1, iy1 = max(min(x0 + side, size), ix0), max(min(y0 + side, size), iy0)
    return slice(iy0, iy1), slice(ix0, ix1), slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0)


def _out_of_image(cx: float, cy: float, radius: float, size: int) -> bool:
    """True when the bounding circle lies fully outside the image."""
    return cx + radius < 0 or cy + radius < 0 or cx - radius > size or cy - radius > size


def simulate_sequence(rng: np.random.Generator, num_frames: int, size: int, classes: Sequence[str],
                      max_objects: int = 6, birth_prob: float = 0.08, empty_prob: float = 0.3,
                      diameter_range: Optional[Tuple[float, float]] = None, max_speed: Optional[float] = None,
                      background: Optional[np.ndarray] = None) -> List[MovingShape]:
    """Draw every object's trajectory (no rendering).

    Args:
        rng: the sequence's generator.
        num_frames: frames in the sequence.
        size: image side in px.
        classes: shape names; ``label`` indexes this list.
        max_objects: at most this many objects at once.
        birth_prob: chance per frame that a new object enters (while below ``max_objects``).
        empty_prob: chance that the sequence has a stretch of frames without objects.
        diameter_range: initial bounding-circle diameter range (log-uniform); default 20-90 px
            at 256 px, scaled with ``size``.
        max_speed: px per frame; default 4 at 256 px, scaled.
        background: the frame background, for picking textures that stand out from it.
    """
    k = size / 256.0
    diameter_range = diameter_range or (max(8.0, 20.0 * k), 90.0 * k)
    max_speed = max_speed if max_speed is not None else 4.0 * k
    empty = None
    if num_frames >= 10 and rng.random() < empty_prob:
        length = int(rng.integers(3, max(4, num_frames // 6)))
        start = int(rng.integers(num_frames // 4, max(num_frames // 4 + 1, num_frames - length - 2)))
        empty = (start, start + length)
    objects: List[MovingShape] = []
    live: List[Tuple[MovingShape, dict]] = []

    def spawn(t: int, inside: bool) -> None:
        label = int(rng.integers(len(classes)))
        diameter = float(np.exp(rng.uniform(np.log(diameter_range[0]), np.log(diameter_range[1]))))
        radius = diameter / 2.0
        polygons = SHAPE_OUTLINES[classes[label]](rng, radius)
        axis_aligned = classes[label] == 'rectangle' and rng.random() < 0.5
        angle = 0.0 if axis_aligned else rng.uniform(0.0, 2.0 * np.pi)
        omega = 0.0 if axis_aligned or rng.random() < 0.5 else rng.uniform(-0.03, 0.03)
        speed = rng.uniform(0.3, 1.0) * max_speed
        if inside:
            pos = rng.uniform(0.15 * size, 0.85 * size, 2)
            heading = rng.uniform(0.0, 2.0 * np.pi)
        else:  # just outside a border, heading into the image
            side = int(rng.integers(4))
            along = rng.uniform(0.15 * size, 0.85 * size)
            off = -0.6 * radius if side in (0, 2) else size + 0.6 * radius
            pos = np.array([off, along]) if side < 2 else np.array([along, off])
            inward = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]][side], float)
            heading = np.arctan2(inward[1], inward[0]) + rng.uniform(-0.7, 0.7)
        vel = speed * np.array([np.cos(heading), np.sin(heading)])
        # a texture that stands out from the background around the entry point
        side_px = 2 * int(np.ceil(radius * 1.7)) + 9
        texture, best = None, -1.0
        ref = None
        if background is not None:
            x, y = np.clip(pos, 0, size - 1).astype(int)
            ref = background[max(0, y - 16):y + 16, max(0, x - 16):x + 16].reshape(-1, 3).mean(0)
        for _ in range(4):
            cand = object_texture(rng, side_px)
            contrast = 1.0 if ref is None else float(np.linalg.norm(cand.reshape(-1, 3).mean(0) - ref))
            if contrast > best:
                texture, best = cand, contrast
            if contrast > 60.0:
                break
        blur = rng.uniform(0.6, 1.5) if rng.random() < 0.2 else 0.0
        obj = MovingShape(len(objects) + 1, label, radius, polygons, texture.astype(np.float32), blur,
                          float(rng.random()), t)
        objects.append(obj)
        live.append((obj, dict(pos=pos.astype(float), vel=vel, log_s=0.0, ds=rng.normal(0.0, 0.01), angle=angle,
                               omega=omega)))

    for _ in range(int(rng.integers(1, max(2, max_objects // 2 + 1)))):
        spawn(0, inside=rng.random() < 0.7)
    for t in range(num_frames):
        in_gap = empty is not None and empty[0] <= t < empty[1]
        if in_gap:
            live.clear()
        elif empty is not None and t == empty[1]:  # after the cut, a new scene
            for _ in range(int(rng.integers(1, 3))):
                spawn(t, inside=rng.random() < 0.5)
        elif t > 0 and len(live) < max_objects and rng.random() < birth_prob:
            spawn(t, inside=rng.random() < 0.3)
        still = []
        for obj, st in live:
            if t > obj.start:  # advance the motion state
                if rng.random() < 0.05:  # a turn / speed change
                    speed = rng.uniform(0.0, 1.0) * max_speed
                    heading = np.arctan2(st['vel'][1], st['vel'][0]) + rng.normal(0.0, 1.2)
                    st['vel'] = speed * np.array([np.cos(heading), np.sin(heading)])
                st['vel'] = st['vel'] + rng.normal(0.0, 0.1 * k, 2)
                speed = np.linalg.norm(st['vel'])
                if speed > max_speed:
                    st['vel'] *= max_speed / speed
                st['pos'] = st['pos'] + st['vel']
                if rng.random() < 0.05:
                    st['ds'] = rng.normal(0.0, 0.025)
                st['log_s'] += st['ds']
                if abs(st['log_s']) > 0.5:  # scale stays within [0.6, 1.65] of the initial
                    st['log_s'] = float(np.clip(st['log_s'], -0.5, 0.5))
                    st['ds'] = -st['ds']
                st['angle'] += st['omega']
            scale = float(np.exp(st['log_s']))
            if t > obj.start and _out_of_image(*st['pos'], obj.radius * scale, size):
                continue  # left the image: the track ends for good
            obj.states.append((float(st['pos'][0]), float(st['pos'][1]), scale, float(st['angle'])))
            still.append((obj, st))
        live[:] = still
    return [o for o in objects if o.states]


def render_sequence(rng: np.random.Generator, objects: Sequence[MovingShape], background: np.ndarray,
                    num_frames: int, ignore_visibility: float = 0.1):
    """Yield (frame (H, W, 3) uint8, annotations) per frame; annotations are dicts with
    track_id, label, bbox [x, y, w, h], area, visibility, conf, mot_class."""
    size = background.shape[0]
    noise_sigma = rng.uniform(1.0, 4.0)
    seq_blur = rng.uniform(0.4, 0.9) if rng.random() < 0.25 else 0.0
    for t in range(num_frames):
        image = background.astype(np.float32) * (1.0 + rng.normal(0.0, 0.015))
        present = sorted((o for o in objects if o.start <= t < o.end), key=lambda o: o.depth)
        drawn = []
        for obj in present:  # far to near
            origin, alpha, full, texture = _draw_object(obj, obj.states[t - obj.start], size)
            rows, cols, prows, pcols = _window(origin, alpha.shape[0], size)
            a = alpha[prows, pcols, None]
            image[rows, cols] = image[rows, cols] * (1.0 - a) + texture[prows, pcols] * a
            mask = np.zeros((size, size), bool)
            mask[rows, cols] = full[prows, pcols]
            drawn.append((obj, mask, int(full.sum())))
        anns = []
        covered = np.zeros((size, size), bool)
        for obj, mask, total in reversed(drawn):  # near to far: what lies above is known
            if mask.any():
                visible = int((mask & ~covered).sum())
                vis = visible / max(total, 1)
                ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
                x1, y1, x2, y2 = int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1
                anns.append(dict(track_id=obj.track_id, label=obj.label, bbox=[x1, y1, x2 - x1, y2 - y1],
                                 area=int(mask.sum()), visibility=round(vis, 4),
                                 conf=1 if vis >= ignore_visibility else 0,
                                 mot_class=PEDESTRIAN if vis >= ignore_visibility else DISTRACTOR))
            covered |= mask
        anns.sort(key=lambda a: a['track_id'])
        if seq_blur > 0:
            image = cv2.GaussianBlur(image, (0, 0), seq_blur)
        image += rng.normal(0.0, noise_sigma, image.shape).astype(np.float32)
        yield np.clip(image + 0.5, 0, 255).astype(np.uint8), anns


def _write_seqinfo(path: Path, name: str, num_frames: int, size: int) -> None:
    # the key order of MOT17's files: mmdet's mot2coco.py reads them by line number
    lines = ['[Sequence]', f'name={name}', 'imDir=img1', f'frameRate={FRAME_RATE}', f'seqLength={num_frames}',
             f'imWidth={size}', f'imHeight={size}', 'imExt=.jpg']
    path.write_text('\n'.join(lines) + '\n')


def generate(out_dir: Union[str, Path], num_seqs: int, num_frames: int, size: int = 256, seed: int = 0,
             split: str = 'train', classes: Sequence[str] = SHAPE_CLASSES, max_objects: int = 6,
             birth_prob: float = 0.08, empty_prob: float = 0.3, ignore_visibility: float = 0.1,
             log: bool = False) -> str:
    """Write ``num_seqs`` sequences of ``num_frames`` frames of one split.

    Args:
        out_dir: dataset root (see the module docstring for the layout).
        num_seqs, num_frames: sequences and frames per sequence.
        size: square frame side in px.
        seed: non-negative base seed.
        split: split name (folder name; it also enters the seed).
        classes: shape names out of ``SHAPE_CLASSES``; ``shape_label`` indexes this list.
        max_objects: at most this many objects at once.
        birth_prob: chance per frame that an object enters.
        empty_prob: chance per sequence of a stretch of frames with no object.
        ignore_visibility: objects less visible than this are marked don't-care (conf 0, class 8).
    Returns:
        the path of the COCO-video json.
    """
    unknown = [c for c in classes if c not in SHAPE_OUTLINES]
    if unknown or not classes:
        raise ValueError(f'classes must be a non-empty subset of {SHAPE_CLASSES}, got {classes}')
    if seed < 0 or num_seqs < 0 or num_frames < 1 or size < 32:
        raise ValueError('need seed >= 0, num_seqs >= 0, num_frames >= 1 and size >= 32')
    root = Path(out_dir)
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    split_key = zlib.crc32(split.encode('utf-8'))
    coco: Dict[str, list] = dict(categories=[dict(id=i + 1, name=n) for i, n in enumerate(MOT_CLASSES)], videos=[],
                                  images=[], annotations=[])
    instance_base = 0
    for index in range(num_seqs):
        start = time.perf_counter()
        rng = np.random.default_rng([seed, split_key, index])
        name = f'SHAPES-{index + 1:02d}'
        seq_dir = root / split / name
        (seq_dir / 'img1').mkdir(parents=True, exist_ok=True)
        (seq_dir / 'gt').mkdir(exist_ok=True)
        background = draw_background(rng, size)
        draw_clutter(rng, background, max_blob=0.12 * size)
        objects = simulate_sequence(rng, num_frames, size, classes, max_objects, birth_prob, empty_prob,
                                    background=background)
        video_id = index + 1
        coco['videos'].append(dict(id=video_id, name=name, fps=FRAME_RATE, width=size, height=size))
        gt_lines = []
        for t, (frame, anns) in enumerate(render_sequence(rng, objects, background, num_frames, ignore_visibility)):
            file_name = f'{t + 1:06d}.jpg'
            if not cv2.imwrite(str(seq_dir / 'img1' / file_name), frame, [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise OSError(f'could not write {seq_dir / file_name}')
            image_id = len(coco['images']) + 1
            coco['images'].append(dict(id=image_id, video_id=video_id, file_name=f'{name}/img1/{file_name}',
                                       height=size, width=size, frame_id=t, mot_frame_id=t + 1))
            for a in anns:
                x, y, w, h = a['bbox']
                gt_lines.append(f"{t + 1},{a['track_id']},{x},{y},{w},{h},{a['conf']},{a['mot_class']},{a['visibility']}")
                coco['annotations'].append(dict(
                    id=len(coco['annotations']) + 1, image_id=image_id, video_id=video_id, category_id=a['mot_class'],
                    bbox=[x, y, w, h], area=a['area'], iscrowd=False, visibility=a['visibility'],
                    mot_instance_id=a['track_id'], mot_conf=a['conf'], mot_class_id=a['mot_class'],
                    instance_id=instance_base + a['track_id'] - 1, shape_label=a['label']))
        # MOT17 sorts gt.txt by track then frame
        gt_lines.sort(key=lambda s: (int(s.split(',')[1]), int(s.split(',')[0])))
        (seq_dir / 'gt' / 'gt.txt').write_text(''.join(line + '\n' for line in gt_lines))
        (seq_dir / 'gt' / 'labels.txt').write_text(''.join(f'{o.track_id},{o.label}\n' for o in objects))
        _write_seqinfo(seq_dir / 'seqinfo.ini', name, num_frames, size)
        instance_base += len(objects)
        if log:
            print(f'[{split}] {name}: {num_frames} frames, {len(objects)} tracks, '
                  f'{time.perf_counter() - start:.1f} s', flush=True)
    coco['num_instances'] = instance_base
    json_path = root / 'annotations' / f'{split}_cocoformat.json'
    with open(json_path, 'w') as f:
        json.dump(coco, f)
    return str(json_path)


def read_seqinfo(seq_dir: Union[str, Path]) -> dict:
    """The [Sequence] block of ``seqinfo.ini`` as a dict of strings."""
    parser = configparser.ConfigParser()
    parser.read(Path(seq_dir) / 'seqinfo.ini')
    return dict(parser['Sequence'])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/mot_gen', help='dataset root')
    parser.add_argument('--splits', nargs='+', default=['val'])
    parser.add_argument('--num-seqs', type=int, default=4)
    parser.add_argument('--num-frames', type=int, default=60)
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--max-objects', type=int, default=6)
    parser.add_argument('--empty-prob', type=float, default=0.3)
    args = parser.parse_args()
    for split in args.splits:
        path = generate(args.out, args.num_seqs, args.num_frames, args.size, args.seed, split,
                        max_objects=args.max_objects, empty_prob=args.empty_prob, log=True)
        print(f'{split}: {args.num_seqs} sequences -> {path}')


if __name__ == '__main__':
    main()
