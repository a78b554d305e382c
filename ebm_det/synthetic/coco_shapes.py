"""Generate a seeded COCO-format 2D detection set of textured shapes on cluttered backgrounds.

Usage::

    python -m ebm_det.synthetic.coco_shapes --out data/shapes --num-train 600 --num-val 150 \
        --size 256 --seed 0 [--difficulty hard|easy]

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

That is the default, ``--difficulty hard`` (the 2D benchmark's set). ``--difficulty easy`` (the
demo's set, :data:`DIFFICULTIES`) keeps the shapes, textures and backgrounds but places 1-4
objects of 32-160 px (at 256 px) in solid fills on a plain colour gradient, draws no clutter and
no blur, and drops objects more than 40% hidden.

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

# Ranges below are (low, high): uniform draws for floats, numpy's half-open [low, high) for counts.
# Lengths marked "at REFERENCE_SIZE" scale linearly with the image side.
REFERENCE_SIZE = 256.0  # px, image side at which the "at REFERENCE_SIZE" lengths hold
PIXEL_MAX = 255  # largest uint8 channel value
MIN_IMAGE_SIZE = 16  # px, smallest image side :func:`generate` accepts

# cv2.fillPoly takes integer points; this many fractional bits keep sub-pixel shape placement.
_FILL_SHIFT = 4
HALF_COVERAGE = 128  # uint8 anti-aliased coverage at which a pixel belongs to a shape's mask
PATCH_MARGIN = 4  # px added around a shape's patch, room for the halo of a blurred shape

Polygon = np.ndarray  # (N, 2) float (x, y) points around the shape centre


# --------------------------------------------------------------------------------------- shapes
ELLIPSE_VERTICES = 48  # polygon vertices of an ellipse or ring outline
# Short / long side ratio of a rectangle; >= 0.3 so thin bars still cover a few pixels at the
# smallest sizes.
RECT_SIDE_RATIO = (0.3, 1.0)
ELLIPSE_AXIS_RATIO = (0.35, 1.0)  # minor / major half-axis of an ellipse
# rad, largest shift of a triangle's vertex angle from equal spacing; < 0.4 keeps every interior
# angle >= ~35 deg, so no triangle degenerates into a sliver.
TRIANGLE_ANGLE_JITTER = 0.4
TRIANGLE_RADIUS_RATIO = (0.75, 1.0)  # distance of a triangle vertex from the centre / radius
STAR_SPIKES = (5, 8)  # number of spikes of a star, [low, high)
STAR_INNER_RATIO = (0.38, 0.6)  # inner / outer radius of a star
RING_ASPECT = (0.75, 1.0)  # minor / major half-axis of a ring
RING_HOLE_RATIO = (0.45, 0.7)  # half-axes of a ring's hole / of its outline


def _ellipse_points(a: float, b: float, num: int = ELLIPSE_VERTICES) -> Polygon:
    """Return (num, 2) points of an axis-aligned ellipse with half-axes a (x) and b (y)."""
    t = np.linspace(0.0, 2.0 * np.pi, num, endpoint=False)
    return np.stack([a * np.cos(t), b * np.sin(t)], axis=1)


def rectangle_outline(rng: np.random.Generator, radius: float) -> List[Polygon]:
    """Rectangle whose half-diagonal is ``radius``; returns one (4, 2) polygon, unrotated."""
    # The short/long side ratio sets the angle of the diagonal.
    diagonal_angle = np.arctan(rng.uniform(*RECT_SIDE_RATIO))
    half_w, half_h = radius * np.cos(diagonal_angle), radius * np.sin(diagonal_angle)
    return [np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])]


def ellipse_outline(rng: np.random.Generator, radius: float) -> List[Polygon]:
    """Ellipse with major half-axis ``radius``; returns one (48, 2) polygon, unrotated."""
    return [_ellipse_points(radius, radius * rng.uniform(*ELLIPSE_AXIS_RATIO))]


def triangle_outline(rng: np.random.Generator, radius: float) -> List[Polygon]:
    """Irregular triangle inscribed in a circle of ``radius``; returns one (3, 2) polygon."""
    angles = (np.array([0.0, 2.0, 4.0]) * np.pi / 3.0
              + rng.uniform(-TRIANGLE_ANGLE_JITTER, TRIANGLE_ANGLE_JITTER, 3))
    radii = radius * rng.uniform(*TRIANGLE_RADIUS_RATIO, 3)
    return [np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)]


def star_outline(rng: np.random.Generator, radius: float) -> List[Polygon]:
    """Star with 5-7 spikes of outer radius ``radius``; returns one (2 * spikes, 2) polygon."""
    spikes = int(rng.integers(*STAR_SPIKES))
    angles = np.arange(2 * spikes) * np.pi / spikes
    radii = np.where(np.arange(2 * spikes) % 2 == 0, radius,
                     radius * rng.uniform(*STAR_INNER_RATIO))
    return [np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)]


def ring_outline(rng: np.random.Generator, radius: float) -> List[Polygon]:
    """Annulus of outer half-axis ``radius``; returns [outer, inner] (48, 2) polygons.

    cv2.fillPoly fills with the even-odd rule, so the inner polygon becomes a hole through which
    the background (and anything below) shows.
    """
    aspect = rng.uniform(*RING_ASPECT)
    hole = rng.uniform(*RING_HOLE_RATIO)
    return [_ellipse_points(radius, radius * aspect),
            _ellipse_points(radius * hole, radius * aspect * hole)]


SHAPE_OUTLINES: Dict[str, Callable[[np.random.Generator, float], List[Polygon]]] = {
    'rectangle': rectangle_outline,
    'ellipse': ellipse_outline,
    'triangle': triangle_outline,
    'star': star_outline,
    'ring': ring_outline,
}


def check_classes(classes: Sequence[str]) -> None:
    """Raise ValueError unless ``classes`` is a non-empty subset of :data:`SHAPE_CLASSES`."""
    unknown = [c for c in classes if c not in SHAPE_OUTLINES]
    if unknown or not classes:
        raise ValueError(f'classes must be a non-empty subset of {SHAPE_CLASSES}, got {classes}')


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """One draw whose log is uniform on [log low, log high): as many small as large values per
    octave, as object sizes in real data."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


