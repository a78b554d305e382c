"""Generate seeded short videos of moving textured shapes in MOTChallenge format.

Usage::

    python -m ebm_det.synthetic.mot_video --out data/mot_gen --splits val \
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

Objects are the shapes of :mod:`ebm_det.synthetic.coco_shapes` (same outlines, textures, background and
clutter). They move with piecewise-constant velocities (random turns and speed changes plus
small accelerations), change scale (a log-scale random walk with changing rate) and sometimes
rotate; each has a depth, so crossing objects occlude each other. Objects enter through the image
border or appear inside it, leave through the border (a track ends when its object is fully
outside, and never comes back), and some sequences contain a stretch of frames with no object at
all (a scene cut: the objects present vanish, new ones appear afterwards). The camera is static;
each frame gets a small brightness flicker and its own pixel noise.

Labels, as MOT17 (and why):

* The box is the tight box of the object's full (amodal) mask clipped to the image, with
  exclusive ``x + w``, ``y + h`` bounds, exactly as :mod:`ebm_det.synthetic.coco_shapes`: a detector trained
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ebm_det.synthetic.coco_shapes import (AXIS_ALIGNED_RECT_PROB, HALF_COVERAGE, PATCH_MARGIN,
                                            REFERENCE_SIZE, SHAPE_CLASSES, SHAPE_OUTLINES, check_classes,
                                            draw_cluttered_background, log_uniform, mask_box_xyxy,
                                            most_contrasting_texture, patch_window, rasterise,
                                            round_to_uint8, split_seed_key)

# Ranges below are (low, high): uniform draws for floats, numpy's half-open [low, high) for counts.
# Lengths marked "at REFERENCE_SIZE" (256 px) scale linearly with the frame side.
FRAME_RATE = 30  # frames per second, written to seqinfo.ini and the json
JPEG_QUALITY = 95  # quality (0-100) of the written JPEG frames
MIN_FRAME_SIZE = 32  # px, smallest frame side :func:`generate` accepts
# MOT17's classes, as mmdet's mot2coco.py writes them (ids 1..13)
MOT_CLASSES = ('pedestrian', 'person_on_vehicle', 'car', 'bicycle', 'motorbike', 'non_mot_vehicle',
               'static_person', 'distractor', 'occluder', 'occluder_on_ground', 'occluder_full',
               'reflection', 'crowd')
PEDESTRIAN, DISTRACTOR = 1, 8  # MOT class ids of scored and of don't-care objects

# ------------------------------------------------------------------------- objects at birth
MIN_DIAMETER = 8.0  # px, smallest default initial object diameter at any frame size
DIAMETER_AT_REFERENCE = (20.0, 90.0)  # px at REFERENCE_SIZE, default initial diameter range
MAX_SPEED_AT_REFERENCE = 4.0  # px per frame at REFERENCE_SIZE, default top speed
START_SPEED = (0.3, 1.0)  # initial speed / top speed
STILL_ANGLE_PROB = 0.5  # chance that a rotated object does not spin
SPIN_RATE = 0.03  # rad per frame, largest spin rate of a spinning object
SPAWN_REGION = (0.15, 0.85)  # shares of the side: where objects appear inside / along a border
ENTRY_OFFSET = 0.6  # radii outside the border at which an entering object's centre starts
ENTRY_HEADING_JITTER = 0.7  # rad, largest angle between an entering heading and the inward normal
# An object's texture is 2 * ceil(TEXTURE_RADII * radius) + TEXTURE_PAD px wide: it covers the
# object at its largest scale (exp(MAX_LOG_SCALE) ~ 1.65) plus the blur margin.
TEXTURE_RADII = 1.7  # texture half side / object radius, before padding
TEXTURE_PAD = 9  # px added to the texture side
CONTRAST_WINDOW = 16  # px, half side of the background window a new texture should stand out from
BLUR_PROB = 0.2  # chance that an object is blurred throughout
BLUR_SIGMA = (0.6, 1.5)  # px, Gaussian blur of a blurred object
SCALE_RATE_STD = 0.01  # std of an object's initial change of log-scale per frame
INITIAL_INSIDE_PROB = 0.7  # chance that an object of the first frame starts inside the image
CUT_OBJECTS = (1, 3)  # objects that appear right after an empty stretch, [low, high)
CUT_INSIDE_PROB = 0.5  # chance that one of them starts inside the image
BIRTH_INSIDE_PROB = 0.3  # chance that an object born later appears inside rather than enters

# ---------------------------------------------------------------------------------- motion
TURN_PROB = 0.05  # chance per frame of a turn / speed change
TURN_SPEED = (0.0, 1.0)  # speed after a turn / top speed
TURN_STD = 1.2  # rad, std of the heading change at a turn
ACCEL_STD_AT_REFERENCE = 0.1  # px per frame^2 at REFERENCE_SIZE, std of the velocity jitter
SCALE_RATE_CHANGE_PROB = 0.05  # chance per frame that the log-scale rate is drawn anew
SCALE_RATE_CHANGE_STD = 0.025  # std of that new rate, log-scale per frame
MAX_LOG_SCALE = 0.5  # bound on |log scale|: the size stays within [0.6, 1.65] of the initial

# ----------------------------------------------------------------------------- empty stretch
GAP_MIN_SEQUENCE = 10  # frames a sequence needs before it can get an empty stretch
GAP_MIN_LENGTH = 3  # frames, shortest empty stretch
GAP_LENGTH_DIVISOR = 6  # empty stretches are shorter than num_frames // this (and >= 3 frames)
GAP_START_DIVISOR = 4  # an empty stretch starts at frame num_frames // this or later
GAP_END_MARGIN = 2  # an empty stretch starts before num_frames - its length - this

# -------------------------------------------------------------------------------- rendering
FLICKER_STD = 0.015  # std of each frame's brightness factor around 1
FRAME_NOISE_STD = (1.0, 4.0)  # grey levels, range of a sequence's pixel-noise std
SEQUENCE_BLUR_PROB = 0.25  # chance that every frame of a sequence is blurred
SEQUENCE_BLUR_SIGMA = (0.4, 0.9)  # px, Gaussian blur of a blurred sequence

ObjectState = Tuple[float, float, float, float]  # (cx px, cy px, scale, angle rad) in one frame


@dataclass
class MovingShape:
    """One object over a whole sequence.

    radius: bounding-circle radius in px at scale 1.
    polygons: outline at ``radius`` around (0, 0), unrotated (the shape's own frame).
    texture: (T, T, 3) float32 BGR texture in the shape's own frame, centred.
    blur: Gaussian blur sigma in px (0: sharp).
    depth: in [0, 1); objects of larger depth are painted later, over the others.
    start: first frame of its life.
    states: per frame of its life, (cx, cy, scale, angle) in px, px, -, rad.
    """

    track_id: int
    label: int
    radius: float
    polygons: List[np.ndarray]
    texture: np.ndarray
    blur: float
    depth: float
    start: int
    states: List[ObjectState] = field(default_factory=list)

    @property
    def end(self) -> int:
        """Exclusive last frame."""
        return self.start + len(self.states)


@dataclass
class MotionState:
    """Motion of a live object, advanced once per frame.

    pos: (2,) float64 centre (x, y) in px; vel: (2,) px per frame.
    log_scale: log of the size relative to the initial; scale_rate: its change per frame.
    angle: rotation in rad; spin: its change per frame.
    """

    pos: np.ndarray
    vel: np.ndarray
    log_scale: float
    scale_rate: float
    angle: float
    spin: float


# --------------------------------------------------------------------------------- drawing
def _warp_texture(texture: np.ndarray, scale: float, cos: float, sin: float, shift: np.ndarray,
                  side: int) -> np.ndarray:
    """Map the object's centred texture into its (side, side, 3) patch:
    p_patch = scale * R(angle) (p_tex - c_tex) + shift."""
    tex_c = (texture.shape[0] - 1) / 2.0
    a = scale * np.array([[cos, -sin], [sin, cos]])
    m = np.concatenate([a, (shift - a @ np.array([tex_c, tex_c]))[:, None]], axis=1)
    return cv2.warpAffine(texture, m, (side, side), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def _draw_object(obj: MovingShape, state: ObjectState
                 ) -> Tuple[Tuple[int, int], np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise the object at ``state``: (origin (x0, y0), alpha (L, L) float32 in [0, 1],
    full mask (L, L) bool, texture (L, L, 3) float32), all in a patch around the object."""
    cx, cy, scale, angle = state
    half = int(np.ceil(obj.radius * scale)) + PATCH_MARGIN
    side = 2 * half + 1
    origin = (int(np.floor(cx)) - half, int(np.floor(cy)) - half)
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, s], [-s, c]])  # row vectors: p @ rotation rotates by ``angle``
    shift = np.array([cx - origin[0], cy - origin[1]])
    alpha = rasterise([(p * scale) @ rotation + shift for p in obj.polygons], side)
    texture = _warp_texture(obj.texture, scale, c, s, shift, side)
    alpha_f = alpha.astype(np.float32) / 255.0
    if obj.blur > 0:
        texture = cv2.GaussianBlur(texture, (0, 0), obj.blur)
        alpha_f = cv2.GaussianBlur(alpha_f, (0, 0), obj.blur)
    return origin, alpha_f, alpha >= HALF_COVERAGE, texture


