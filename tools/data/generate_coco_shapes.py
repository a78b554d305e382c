#!/usr/bin/env python3
"""Generate a seeded COCO-format 2D detection set of textured shapes on cluttered backgrounds.

Usage::

    python tools/data/generate_coco_shapes.py --out data/shapes --num-train 600 --num-val 150 \
        --size 256 --seed 0

writes::

    <out>/train/000001.png ...                  <out>/val/000001.png ...
    <out>/annotations/instances_train.json      <out>/annotations/instances_val.json

``file_name`` is relative to the split folder, so an mmdet config reads a split with
``data_root=<out>, ann_file='annotations/instances_train.json', data_prefix=dict(img='train/')``.

What an image holds:

* a background made of a two-colour linear gradient, low-frequency colour noise and, sometimes, a
  faint stripe or checker pattern;
* clutter that is **not** annotated: anti-aliased lines, random-walk curves, open arcs and
  lumpy filled blobs under the objects, and in some images a few thin lines across them;
* 2-8 objects of the classes in :data:`SHAPE_CLASSES` ('rectangle', 'ellipse', 'triangle', 'star',
  'ring'), each with its own colours and a solid, stripe, checker or noise fill, a size (the
  diameter of its bounding circle) drawn log-uniformly from 8-200 px at 256 px (the range scales
  with the image size, at least 6 px, at most 0.8 * size) and a random rotation (half of the
  rectangles stay axis-aligned); later objects partly hide earlier ones;
* Gaussian blur on some objects and some whole images, and pixel noise on every image.

Labelling rules (why each one):

* The box is the tight box of the object's *full* pixel mask (the anti-aliased shape thresholded
  at half coverage), clipped to the image, including the parts that objects painted later hide.
  That is the amodal box a detector should regress and it does not depend on paint order.
  COCO ``bbox = [x1, y1, x2 - x1, y2 - y1]`` with ``x2, y2`` exclusive pixel bounds, so mmdet's
  conversion to ``(x1, y1, x1 + w, y1 + h)`` gives back the exclusive bounds.
* ``area`` is the pixel count of that full mask (clipped to the image).
* An object whose visible fraction (pixels of its mask not covered by objects painted above it)
  would fall below ``min_visible_fraction`` (0.3) is not painted at all, so every painted object
  is annotated and no annotated object is hidden beyond recognition. The extra annotation key
  ``visible_fraction`` records the fraction for analysis; COCO tools ignore it.
* Objects are placed so that at least ``min_in_image_fraction`` (0.6) of the shape lies inside
  the image, so border truncation stays moderate.
* Blur and noise do not change boxes: a blurred object's box is that of its sharp mask.

Every image comes from its own generator seeded with ``(seed, crc32(split), index)``, so a set is
reproducible bit for bit (for fixed numpy and OpenCV versions), and image *i* does not depend on
how many images are generated.
"""
import argparse
import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

SHAPE_CLASSES: Tuple[str, ...] = ('rectangle', 'ellipse', 'triangle', 'star', 'ring')

# cv2.fillPoly takes integer points; this many fractional bits keep sub-pixel shape placement.
_FILL_SHIFT = 4

Polygon = np.ndarray  # (N, 2) float (x, y) points around the shape centre


# --------------------------------------------------------------------------------------- shapes
def _ellipse_points(a: float, b: float, num: int = 48) -> Polygon:
    """Return (num, 2) points of an axis-aligned ellipse with half-axes a (x) and b (y)."""
    t = np.linspace(0.0, 2.0 * np.pi, num, endpoint=False)
    return np.stack([a * np.cos(t), b * np.sin(t)], axis=1)


def rectangle_outline(rng: np.random.Generator, radius: float) -> List[Polygon]:
    """Rectangle whose half-diagonal is ``radius``; returns one (4, 2) polygon, unrotated."""
    # The short/long side ratio sets the angle of the diagonal; keep it >= 0.3 so thin bars
    # still cover a few pixels at the smallest sizes.
    diagonal_angle = np.arctan(rng.uniform(0.3, 1.0))
    half_w, half_h = radius * np.cos(diagonal_angle), radius * np.sin(diagonal_angle)
    return [np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])]