# ------------------------------------------------------------------------------------- textures
HUE_LEVELS = 180  # OpenCV's 8-bit hue scale: hues are drawn from [0, 180)
FILL_KINDS = ('solid', 'stripes', 'checker', 'noise')  # pattern kinds of an object's fill
SHADING_AMPLITUDE = 0.25  # mixing weight at the far end of the 'solid' fill's shading ramp
HARD_STRIPES_PROB = 0.5  # chance that stripes are hard-edged, so edge sharpness is no class cue
NOISE_FILL_CELLS = (3, 7)  # grid cells per side of the 'noise' fill's coarse field, [low, high)
NOISE_FILL_STD = 0.08  # std of the per-pixel noise on the 'noise' fill, in mixing-weight units
SHADE_PROB = 0.5  # chance that an object's second colour is a darker shade of its first
SHADE_FACTOR = (0.3, 0.7)  # brightness of that darker shade relative to the first colour
OBJECT_MIN_PERIOD = 3.0  # px, shortest stripe / checker period of an object's fill
OBJECT_PERIODS_PER_SIDE = 3.0  # longest object period = texture side / this (>= min + 1 px)
TEXTURE_NOISE_STD = (0.0, 8.0)  # grey levels, range of the pixel-noise std of an object texture


def random_color(rng: np.random.Generator, min_saturation: int = 40,
                 min_value: int = 40) -> np.ndarray:
    """Return a (3,) float32 BGR colour drawn in HSV, so hues are uniform and few are greyish.

    ``min_saturation`` and ``min_value`` are on OpenCV's 0-255 scale.
    """
    hsv = np.array([[[rng.integers(0, HUE_LEVELS), rng.integers(min_saturation, PIXEL_MAX + 1),
                      rng.integers(min_value, PIXEL_MAX + 1)]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def pattern_periods(side: float, min_period: float, periods_per_side: float) -> Tuple[float, float]:
    """(shortest, longest) pattern period in px for a ``side`` px field: from ``min_period`` to
    ``side / periods_per_side``, the longest at least 1 px above the shortest."""
    return min_period, max(min_period + 1.0, side / periods_per_side)


def pattern_field(rng: np.random.Generator, height: int, width: int, kind: str,
                  period_range: Tuple[float, float]) -> np.ndarray:
    """Return an (height, width) float32 field in [0, 1] that mixes two colours.

    kind: 'solid' (a weak shading ramp), 'stripes', 'checker' or 'noise' (smooth random blobs).
    period_range: (min, max) stripe / checker period in px.
    The pattern is rotated by a random angle so stripes and checkers are not axis-aligned.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0.0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    period = rng.uniform(*period_range)
    if kind == 'solid':
        return SHADING_AMPLITUDE * (u - u.min()) / max(float(np.ptp(u)), 1.0)
    if kind == 'stripes':
        wave = 0.5 + 0.5 * np.sin(2.0 * np.pi * u / period + rng.uniform(0.0, 2.0 * np.pi))
        return (wave > 0.5).astype(np.float32) if rng.random() < HARD_STRIPES_PROB else wave
    if kind == 'checker':
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == 'noise':
        cells = int(rng.integers(*NOISE_FILL_CELLS))
        coarse = rng.random((cells, cells)).astype(np.float32)
        smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        return np.clip(smooth + rng.normal(0.0, NOISE_FILL_STD, smooth.shape).astype(np.float32),
                       0, 1)
    raise ValueError(f'unknown pattern kind {kind!r}')


def object_texture(rng: np.random.Generator, side: int,
                   fills: Sequence[str] = FILL_KINDS) -> np.ndarray:
    """Return a (side, side, 3) float32 BGR texture: two colours mixed by a random pattern of
    one of the ``fills`` kinds (see :func:`pattern_field`)."""
    first = random_color(rng)
    # The second colour is either a darker shade (reads as one material) or another hue.
    if rng.random() < SHADE_PROB:
        second = first * rng.uniform(*SHADE_FACTOR)
    else:
        second = random_color(rng)
    kind = fills[int(rng.integers(len(fills)))]
    periods = pattern_periods(side, OBJECT_MIN_PERIOD, OBJECT_PERIODS_PER_SIDE)
    field = pattern_field(rng, side, side, kind, periods)[..., None]
    texture = first * (1.0 - field) + second * field
    noise_std = rng.uniform(*TEXTURE_NOISE_STD)
    return texture + rng.normal(0.0, noise_std, texture.shape).astype(np.float32)


# ----------------------------------------------------------------------------------- background
BACKGROUND_NOISE_CELLS = (3, 9)  # grid cells per side of the low-frequency colour noise [low, high)
BACKGROUND_NOISE_STD = (10.0, 40.0)  # grey levels, range of that noise's std
BACKGROUND_PATTERN_PROB = 0.35  # chance of a faint stripe or checker background pattern
BACKGROUND_PATTERN_KINDS = ('stripes', 'checker')  # kinds of that pattern
BACKGROUND_PATTERN_CONTRAST = (10.0, 40.0)  # grey levels, peak-to-peak strength of the pattern
BACKGROUND_MIN_PERIOD = 4.0  # px, shortest background pattern period
BACKGROUND_PERIODS_PER_SIDE = 8.0  # longest background period = image side / this
BACKGROUND_BLOB_FRACTION = 0.12  # largest radius of a clutter blob under the objects / image side


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 linear ramp between two random BGR colours at a random angle."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0.0, 2.0 * np.pi)
    ramp = xx * np.cos(angle) + yy * np.sin(angle)
    # the floor on the span only guards the division; a ramp over an image is never flat
    ramp = ((ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6))[..., None]
    start = rng.uniform(0, PIXEL_MAX, 3).astype(np.float32)
    end = rng.uniform(0, PIXEL_MAX, 3).astype(np.float32)
    return start * (1.0 - ramp) + end * ramp


def _colour_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 low-frequency colour noise (grey levels, zero mean).

    It makes the background uneven, so a global threshold cannot separate objects from it.
    """
    cells = int(rng.integers(*BACKGROUND_NOISE_CELLS))
    coarse = rng.normal(0.0, rng.uniform(*BACKGROUND_NOISE_STD),
                        (cells, cells, 3)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _faint_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 1) float32 zero-mean stripe or checker pattern (grey levels).

    Drawn on some backgrounds, so stripes and checkers are not object-only cues.
    """
    kind = BACKGROUND_PATTERN_KINDS[int(rng.integers(len(BACKGROUND_PATTERN_KINDS)))]
    periods = pattern_periods(size, BACKGROUND_MIN_PERIOD, BACKGROUND_PERIODS_PER_SIDE)
    field = pattern_field(rng, size, size, kind, periods)[..., None]
    return (field - 0.5) * rng.uniform(*BACKGROUND_PATTERN_CONTRAST)


def draw_background(rng: np.random.Generator, size: int, textured: bool = True) -> np.ndarray:
    """Return a (size, size, 3) uint8 BGR background: gradient, colour noise, faint pattern (the
    gradient alone unless ``textured``)."""
    image = _gradient(rng, size)
    if textured:
        image += _colour_noise(rng, size)
        if rng.random() < BACKGROUND_PATTERN_PROB:
            image += _faint_pattern(rng, size)
    return np.clip(image, 0, PIXEL_MAX).astype(np.uint8)


# -------------------------------------------------------------------------------------- clutter
CLUTTER_THICKNESS = (1.0, 3.0)  # px at REFERENCE_SIZE, stroke width of clutter lines
CLUTTER_LINES = (3, 13)  # straight lines under the objects, [low, high)
OVERLAY_LINES = (1, 4)  # thin (1 px) lines drawn across the objects, [low, high)
OVERLAY_PROB = 0.3  # chance that an image gets lines across its objects
CLUTTER_CURVES = (0, 4)  # random-walk curves, [low, high)
CURVE_STEPS = (5, 15)  # segments of a curve, [low, high)
CURVE_TURN_STD = 0.6  # rad, std of the heading change from one segment to the next
CURVE_STEP_LENGTH = (4.0, 14.0)  # px at REFERENCE_SIZE, length of a curve segment
CLUTTER_ARCS = (0, 3)  # open elliptic arcs, [low, high)
ARC_HALF_AXES = (5.0, 40.0)  # px at REFERENCE_SIZE, half-axes of an arc's ellipse
ARC_EXTENT = (40.0, 200.0)  # deg, angle an arc spans
CLUTTER_BLOBS = (0, 6)  # lumpy filled blobs, [low, high)
# Many evenly spread vertices with neighbour-smoothed random radii give a lumpy, concave blob;
# few or unevenly spread vertices would give polygons that pass for triangles.
BLOB_VERTICES = (12, 19)  # vertices of a blob, [low, high)
BLOB_ANGLE_JITTER = 0.3  # largest shift of a vertex angle, as a share of the vertex spacing
BLOB_LUMPS = (0.25, 1.0)  # vertex radius / blob radius, before smoothing
BLOB_SELF_WEIGHT = 3.0  # weight of a vertex's own radius in the smoothing (neighbours: 1 each)
BLOB_MIN_RADIUS = 3.0  # px, smallest blob radius (the largest is at least 1 px more)


def _bgr(color: np.ndarray) -> Tuple[float, float, float]:
    """cv2 drawing calls want the colour as a plain tuple."""
    return tuple(float(c) for c in color)  # type: ignore[return-value]


def _random_bgr(rng: np.random.Generator) -> Tuple[float, float, float]:
    """A clutter colour: each BGR channel uniform in [0, 255)."""
    return _bgr(rng.uniform(0, PIXEL_MAX, 3))


def _stroke_width(rng: np.random.Generator, scale: float) -> int:
    """Clutter stroke width in px (>= 1) for an image ``scale`` times REFERENCE_SIZE."""
    return max(1, int(round(rng.uniform(*CLUTTER_THICKNESS) * scale)))


def _draw_lines(rng: np.random.Generator, image: np.ndarray, count: int, scale: float,
                thin: bool) -> None:
    """Draw ``count`` anti-aliased straight lines between random pixels; 1 px wide if ``thin``."""
    size = image.shape[0]
    for _ in range(count):
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        color = _random_bgr(rng)
        width = 1 if thin else _stroke_width(rng, scale)
        cv2.line(image, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])), color, width,
                 cv2.LINE_AA)


def _draw_curves(rng: np.random.Generator, image: np.ndarray, scale: float) -> None:
    """Draw random-walk polylines (a random heading that turns a little at every segment)."""
    size = image.shape[0]
    for _ in range(int(rng.integers(*CLUTTER_CURVES))):
        steps = int(rng.integers(*CURVE_STEPS))
        heading = rng.uniform(0.0, 2.0 * np.pi) + np.cumsum(rng.normal(0.0, CURVE_TURN_STD, steps))
        step = rng.uniform(*CURVE_STEP_LENGTH) * scale
        points = rng.uniform(0, size, 2) + np.cumsum(
            np.stack([np.cos(heading), np.sin(heading)], axis=1) * step, axis=0)
        color = _random_bgr(rng)
        cv2.polylines(image, [points.astype(np.int32)], False, color, _stroke_width(rng, scale),
                      cv2.LINE_AA)


def _draw_arcs(rng: np.random.Generator, image: np.ndarray, scale: float) -> None:
    """Draw open arcs of randomly rotated ellipses."""
    size = image.shape[0]
    for _ in range(int(rng.integers(*CLUTTER_ARCS))):
        center = rng.integers(0, size, 2)
        axes = rng.uniform(*ARC_HALF_AXES, 2) * scale
        start = rng.uniform(0.0, 360.0)  # deg, any start angle
        rotation = rng.uniform(0.0, 180.0)  # deg, any orientation of the ellipse
        end = start + rng.uniform(*ARC_EXTENT)
        color = _random_bgr(rng)
        # + 1: cv2.ellipse draws nothing for a zero half-axis
        cv2.ellipse(image, (int(center[0]), int(center[1])), (int(axes[0]) + 1, int(axes[1]) + 1),
                    rotation, start, end, color, _stroke_width(rng, scale), cv2.LINE_AA)


def _draw_blobs(rng: np.random.Generator, image: np.ndarray, max_blob: float) -> None:
    """Draw lumpy filled polygons of radius up to ``max_blob`` px."""
    size = image.shape[0]
    for _ in range(int(rng.integers(*CLUTTER_BLOBS))):
        vertices = int(rng.integers(*BLOB_VERTICES))
        step = 2.0 * np.pi / vertices
        angles = (np.arange(vertices) * step
                  + rng.uniform(-BLOB_ANGLE_JITTER, BLOB_ANGLE_JITTER, vertices) * step)
        lumps = rng.uniform(*BLOB_LUMPS, vertices)
        lumps = ((np.roll(lumps, 1) + BLOB_SELF_WEIGHT * lumps + np.roll(lumps, -1))
                 / (BLOB_SELF_WEIGHT + 2.0))
        radii = rng.uniform(BLOB_MIN_RADIUS, max(BLOB_MIN_RADIUS + 1.0, max_blob)) * lumps
        points = rng.uniform(0, size, 2) + np.stack(
            [radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        cv2.fillPoly(image, [np.round(points * (1 << _FILL_SHIFT)).astype(np.int32)],
                     _random_bgr(rng), cv2.LINE_AA, _FILL_SHIFT)


def draw_clutter(rng: np.random.Generator, image: np.ndarray, max_blob: float,
                 thin_only: bool = False) -> None:
    """Draw unannotated distractors in place onto a (H, W, 3) uint8 image.

    Lines, random-walk curves and open arcs always; irregular filled blobs (radius up to
    ``max_blob`` px) unless ``thin_only``, which draws only a few 1 px lines and is used for
    clutter drawn over the objects.
    """
    scale = image.shape[0] / REFERENCE_SIZE
    if thin_only:
        _draw_lines(rng, image, int(rng.integers(*OVERLAY_LINES)), scale, thin=True)
        return
    _draw_lines(rng, image, int(rng.integers(*CLUTTER_LINES)), scale, thin=False)
    _draw_curves(rng, image, scale)
    _draw_arcs(rng, image, scale)
    _draw_blobs(rng, image, max_blob)


def draw_cluttered_background(rng: np.random.Generator, size: int, clutter: bool = True,
                              textured: bool = True) -> np.ndarray:
    """Return a (size, size, 3) uint8 BGR background (:func:`draw_background`), with the clutter
    that lies under objects unless ``clutter`` is False."""
    image = draw_background(rng, size, textured)
    if clutter:
        draw_clutter(rng, image, max_blob=BACKGROUND_BLOB_FRACTION * size)
    return image


# -------------------------------------------------------------------------------------- objects
AXIS_ALIGNED_RECT_PROB = 0.5  # chance that a rectangle stays axis-aligned (common in real data)
PLACEMENT_ATTEMPTS = 10  # random positions tried per object before it is given up
TEXTURE_TRIES = 4  # textures drawn per object, the one that stands out most is used
ENOUGH_CONTRAST = 60.0  # grey levels (BGR distance of mean colours) at which a texture is taken
OBJECT_BLUR_SIGMA = (0.8, 2.0)  # px, Gaussian blur of a blurred object
MIN_DIAMETER = 6.0  # px, smallest default object diameter at any image size
DIAMETER_AT_REFERENCE = (8.0, 200.0)  # px at REFERENCE_SIZE, default object diameter range
MAX_DIAMETER_FRACTION = 0.8  # largest default object diameter / image side


def mask_box_xyxy(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """Tight box (x1, y1, x2, y2) of a non-empty (H, W) bool mask, x2 and y2 exclusive."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


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
        return mask_box_xyxy(self.mask)

    @property
    def bbox_xywh(self) -> List[int]:
        """COCO box [x1, y1, x2 - x1, y2 - y1] of the tight mask box."""
        x1, y1, x2, y2 = self.bbox_xyxy
        return [x1, y1, x2 - x1, y2 - y1]


def patch_window(origin: Tuple[int, int], side: int,
                  size: int) -> Tuple[slice, slice, slice, slice]:
    """Return (image rows, image cols, patch rows, patch cols) slices of a patch clipped to the
    image; a slice is empty when the patch lies outside."""
    x0, y0 = origin
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = max(min(x0 + side, size), ix0), max(min(y0 + side, size), iy0)
    return (slice(iy0, iy1), slice(ix0, ix1),
            slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))


def default_diameter_range(size: int, at_reference: Tuple[float, float] = DIAMETER_AT_REFERENCE
                           ) -> Tuple[float, float]:
    """(min, max) object diameter in px for a ``size`` px image: ``at_reference`` (px at
    REFERENCE_SIZE) scaled, at least MIN_DIAMETER, at most MAX_DIAMETER_FRACTION * size (and at
    least 1 px above min)."""
    low = max(MIN_DIAMETER, at_reference[0] * size / REFERENCE_SIZE)
    high = min(at_reference[1] * size / REFERENCE_SIZE, MAX_DIAMETER_FRACTION * size)
    return low, max(low + 1.0, high)


def _rotation_angle(rng: np.random.Generator, class_name: str) -> float:
    """Rotation in rad of a new shape: 0 for some rectangles, else uniform in [0, 2 pi)."""
    if class_name == 'rectangle' and rng.random() < AXIS_ALIGNED_RECT_PROB:
        return 0.0
    return rng.uniform(0.0, 2.0 * np.pi)


def rasterise(polygons: Sequence[Polygon], side: int) -> np.ndarray:
    """(side, side) uint8 anti-aliased coverage (0-255) of ``polygons`` given in patch pixel
    coordinates (x, y), filled with the even-odd rule at sub-pixel precision."""
    local = [np.round(p * (1 << _FILL_SHIFT)).astype(np.int32) for p in polygons]
    alpha = np.zeros((side, side), np.uint8)
    cv2.fillPoly(alpha, local, 255, cv2.LINE_AA, _FILL_SHIFT)
    return alpha


def place_shape(rng: np.random.Generator, label: int, class_name: str, size: int,
                diameter: float, min_in_image_fraction: float,
                attempts: int = PLACEMENT_ATTEMPTS) -> Optional[ShapeInstance]:
    """Draw one shape of ``class_name`` with a bounding circle of ``diameter`` px at a random
    rotation and position; return it, or None if no position keeps enough of it in the image."""
    radius = diameter / 2.0
    polygons = SHAPE_OUTLINES[class_name](rng, radius)
    angle = _rotation_angle(rng, class_name)
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    polygons = [p @ rotation for p in polygons]
    half = int(np.ceil(radius)) + PATCH_MARGIN
    side = 2 * half + 1
    for _ in range(attempts):
        center = rng.uniform(0.0, size, 2)
        origin = (int(np.floor(center[0])) - half, int(np.floor(center[1])) - half)
        alpha = rasterise([p + center - origin for p in polygons], side)
        full = alpha >= HALF_COVERAGE
        total = int(full.sum())
        if total == 0:
            continue
        rows, cols, prows, pcols = patch_window(origin, side, size)
        inside = full[prows, pcols]
        if inside.sum() < min_in_image_fraction * total:
            continue
        mask = np.zeros((size, size), bool)
        mask[rows, cols] = inside
        return ShapeInstance(label, alpha, origin, mask)
    return None


def _place_objects(rng: np.random.Generator, size: int, classes: Sequence[str],
                   objects_range: Tuple[int, int], diameter_range: Tuple[float, float],
                   min_in_image_fraction: float) -> List[ShapeInstance]:
    """Place random objects in paint order (at least one; see :func:`render_scene`)."""
    placed: List[ShapeInstance] = []
    # Placement can fail only when every attempt leaves the shape mostly outside the image;
    # looping guarantees each image has at least one object.
    while not placed:
        for _ in range(int(rng.integers(objects_range[0], objects_range[1] + 1))):
            label = int(rng.integers(len(classes)))
            diameter = log_uniform(rng, *diameter_range)
            inst = place_shape(rng, label, classes[label], size, diameter, min_in_image_fraction)
            if inst is not None:
                placed.append(inst)
    return placed


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


def most_contrasting_texture(rng: np.random.Generator, side: int,
                             contrast: Callable[[np.ndarray], float],
                             fills: Sequence[str] = FILL_KINDS) -> np.ndarray:
    """Return the (side, side, 3) float32 texture of highest ``contrast`` among TEXTURE_TRIES
    draws of :func:`object_texture`, stopping at the first above ENOUGH_CONTRAST.

    Random colours alone sometimes make an object invisible, which would only add label noise.
    """
    best, best_contrast = None, -1.0
    for _ in range(TEXTURE_TRIES):
        texture = object_texture(rng, side, fills)
        value = contrast(texture)
        if value > best_contrast:
            best, best_contrast = texture, value
        if value > ENOUGH_CONTRAST:
            break
    return best


def round_to_uint8(image: np.ndarray) -> np.ndarray:
    """Round a float image to the nearest uint8 grey level, clipped to [0, 255]."""
    return np.clip(image + 0.5, 0, PIXEL_MAX).astype(np.uint8)


def paint_shape(rng: np.random.Generator, image: np.ndarray, inst: ShapeInstance,
                blur_prob: float, fills: Sequence[str] = FILL_KINDS) -> None:
    """Alpha-blend a textured object into the (size, size, 3) uint8 image, in place."""
    side = inst.alpha.shape[0]
    rows, cols, prows, pcols = patch_window(inst.origin, side, image.shape[0])
    below = image[rows, cols].astype(np.float32)
    mask = inst.alpha[prows, pcols] >= HALF_COVERAGE
    below_mean = below[mask].mean(0)
    texture = most_contrasting_texture(
        rng, side, lambda tex: float(np.linalg.norm(tex[prows, pcols][mask].mean(0) - below_mean)),
        fills)
    alpha = inst.alpha.astype(np.float32) / 255.0
    if rng.random() < blur_prob:
        sigma = rng.uniform(*OBJECT_BLUR_SIGMA)
        texture = cv2.GaussianBlur(texture, (0, 0), sigma)
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
    alpha = alpha[prows, pcols, None]
    image[rows, cols] = round_to_uint8(below * (1.0 - alpha) + texture[prows, pcols] * alpha)


# ---------------------------------------------------------------------------------------- image
IMAGE_BLUR_SIGMA = (0.5, 1.3)  # px, Gaussian blur of a blurred image
IMAGE_NOISE_STD = (1.0, 6.0)  # grey levels, range of the std of the per-pixel image noise


def _camera_effects(rng: np.random.Generator, image: np.ndarray,
                    blur_prob: float) -> np.ndarray:
    """Blur (with chance ``blur_prob``) and add pixel noise to a (H, W, 3) uint8 image; returns a
    new uint8 image."""
    result = image.astype(np.float32)
    if rng.random() < blur_prob:
        result = cv2.GaussianBlur(result, (0, 0), rng.uniform(*IMAGE_BLUR_SIGMA))
    result += rng.normal(0.0, rng.uniform(*IMAGE_NOISE_STD), result.shape).astype(np.float32)
    return round_to_uint8(result)


@dataclass(frozen=True)
class Difficulty:
    """What makes a set hard; :data:`DIFFICULTIES` holds the named presets.

    ``diameter_at_reference`` is the (min, max) object diameter in px at REFERENCE_SIZE, scaled
    with the image side as in :func:`default_diameter_range`; the other fields are
    :func:`render_scene`'s arguments of the same names, and ``clutter`` switches off every
    unannotated distractor (under and over the objects).
    The default is the 2D benchmark's set ('hard').
    """
    objects_range: Tuple[int, int] = (2, 8)
    diameter_at_reference: Tuple[float, float] = DIAMETER_AT_REFERENCE
    clutter: bool = True
    min_visible_fraction: float = 0.3
    object_blur_prob: float = 0.2
    image_blur_prob: float = 0.25
    fills: Tuple[str, ...] = FILL_KINDS
    textured_background: bool = True


# 'hard': the 2D benchmark's set (the default). 'easy': the demo's, where a detector trained for a
# few minutes is no toy: 1-4 objects of 32-160 px in solid fills on a plain colour gradient, no
# clutter, no blur, at most 40% hidden.
DIFFICULTIES: Dict[str, Difficulty] = {
    'hard': Difficulty(),
    'easy': Difficulty(objects_range=(1, 4), diameter_at_reference=(32.0, 160.0), clutter=False,
                       min_visible_fraction=0.6, object_blur_prob=0.0, image_blur_prob=0.0,
                       fills=('solid', ), textured_background=False),
}


def render_scene(rng: np.random.Generator, size: int, classes: Sequence[str],
                 difficulty: Difficulty = Difficulty(), min_in_image_fraction: float = 0.6
                 ) -> Tuple[np.ndarray, List[ShapeInstance]]:
    """Render one image.

    Args:
        rng: the image's own generator (the only source of randomness).
        size: image side in px.
        classes: shape names (keys of ``SHAPE_OUTLINES``); ``label`` indexes this list.
        difficulty: what the scene holds (:class:`Difficulty`; default the benchmark's 'hard'):
            the object count before the visibility filter, their diameter range (scaled with
            ``size``, see :func:`default_diameter_range`), the visibility filter (objects hidden
            more than ``min_visible_fraction`` by later ones are not painted), blur chances per
            object / image, clutter, fills and background texture.
        min_in_image_fraction: share of each shape that must lie inside the image.

    Returns:
        (size, size, 3) uint8 BGR image and the annotated objects in paint order (at least one).
    """
    d = difficulty
    image = draw_cluttered_background(rng, size, d.clutter, d.textured_background)
    placed = _place_objects(rng, size, classes, d.objects_range,
                            default_diameter_range(size, d.diameter_at_reference), min_in_image_fraction)
    instances = keep_visible(placed, d.min_visible_fraction)
    for inst in instances:
        paint_shape(rng, image, inst, d.object_blur_prob, d.fills)
    if d.clutter and rng.random() < OVERLAY_PROB:
        draw_clutter(rng, image, max_blob=0.0, thin_only=True)
    return _camera_effects(rng, image, d.image_blur_prob), instances


# ----------------------------------------------------------------------------------------- COCO
def split_seed_key(split: str) -> int:
    """Stable integer of a split name for seeding; crc32 rather than hash(), which Python salts
    per process."""
    return zlib.crc32(split.encode('utf-8'))


def _coco_annotations(instances: Sequence[ShapeInstance], image_id: int,
                      first_id: int) -> List[dict]:
    """COCO annotation dicts of one image's objects, with ids from ``first_id`` on."""
    return [dict(id=first_id + k, image_id=image_id, category_id=inst.label + 1,
                 bbox=inst.bbox_xywh, area=inst.area, iscrowd=0,
                 visible_fraction=round(inst.visible_fraction, 4))
            for k, inst in enumerate(instances)]


def _coco_dataset(images: List[dict], annotations: List[dict], classes: Sequence[str],
                  split: str, seed: int, size: int, difficulty: str) -> dict:
    """The COCO json content of one split (category ids 1..len(classes))."""
    return dict(
        info=dict(description=f'ebm_det synthetic shapes, split={split}, seed={seed}, '
                              f'size={size}, difficulty={difficulty}'),
        images=images, annotations=annotations,
        categories=[dict(id=i + 1, name=name, supercategory='shape')
                    for i, name in enumerate(classes)])


def generate(out_dir: Union[str, Path], num_images: int, split: str, size: int = 256, seed: int = 0,
             classes: Sequence[str] = SHAPE_CLASSES, log_every: int = 100,
             difficulty: str = 'hard') -> str:
    """Write ``num_images`` images and their COCO annotations for one split.

    Args:
        out_dir: dataset root; images go to ``<out_dir>/<split>/NNNNNN.png`` and annotations to
            ``<out_dir>/annotations/instances_<split>.json``.
        num_images: number of images.
        split: split name, e.g. 'train' or 'val'; it also enters the seed, so splits differ.
        size: image side in px (square images, at least 16).
        seed: non-negative base seed.
        classes: shape names out of :data:`SHAPE_CLASSES`; category ids are 1..len(classes) in
            this order.
        log_every: print a progress line every this many images (0: never).
        difficulty: a key of :data:`DIFFICULTIES` ('hard', the benchmark's set, or 'easy').

    Returns:
        Path of the written annotation json.

    Raises:
        ValueError: unknown classes or difficulty, negative seed or count, size below 16.
    """
    check_classes(classes)
    if difficulty not in DIFFICULTIES:
        raise ValueError(f'difficulty must be one of {sorted(DIFFICULTIES)}, got {difficulty!r}')
    if seed < 0 or num_images < 0 or size < MIN_IMAGE_SIZE:
        raise ValueError(f'need seed >= 0, num_images >= 0 and size >= {MIN_IMAGE_SIZE}')
    root = Path(out_dir)
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    split_key = split_seed_key(split)
    images, annotations = [], []
    start = time.perf_counter()
    for index in range(num_images):
        rng = np.random.default_rng([seed, split_key, index])
        image, instances = render_scene(rng, size, classes, DIFFICULTIES[difficulty])
        image_id = index + 1
        file_name = f'{image_id:06d}.png'
        if not cv2.imwrite(str(image_dir / file_name), image):
            raise OSError(f'could not write {image_dir / file_name}')
        images.append(dict(id=image_id, file_name=file_name, width=size, height=size))
        annotations += _coco_annotations(instances, image_id, len(annotations) + 1)
        if log_every and (index + 1) % log_every == 0:
            print(f'[{split}] {index + 1}/{num_images} images, {len(annotations)} objects, '
                  f'{time.perf_counter() - start:.1f} s', flush=True)
    json_path = root / 'annotations' / f'instances_{split}.json'
    with open(json_path, 'w') as f:
        json.dump(_coco_dataset(images, annotations, classes, split, seed, size, difficulty), f)
    return str(json_path)


def main() -> None:
    """Command-line entry: generate the train and val splits."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='data/shapes', help='dataset root')
    parser.add_argument('--num-train', type=int, default=600)
    parser.add_argument('--num-val', type=int, default=150)
    parser.add_argument('--size', type=int, default=256, help='square image side in px')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--classes', nargs='+', default=list(SHAPE_CLASSES),
                        choices=SHAPE_CLASSES, help='shape classes, in category-id order')
    parser.add_argument('--difficulty', default='hard', choices=sorted(DIFFICULTIES),
                        help="'hard': the 2D benchmark's set; 'easy': the demo's (1-4 objects of "
                             '32-160 px, solid fills, plain gradient background, no clutter, no blur)')
    args = parser.parse_args()
    for split, count in (('train', args.num_train), ('val', args.num_val)):
        start = time.perf_counter()
        path = generate(args.out, count, split, args.size, args.seed, args.classes,
                        difficulty=args.difficulty)
        print(f'{split}: {count} images -> {path} ({time.perf_counter() - start:.1f} s)')


if __name__ == '__main__':
    main()