def _out_of_image(cx: float, cy: float, radius: float, size: int) -> bool:
    """True when the bounding circle lies fully outside the image."""
    return cx + radius < 0 or cy + radius < 0 or cx - radius > size or cy - radius > size


# ------------------------------------------------------------------------------ simulation
def _empty_stretch(rng: np.random.Generator, num_frames: int,
                   empty_prob: float) -> Optional[Tuple[int, int]]:
    """With chance ``empty_prob``, the [start, end) frames of a stretch without objects."""
    if num_frames < GAP_MIN_SEQUENCE or rng.random() >= empty_prob:
        return None
    length = int(rng.integers(GAP_MIN_LENGTH,
                              max(GAP_MIN_LENGTH + 1, num_frames // GAP_LENGTH_DIVISOR)))
    earliest = num_frames // GAP_START_DIVISOR
    start = int(rng.integers(earliest, max(earliest + 1, num_frames - length - GAP_END_MARGIN)))
    return start, start + length


def _initial_rotation(rng: np.random.Generator, class_name: str) -> Tuple[float, float]:
    """(angle, spin) in rad and rad per frame: some rectangles stay axis-aligned and still."""
    axis_aligned = class_name == 'rectangle' and rng.random() < AXIS_ALIGNED_RECT_PROB
    angle = 0.0 if axis_aligned else rng.uniform(0.0, 2.0 * np.pi)
    still = axis_aligned or rng.random() < STILL_ANGLE_PROB
    spin = 0.0 if still else rng.uniform(-SPIN_RATE, SPIN_RATE)
    return angle, spin


def _inside_pose(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, float]:
    """(centre (2,) px, heading rad) of an object that appears inside the image."""
    pos = rng.uniform(SPAWN_REGION[0] * size, SPAWN_REGION[1] * size, 2)
    return pos, rng.uniform(0.0, 2.0 * np.pi)


def _entry_pose(rng: np.random.Generator, size: int, radius: float) -> Tuple[np.ndarray, float]:
    """(centre (2,) px, heading rad) of an object just outside a border, heading inwards."""
    side = int(rng.integers(4))  # 0 left, 1 right, 2 top, 3 bottom
    along = rng.uniform(SPAWN_REGION[0] * size, SPAWN_REGION[1] * size)
    off = -ENTRY_OFFSET * radius if side in (0, 2) else size + ENTRY_OFFSET * radius
    pos = np.array([off, along]) if side < 2 else np.array([along, off])
    inward = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]][side], float)
    heading = np.arctan2(inward[1], inward[0]) + rng.uniform(-ENTRY_HEADING_JITTER,
                                                             ENTRY_HEADING_JITTER)
    return pos, heading