def ellipse_outline(rng: np.random.Generator, radius: float) -> List[Polygon]:
    """Ellipse with major half-axis ``radius``; returns one (48, 2) polygon, unrotated."""
    return [_ellipse_points(radius, radius * rng.uniform(0.35, 1.0))]


def triangle_outline(rng: np.random.Generator, radius: float) -> List[Polygon]:
    """Irregular triangle inscribed in a circle of ``radius``; returns one (3, 2) polygon."""
    # Jittering equally spaced vertex angles by < 0.4 rad keeps every interior angle >= ~35 deg,
    # so no triangle degenerates into a sliver.
    angles = np.array([0.0, 2.0, 4.0]) * np.pi / 3.0 + rng.uniform(-0.4, 0.4, 3)
    radii = radius * rng.uniform(0.75, 1.0, 3)
    return [np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)]


def star_outline(rng: np.random.Generator, radius: float) -> List[Polygon]:
    """Star with 5-7 spikes of outer radius ``radius``; returns one (2 * spikes, 2) polygon."""
    spikes = int(rng.integers(5, 8))
    angles = np.arange(2 * spikes) * np.pi / spikes
    radii = np.where(np.arange(2 * spikes) % 2 == 0, radius, radius * rng.uniform(0.38, 0.6))
    return [np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)]


def ring_outline(rng: np.random.Generator, radius: float) -> List[Polygon]:
    """Annulus of outer half-axis ``radius``; returns [outer, inner] (48, 2) polygons.

    cv2.fillPoly fills with the even-odd rule, so the inner polygon becomes a hole through which
    the background (and anything below) shows.
    """
    aspect = rng.uniform(0.75, 1.0)
    hole = rng.uniform(0.45, 0.7)
    return [_ellipse_points(radius, radius * aspect),
            _ellipse_points(radius * hole, radius * aspect * hole)]


SHAPE_OUTLINES: Dict[str, Callable[[np.random.Generator, float], List[Polygon]]] = {
    'rectangle': rectangle_outline,
    'ellipse': ellipse_outline,
    'triangle': triangle_outline,
    'star': star_outline,
    'ring': ring_outline,
}


# ------------------------------------------------------------------------------------- textures
def random_color(rng: np.random.Generator, min_saturation: int = 40,
                 min_value: int = 40) -> np.ndarray:
    """Return a (3,) float32 BGR colour drawn in HSV, so hues are uniform and few are greyish."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(min_saturation, 256),
                      rng.integers(min_value, 256)]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def pattern_field(rng: np.random.Generator, height: int, width: int, kind: str,
                  period_range: Tuple[float, float]) -> np.ndarray:
    """Return an (height, width) float32 field in [0, 1] that mixes two colours.

    kind: 'solid' (a weak shading ramp), 'stripes', 'checker' or 'noise' (smooth random blobs).
    The pattern is rotated by a random angle so stripes and checkers are not axis-aligned.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0.0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    period = rng.uniform(*period_range)
    if kind == 'solid':
        return 0.25 * (u - u.min()) / max(float(np.ptp(u)), 1.0)
    if kind == 'stripes':
        wave = 0.5 + 0.5 * np.sin(2.0 * np.pi * u / period + rng.uniform(0.0, 2.0 * np.pi))
        # Half of the stripes are hard-edged, half smooth, so edge sharpness is no class cue.
        return (wave > 0.5).astype(np.float32) if rng.random() < 0.5 else wave
    if kind == 'checker':
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == 'noise':
        cells = int(rng.integers(3, 7))
        coarse = rng.random((cells, cells)).astype(np.float32)
        smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        return np.clip(smooth + rng.normal(0.0, 0.08, smooth.shape).astype(np.float32), 0, 1)
    raise ValueError(f'unknown pattern kind {kind!r}')


_FILL_KINDS = ('solid', 'stripes', 'checker', 'noise')


def object_texture(rng: np.random.Generator, side: int) -> np.ndarray:
    """Return a (side, side, 3) float32 BGR texture: two colours mixed by a random pattern."""
    first = random_color(rng)
    # The second colour is either a darker shade (reads as one material) or another hue.
    second = first * rng.uniform(0.3, 0.7) if rng.random() < 0.5 else random_color(rng)
    kind = _FILL_KINDS[int(rng.integers(len(_FILL_KINDS)))]
    field = pattern_field(rng, side, side, kind, (3.0, max(4.0, side / 3.0)))[..., None]
    texture = first * (1.0 - field) + second * field
    return texture + rng.normal(0.0, rng.uniform(0.0, 8.0), texture.shape).astype(np.float32)


# ----------------------------------------------------------------------------------- background
def draw_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Return a (size, size, 3) uint8 BGR background: gradient, colour noise, faint pattern."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0.0, 2.0 * np.pi)
    ramp = xx * np.cos(angle) + yy * np.sin(angle)
    ramp = ((ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6))[..., None]
    start = rng.uniform(0, 255, 3).astype(np.float32)
    end = rng.uniform(0, 255, 3).astype(np.float32)
    image = start * (1.0 - ramp) + end * ramp
    # Low-frequency colour noise makes the background uneven, so a global threshold cannot
    # separate objects from it.
    cells = int(rng.integers(3, 9))
    coarse = rng.normal(0.0, rng.uniform(10.0, 40.0), (cells, cells, 3)).astype(np.float32)
    image += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.35:
        # A faint background pattern, so stripes and checkers are not object-only cues.
        kind = ('stripes', 'checker')[int(rng.integers(2))]
        field = pattern_field(rng, size, size, kind, (4.0, max(5.0, size / 8.0)))[..., None]
        image += (field - 0.5) * rng.uniform(10.0, 40.0)
    return np.clip(image, 0, 255).astype(np.uint8)


def _bgr(color: np.ndarray) -> Tuple[float, float, float]:
    """cv2 drawing calls want the colour as a plain tuple."""
    return tuple(float(c) for c in color)  # type: ignore[return-value]