def _entry_texture(rng: np.random.Generator, radius: float, pos: np.ndarray, size: int,
                   background: Optional[np.ndarray]) -> np.ndarray:
    """A float32 texture for an object of ``radius`` px that stands out from the background
    around its entry point ``pos`` (any of the drawn textures when there is no background)."""
    side = 2 * int(np.ceil(radius * TEXTURE_RADII)) + TEXTURE_PAD
    ref = None
    if background is not None:
        x, y = np.clip(pos, 0, size - 1).astype(int)
        w = CONTRAST_WINDOW
        ref = background[max(0, y - w):y + w, max(0, x - w):x + w].reshape(-1, 3).mean(0)

    def contrast(texture: np.ndarray) -> float:
        if ref is None:
            return 1.0
        return float(np.linalg.norm(texture.reshape(-1, 3).mean(0) - ref))

    return most_contrasting_texture(rng, side, contrast)


def _spawn(rng: np.random.Generator, track_id: int, t: int, inside: bool, size: int,
           classes: Sequence[str], diameter_range: Tuple[float, float], max_speed: float,
           background: Optional[np.ndarray]) -> Tuple[MovingShape, MotionState]:
    """A new object born at frame ``t``, inside the image or entering through a border."""
    label = int(rng.integers(len(classes)))
    radius = log_uniform(rng, *diameter_range) / 2.0
    polygons = SHAPE_OUTLINES[classes[label]](rng, radius)
    angle, spin = _initial_rotation(rng, classes[label])
    speed = rng.uniform(*START_SPEED) * max_speed
    pos, heading = _inside_pose(rng, size) if inside else _entry_pose(rng, size, radius)
    vel = speed * np.array([np.cos(heading), np.sin(heading)])
    texture = _entry_texture(rng, radius, pos, size, background)
    blur = rng.uniform(*BLUR_SIGMA) if rng.random() < BLUR_PROB else 0.0
    obj = MovingShape(track_id, label, radius, polygons, texture.astype(np.float32), blur,
                      float(rng.random()), t)
    state = MotionState(pos=pos.astype(float), vel=vel, log_scale=0.0,
                        scale_rate=rng.normal(0.0, SCALE_RATE_STD), angle=angle, spin=spin)
    return obj, state