def draw_clutter(rng: np.random.Generator, image: np.ndarray, max_blob: float,
                 thin_only: bool = False) -> None:
    """Draw unannotated distractors in place onto a (H, W, 3) uint8 image.

    Lines, random-walk curves and open arcs always; irregular filled blobs (radius up to
    ``max_blob`` px) unless ``thin_only``, which is used for clutter drawn over the objects.
    """
    size = image.shape[0]
    scale = size / 256.0

    def thickness() -> int:
        return max(1, int(round(rng.uniform(1.0, 3.0) * scale)))

    for _ in range(int(rng.integers(1, 4) if thin_only else rng.integers(3, 13))):
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(image, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])),
                 _bgr(rng.uniform(0, 255, 3)), 1 if thin_only else thickness(), cv2.LINE_AA)
    if thin_only:
        return
    for _ in range(int(rng.integers(0, 4))):
        steps = int(rng.integers(5, 15))
        heading = rng.uniform(0.0, 2.0 * np.pi) + np.cumsum(rng.normal(0.0, 0.6, steps))
        step = rng.uniform(4.0, 14.0) * scale
        points = rng.uniform(0, size, 2) + np.cumsum(
            np.stack([np.cos(heading), np.sin(heading)], axis=1) * step, axis=0)
        cv2.polylines(image, [points.astype(np.int32)], False, _bgr(rng.uniform(0, 255, 3)),
                      thickness(), cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 3))):
        center = rng.integers(0, size, 2)
        axes = rng.uniform(5.0, 40.0, 2) * scale
        start = rng.uniform(0.0, 360.0)
        cv2.ellipse(image, (int(center[0]), int(center[1])), (int(axes[0]) + 1, int(axes[1]) + 1),
                    rng.uniform(0.0, 180.0), start, start + rng.uniform(40.0, 200.0),
                    _bgr(rng.uniform(0, 255, 3)), thickness(), cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 6))):
        # Many evenly spread vertices with neighbour-smoothed random radii give a lumpy, concave
        # blob; few or unevenly spread vertices would give polygons that pass for triangles.
        vertices = int(rng.integers(12, 19))
        step = 2.0 * np.pi / vertices
        angles = np.arange(vertices) * step + rng.uniform(-0.3, 0.3, vertices) * step
        lumps = rng.uniform(0.25, 1.0, vertices)
        lumps = (np.roll(lumps, 1) + 3.0 * lumps + np.roll(lumps, -1)) / 5.0
        radii = rng.uniform(3.0, max(4.0, max_blob)) * lumps
        points = rng.uniform(0, size, 2) + np.stack(
            [radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        cv2.fillPoly(image, [np.round(points * (1 << _FILL_SHIFT)).astype(np.int32)],
                     _bgr(rng.uniform(0, 255, 3)), cv2.LINE_AA, _FILL_SHIFT)


# -------------------------------------------------------------------------------------- objects
@dataclass
class ShapeInstance:
    """One placed object.

    label: index into the class list.
    alpha: (L, L) uint8 anti-aliased coverage of the shape in its patch.
    origin: (x0, y0) image position of the patch's top-left pixel (may be negative).
    mask: (size, size) bool full mask of the object, clipped to the image.
    visible_fraction: share of ``mask`` not covered by objects painted above it.
    """

    label: int
    alpha: np.ndarray
    origin: Tuple[int, int]
    mask: np.ndarray
    visible_fraction: float = 1.0

    @property
    def area(self) -> int:
        """Pixel count of the full (clipped) mask."""
        return int(self.mask.sum())

    @property
    def bbox_xyxy(self) -> Tuple[int, int, int, int]:
        """Tight box of the mask as (x1, y1, x2, y2) with exclusive x2, y2."""
        rows = np.flatnonzero(self.mask.any(axis=1))
        cols = np.flatnonzero(self.mask.any(axis=0))
        return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1

    @property
    def bbox_xywh(self) -> List[int]:
        """COCO box [x1, y1, x2 - x1, y2 - y1] of the tight mask box."""
        x1, y1, x2, y2 = self.bbox_xyxy
        return [x1, y1, x2 - x1, y2 - y1]


def _patch_window(origin: Tuple[int, int], side: int,
                  size: int) -> Tuple[slice, slice, slice, slice]:
    """Return (image rows, image cols, patch rows, patch cols) slices of a patch clipped to the
    image; a slice is empty when the patch lies outside."""
    x0, y0 = origin
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = max(min(x0 + side, size), ix0), max(min(y0 + side, size), iy0)
    return (slice(iy0, iy1), slice(ix0, ix1),
            slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))


def place_shape(rng: np.random.Generator, label: int, class_name: str, size: int,
                diameter: float, min_in_image_fraction: float,
                attempts: int = 10) -> Optional[ShapeInstance]:
    """Draw one shape of ``class_name`` with a bounding circle of ``diameter`` px at a random
    rotation and position; return it, or None if no position keeps enough of it in the image."""
    radius = diameter / 2.0
    polygons = SHAPE_OUTLINES[class_name](rng, radius)
    # Half of the rectangles stay axis-aligned: a common real-world case worth keeping.
    if class_name == 'rectangle' and rng.random() < 0.5:
        angle = 0.0
    else:
        angle = rng.uniform(0.0, 2.0 * np.pi)
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    polygons = [p @ rotation for p in polygons]
    # A margin of 4 px leaves room for the blur halo of blurred objects.
    half = int(np.ceil(radius)) + 4
    side = 2 * half + 1
    for _ in range(attempts):
        center = rng.uniform(0.0, size, 2)
        origin = (int(np.floor(center[0])) - half, int(np.floor(center[1])) - half)
        local = [np.round((p + center - origin) * (1 << _FILL_SHIFT)).astype(np.int32)
                 for p in polygons]
        alpha = np.zeros((side, side), np.uint8)
        cv2.fillPoly(alpha, local, 255, cv2.LINE_AA, _FILL_SHIFT)
        full = alpha >= 128
        total = int(full.sum())
        if total == 0:
            continue
        rows, cols, prows, pcols = _patch_window(origin, side, size)
        inside = full[prows, pcols]
        if inside.sum() < min_in_image_fraction * total:
            continue
        mask = np.zeros((size, size), bool)
        mask[rows, cols] = inside
        return ShapeInstance(label, alpha, origin, mask)
    return None


def keep_visible(instances: Sequence[ShapeInstance],
                 min_visible_fraction: float) -> List[ShapeInstance]:
    """Drop objects that those painted above would hide too much; return the rest in paint order.

    Goes from the top of the paint order down, so a dropped object never counts as an occluder.
    Sets ``visible_fraction`` on the kept objects.
    """
    kept: List[ShapeInstance] = []
    if not instances:
        return kept
    covered = np.zeros_like(instances[0].mask)
    for inst in reversed(instances):
        visible = int((inst.mask & ~covered).sum())
        if visible < min_visible_fraction * inst.area:
            continue
        inst.visible_fraction = visible / inst.area
        covered |= inst.mask
        kept.append(inst)
    return kept[::-1]


def paint_shape(rng: np.random.Generator, image: np.ndarray, inst: ShapeInstance,
                blur_prob: float) -> None:
    """Alpha-blend a textured object into the (size, size, 3) uint8 image, in place."""
    side = inst.alpha.shape[0]
    rows, cols, prows, pcols = _patch_window(inst.origin, side, image.shape[0])
    below = image[rows, cols].astype(np.float32)
    mask = inst.alpha[prows, pcols] >= 128
    # Try a few textures and keep the one that differs most from what lies underneath: random
    # colours alone sometimes make an object invisible, which would only add label noise.
    best, best_contrast = None, -1.0
    for _ in range(4):
        texture = object_texture(rng, side)
        contrast = float(np.linalg.norm(texture[prows, pcols][mask].mean(0) - below[mask].mean(0)))
        if contrast > best_contrast:
            best, best_contrast = texture, contrast
        if contrast > 60.0:
            break
    alpha = inst.alpha.astype(np.float32) / 255.0
    if rng.random() < blur_prob:
        sigma = rng.uniform(0.8, 2.0)
        best = cv2.GaussianBlur(best, (0, 0), sigma)
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
    alpha = alpha[prows, pcols, None]
    blended = below * (1.0 - alpha) + best[prows, pcols] * alpha
    image[rows, cols] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def render_scene(rng: np.random.Generator, size: int, classes: Sequence[str],
                 objects_range: Tuple[int, int] = (2, 8),
                 diameter_range: Optional[Tuple[float, float]] = None,
                 min_visible_fraction: float = 0.3, min_in_image_fraction: float = 0.6,
                 object_blur_prob: float = 0.2, image_blur_prob: float = 0.25
                 ) -> Tuple[np.ndarray, List[ShapeInstance]]:
    """Render one image.

    Args:
        rng: the image's own generator (the only source of randomness).
        size: image side in px.
        classes: shape names (keys of ``SHAPE_OUTLINES``); ``label`` indexes this list.
        objects_range: inclusive (min, max) number of objects placed before the visibility
            filter.
        diameter_range: (min, max) bounding-circle diameter in px; default 8-200 px at 256 px,
            scaled with ``size`` (at least 6 px, at most 0.8 * size).
        min_visible_fraction: objects hidden more than this by later ones are not painted.
        min_in_image_fraction: share of each shape that must lie inside the image.
        object_blur_prob, image_blur_prob: chance of a Gaussian blur per object / per image.

    Returns:
        (size, size, 3) uint8 BGR image and the annotated objects in paint order (at least one).
    """
    if diameter_range is None:
        low = max(6.0, 8.0 * size / 256.0)
        diameter_range = (low, max(low + 1.0, min(200.0 * size / 256.0, 0.8 * size)))
    image = draw_background(rng, size)
    draw_clutter(rng, image, max_blob=0.12 * size)
    log_low, log_high = np.log(diameter_range[0]), np.log(diameter_range[1])
    placed: List[ShapeInstance] = []
    # Placement can fail only when every attempt leaves the shape mostly outside the image;
    # looping guarantees each image has at least one object.
    while not placed:
        for _ in range(int(rng.integers(objects_range[0], objects_range[1] + 1))):
            label = int(rng.integers(len(classes)))
            # Log-uniform sizes: as many small as large objects per octave, as in real data.
            diameter = float(np.exp(rng.uniform(log_low, log_high)))
            inst = place_shape(rng, label, classes[label], size, diameter, min_in_image_fraction)
            if inst is not None:
                placed.append(inst)
    instances = keep_visible(placed, min_visible_fraction)
    for inst in instances:
        paint_shape(rng, image, inst, object_blur_prob)
    if rng.random() < 0.3:
        draw_clutter(rng, image, max_blob=0.0, thin_only=True)
    result = image.astype(np.float32)
    if rng.random() < image_blur_prob:
        result = cv2.GaussianBlur(result, (0, 0), rng.uniform(0.5, 1.3))
    result += rng.normal(0.0, rng.uniform(1.0, 6.0), result.shape).astype(np.float32)
    return np.clip(result + 0.5, 0, 255).astype(np.uint8), instances


# ----------------------------------------------------------------------------------------- COCO
def generate(out_dir: Union[str, Path], num_images: int, split: str, size: int = 256, seed: int = 0,
             classes: Sequence[str] = SHAPE_CLASSES, log_every: int = 100) -> str:
    """Write ``num_images`` images and their COCO annotations for one split.

    Args:
        out_dir: dataset root; images go to ``<out_dir>/<split>/NNNNNN.png`` and annotations to
            ``<out_dir>/annotations/instances_<split>.json``.
        num_images: number of images.
        split: split name, e.g. 'train' or 'val'; it also enters the seed, so splits differ.
        size: image side in px (square images).
        seed: non-negative base seed.
        classes: shape names out of :data:`SHAPE_CLASSES`; category ids are 1..len(classes) in
            this order.
        log_every: print a progress line every this many images (0: never).

    Returns:
        Path of the written annotation json.
    """
    unknown = [c for c in classes if c not in SHAPE_OUTLINES]
    if unknown or not classes:
        raise ValueError(f'classes must be a non-empty subset of {SHAPE_CLASSES}, got {classes}')
    if seed < 0 or num_images < 0 or size < 16:
        raise ValueError('need seed >= 0, num_images >= 0 and size >= 16')
    root = Path(out_dir)
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    # crc32 rather than hash(): Python salts str hashes per process.
    split_key = zlib.crc32(split.encode('utf-8'))
    images, annotations = [], []
    start = time.perf_counter()
    for index in range(num_images):
        rng = np.random.default_rng([seed, split_key, index])
        image, instances = render_scene(rng, size, classes)
        image_id = index + 1
        file_name = f'{image_id:06d}.png'
        if not cv2.imwrite(str(image_dir / file_name), image):
            raise OSError(f'could not write {image_dir / file_name}')
        images.append(dict(id=image_id, file_name=file_name, width=size, height=size))
        for inst in instances:
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=inst.label + 1,
                bbox=inst.bbox_xywh, area=inst.area, iscrowd=0,
                visible_fraction=round(inst.visible_fraction, 4)))
        if log_every and (index + 1) % log_every == 0:
            print(f'[{split}] {index + 1}/{num_images} images, {len(annotations)} objects, '
                  f'{time.perf_counter() - start:.1f} s', flush=True)
    coco = dict(
        info=dict(description=f'ebm_det synthetic shapes, split={split}, seed={seed}, '
                              f'size={size}'),
        images=images, annotations=annotations,
        categories=[dict(id=i + 1, name=name, supercategory='shape')
                    for i, name in enumerate(classes)])
    json_path = root / 'annotations' / f'instances_{split}.json'
    with open(json_path, 'w') as f:
        json.dump(coco, f)
    return str(json_path)


def main() -> None:
    """Command-line entry: generate the train and val splits."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/shapes', help='dataset root')
    parser.add_argument('--num-train', type=int, default=600)
    parser.add_argument('--num-val', type=int, default=150)
    parser.add_argument('--size', type=int, default=256, help='square image side in px')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--classes', nargs='+', default=list(SHAPE_CLASSES),
                        choices=SHAPE_CLASSES, help='shape classes, in category-id order')
    args = parser.parse_args()
    for split, count in (('train', args.num_train), ('val', args.num_val)):
        start = time.perf_counter()
        path = generate(args.out, count, split, args.size, args.seed, args.classes)
        print(f'{split}: {count} images -> {path} ({time.perf_counter() - start:.1f} s)')


if __name__ == '__main__':
    main()