def _advance(rng: np.random.Generator, st: MotionState, max_speed: float,
             accel_std: float) -> None:
    """Move ``st`` on by one frame: sometimes a turn / speed change, always a small random
    acceleration (speed capped at ``max_speed`` px per frame), scale and rotation drift."""
    if rng.random() < TURN_PROB:
        speed = rng.uniform(*TURN_SPEED) * max_speed
        heading = np.arctan2(st.vel[1], st.vel[0]) + rng.normal(0.0, TURN_STD)
        st.vel = speed * np.array([np.cos(heading), np.sin(heading)])
    st.vel = st.vel + rng.normal(0.0, accel_std, 2)
    speed = np.linalg.norm(st.vel)
    if speed > max_speed:
        st.vel *= max_speed / speed
    st.pos = st.pos + st.vel
    if rng.random() < SCALE_RATE_CHANGE_PROB:
        st.scale_rate = rng.normal(0.0, SCALE_RATE_CHANGE_STD)
    st.log_scale += st.scale_rate
    if abs(st.log_scale) > MAX_LOG_SCALE:  # bounce off the scale limits
        st.log_scale = float(np.clip(st.log_scale, -MAX_LOG_SCALE, MAX_LOG_SCALE))
        st.scale_rate = -st.scale_rate
    st.angle += st.spin


def _step_live(rng: np.random.Generator, live: List[Tuple[MovingShape, MotionState]], t: int,
               size: int, max_speed: float,
               accel_std: float) -> List[Tuple[MovingShape, MotionState]]:
    """Advance the live objects to frame ``t`` and record their states; return those still in
    the image (a track that leaves the image ends for good)."""
    still = []
    for obj, st in live:
        if t > obj.start:
            _advance(rng, st, max_speed, accel_std)
        scale = float(np.exp(st.log_scale))
        if t > obj.start and _out_of_image(*st.pos, obj.radius * scale, size):
            continue
        obj.states.append((float(st.pos[0]), float(st.pos[1]), scale, float(st.angle)))
        still.append((obj, st))
    return still


def simulate_sequence(rng: np.random.Generator, num_frames: int, size: int, classes: Sequence[str],
                      max_objects: int = 6, birth_prob: float = 0.08, empty_prob: float = 0.3,
                      diameter_range: Optional[Tuple[float, float]] = None,
                      max_speed: Optional[float] = None,
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
            at 256 px, scaled with ``size`` (at least 8 px).
        max_speed: px per frame; default 4 at 256 px, scaled.
        background: (size, size, 3) uint8 frame background, for picking textures that stand out
            from it.

    Returns:
        The objects that appear in at least one frame, in order of birth (track ids 1, 2, ...
        with gaps where an object never showed).
    """
    k = size / REFERENCE_SIZE
    diameter_range = diameter_range or (max(MIN_DIAMETER, DIAMETER_AT_REFERENCE[0] * k),
                                        DIAMETER_AT_REFERENCE[1] * k)
    max_speed = max_speed if max_speed is not None else MAX_SPEED_AT_REFERENCE * k
    accel_std = ACCEL_STD_AT_REFERENCE * k
    empty = _empty_stretch(rng, num_frames, empty_prob)
    objects: List[MovingShape] = []
    live: List[Tuple[MovingShape, MotionState]] = []

    def spawn(t: int, inside: bool) -> None:
        obj, state = _spawn(rng, len(objects) + 1, t, inside, size, classes, diameter_range,
                            max_speed, background)
        objects.append(obj)
        live.append((obj, state))

    # 1 to max_objects // 2 objects in the first frame
    for _ in range(int(rng.integers(1, max(2, max_objects // 2 + 1)))):
        spawn(0, inside=rng.random() < INITIAL_INSIDE_PROB)
    for t in range(num_frames):
        if empty is not None and empty[0] <= t < empty[1]:
            live.clear()
        elif empty is not None and t == empty[1]:  # after the cut, a new scene
            for _ in range(int(rng.integers(*CUT_OBJECTS))):
                spawn(t, inside=rng.random() < CUT_INSIDE_PROB)
        elif t > 0 and len(live) < max_objects and rng.random() < birth_prob:
            spawn(t, inside=rng.random() < BIRTH_INSIDE_PROB)
        live[:] = _step_live(rng, live, t, size, max_speed, accel_std)
    return [o for o in objects if o.states]


# ------------------------------------------------------------------------------- rendering
def _paint_object(image: np.ndarray, obj: MovingShape, state: ObjectState
                  ) -> Tuple[np.ndarray, int]:
    """Alpha-blend the object into the (size, size, 3) float32 ``image`` in place; return its full
    (size, size) bool mask clipped to the image and the pixel count of its unclipped mask."""
    size = image.shape[0]
    origin, alpha, full, texture = _draw_object(obj, state)
    rows, cols, prows, pcols = patch_window(origin, alpha.shape[0], size)
    a = alpha[prows, pcols, None]
    image[rows, cols] = image[rows, cols] * (1.0 - a) + texture[prows, pcols] * a
    mask = np.zeros((size, size), bool)
    mask[rows, cols] = full[prows, pcols]
    return mask, int(full.sum())


def _annotation(obj: MovingShape, mask: np.ndarray, visibility: float,
                ignore_visibility: float) -> dict:
    """One frame's annotation of ``obj`` from its clipped (size, size) bool mask."""
    x1, y1, x2, y2 = mask_box_xyxy(mask)
    scored = visibility >= ignore_visibility
    return dict(track_id=obj.track_id, label=obj.label, bbox=[x1, y1, x2 - x1, y2 - y1],
                area=int(mask.sum()), visibility=round(visibility, 4), conf=1 if scored else 0,
                mot_class=PEDESTRIAN if scored else DISTRACTOR)


def _frame_annotations(painted: Sequence[Tuple[MovingShape, np.ndarray, int]], size: int,
                       ignore_visibility: float) -> List[dict]:
    """Annotations, sorted by track id, of the objects painted in one frame (far to near, as
    (object, clipped mask, unclipped pixel count)); objects fully outside get none."""
    anns = []
    covered = np.zeros((size, size), bool)
    for obj, mask, total in reversed(painted):  # near to far: what lies above is known
        if mask.any():
            visible = int((mask & ~covered).sum())
            anns.append(_annotation(obj, mask, visible / max(total, 1), ignore_visibility))
        covered |= mask
    anns.sort(key=lambda a: a['track_id'])
    return anns


def render_sequence(rng: np.random.Generator, objects: Sequence[MovingShape],
                    background: np.ndarray, num_frames: int,
                    ignore_visibility: float = 0.1) -> Iterator[Tuple[np.ndarray, List[dict]]]:
    """Yield (frame (H, W, 3) uint8 BGR, annotations) per frame.

    Annotations are dicts with track_id, label, bbox [x, y, w, h] (px, exclusive x + w, y + h),
    area (px), visibility, conf and mot_class (see the module docstring).
    """
    size = background.shape[0]
    noise_sigma = rng.uniform(*FRAME_NOISE_STD)
    seq_blur = rng.uniform(*SEQUENCE_BLUR_SIGMA) if rng.random() < SEQUENCE_BLUR_PROB else 0.0
    for t in range(num_frames):
        image = background.astype(np.float32) * (1.0 + rng.normal(0.0, FLICKER_STD))
        present = sorted((o for o in objects if o.start <= t < o.end), key=lambda o: o.depth)
        painted = [(obj, *_paint_object(image, obj, obj.states[t - obj.start]))
                   for obj in present]  # far to near
        anns = _frame_annotations(painted, size, ignore_visibility)
        if seq_blur > 0:
            image = cv2.GaussianBlur(image, (0, 0), seq_blur)
        image += rng.normal(0.0, noise_sigma, image.shape).astype(np.float32)
        yield round_to_uint8(image), anns


# ---------------------------------------------------------------------------------- writing
def _write_seqinfo(path: Path, name: str, num_frames: int, size: int) -> None:
    """Write MOT17's ``seqinfo.ini`` [Sequence] block."""
    # the key order of MOT17's files: mmdet's mot2coco.py reads them by line number
    lines = ['[Sequence]', f'name={name}', 'imDir=img1', f'frameRate={FRAME_RATE}',
             f'seqLength={num_frames}', f'imWidth={size}', f'imHeight={size}', 'imExt=.jpg']
    path.write_text('\n'.join(lines) + '\n')


def _write_gt(gt_dir: Path, gt_lines: List[str], objects: Sequence[MovingShape]) -> None:
    """Write ``gt.txt`` (MOT17 sorts it by track, then frame) and ``labels.txt`` (id,label)."""
    gt_lines = sorted(gt_lines, key=lambda s: (int(s.split(',')[1]), int(s.split(',')[0])))
    (gt_dir / 'gt.txt').write_text(''.join(line + '\n' for line in gt_lines))
    (gt_dir / 'labels.txt').write_text(''.join(f'{o.track_id},{o.label}\n' for o in objects))


def _gt_line(frame: int, a: dict) -> str:
    """MOT17 gt.txt line ``frame,id,x,y,w,h,conf,class,visibility`` (frame 1-based)."""
    x, y, w, h = a['bbox']
    return f"{frame},{a['track_id']},{x},{y},{w},{h},{a['conf']},{a['mot_class']},{a['visibility']}"


def _cocovid_annotation(a: dict, ann_id: int, image_id: int, video_id: int,
                        instance_base: int) -> dict:
    """The json annotation of one frame annotation, as mmdet's mot2coco.py writes it."""
    return dict(
        id=ann_id, image_id=image_id, video_id=video_id, category_id=a['mot_class'],
        bbox=list(a['bbox']), area=a['area'], iscrowd=False, visibility=a['visibility'],
        mot_instance_id=a['track_id'], mot_conf=a['conf'], mot_class_id=a['mot_class'],
        instance_id=instance_base + a['track_id'] - 1, shape_label=a['label'])


def _write_sequence(seq_dir: Path, frames: Iterator[Tuple[np.ndarray, List[dict]]],
                    objects: Sequence[MovingShape], coco: Dict[str, list], video_id: int,
                    num_frames: int, size: int, instance_base: int) -> None:
    """Write one sequence's frames and MOT files under ``seq_dir`` and append its video, images
    and annotations to ``coco`` (instance ids from ``instance_base`` on)."""
    name = seq_dir.name
    (seq_dir / 'img1').mkdir(parents=True, exist_ok=True)
    (seq_dir / 'gt').mkdir(exist_ok=True)
    coco['videos'].append(dict(id=video_id, name=name, fps=FRAME_RATE, width=size, height=size))
    gt_lines = []
    for t, (frame, anns) in enumerate(frames):
        file_name = f'{t + 1:06d}.jpg'
        if not cv2.imwrite(str(seq_dir / 'img1' / file_name), frame,
                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise OSError(f'could not write {seq_dir / "img1" / file_name}')
        image_id = len(coco['images']) + 1
        coco['images'].append(dict(id=image_id, video_id=video_id,
                                   file_name=f'{name}/img1/{file_name}', height=size, width=size,
                                   frame_id=t, mot_frame_id=t + 1))
        first_id = len(coco['annotations']) + 1
        coco['annotations'] += [_cocovid_annotation(a, first_id + i, image_id, video_id,
                                                    instance_base) for i, a in enumerate(anns)]
        gt_lines += [_gt_line(t + 1, a) for a in anns]
    _write_gt(seq_dir / 'gt', gt_lines, objects)
    _write_seqinfo(seq_dir / 'seqinfo.ini', name, num_frames, size)


def generate(out_dir: Union[str, Path], num_seqs: int, num_frames: int, size: int = 256,
             seed: int = 0, split: str = 'train', classes: Sequence[str] = SHAPE_CLASSES,
             max_objects: int = 6, birth_prob: float = 0.08, empty_prob: float = 0.3,
             ignore_visibility: float = 0.1, log: bool = False) -> str:
    """Write ``num_seqs`` sequences of ``num_frames`` frames of one split.

    Args:
        out_dir: dataset root (see the module docstring for the layout).
        num_seqs, num_frames: sequences and frames per sequence.
        size: square frame side in px (at least 32).
        seed: non-negative base seed.
        split: split name (folder name; it also enters the seed).
        classes: shape names out of ``SHAPE_CLASSES``; ``shape_label`` indexes this list.
        max_objects: at most this many objects at once.
        birth_prob: chance per frame that an object enters.
        empty_prob: chance per sequence of a stretch of frames with no object.
        ignore_visibility: objects less visible than this are marked don't-care (conf 0, class 8).
        log: print one line per sequence.

    Returns:
        the path of the COCO-video json.
    """
    check_classes(classes)
    if seed < 0 or num_seqs < 0 or num_frames < 1 or size < MIN_FRAME_SIZE:
        raise ValueError('need seed >= 0, num_seqs >= 0, num_frames >= 1 and '
                         f'size >= {MIN_FRAME_SIZE}')
    root = Path(out_dir)
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    split_key = split_seed_key(split)
    coco: Dict[str, list] = dict(
        categories=[dict(id=i + 1, name=n) for i, n in enumerate(MOT_CLASSES)], videos=[],
        images=[], annotations=[])
    instance_base = 0
    for index in range(num_seqs):
        start = time.perf_counter()
        rng = np.random.default_rng([seed, split_key, index])
        name = f'SHAPES-{index + 1:02d}'
        background = draw_cluttered_background(rng, size)
        objects = simulate_sequence(rng, num_frames, size, classes, max_objects, birth_prob,
                                    empty_prob, background=background)
        frames = render_sequence(rng, objects, background, num_frames, ignore_visibility)
        _write_sequence(root / split / name, frames, objects, coco, index + 1, num_frames, size,
                        instance_base)
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
    """The [Sequence] block of ``seqinfo.ini`` as a dict of strings (keys lower-cased)."""
    parser = configparser.ConfigParser()
    parser.read(Path(seq_dir) / 'seqinfo.ini')
    return dict(parser['Sequence'])


def main() -> None:
    """Command-line entry: generate the given splits."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
