"""CPU rotated-IoU backend for mmdet3d's KITTI evaluation.

mmdet3d 1.4's KITTI protocol (``mmdet3d.evaluation.functional.kitti_utils.eval``)
computes BEV and 3D overlaps with ``rotate_iou_gpu_eval`` from the sibling
module ``rotate_iou``, which is written for ``numba.cuda``; without a CUDA
driver that module cannot even be imported, so ``kitti_eval`` /
``KittiMetric`` fail on a CPU-only machine. Everything else in ``eval.py`` is
``numba.jit`` CPU code and runs unchanged.

This module provides :func:`rotate_iou_cpu_eval`, a drop-in replacement with
the same signature and semantics, and :func:`install_cpu_kitti_eval`, which
routes mmdet3d's import of ``rotate_iou`` to it when CUDA is unavailable.

Why not ``mmcv.ops.box_iou_rotated``: its CPU kernel (float32 only) sorts the
intersection points with a 1e-6 absolute collinearity tolerance, which is not
a consistent ordering when points nearly coincide. Against exact polygon
areas (shapely/GEOS) it is wrong by up to 0.77 IoU for ~7 % of pairs that
share an edge line (same yaw, shifted along the heading), ~3 % of pairs
perturbed by 1e-6 m, ~0.4 % of pairs with a vertex on the other box's edge,
and for identical boxes after a float32 LiDAR->camera round trip (a
GT-as-prediction KittiMetric run gave 3D AP 97.3 instead of 100). Those are
exactly the configurations of well-refined boxes, so the overlap is computed
here by exact convex clipping (Sutherland-Hodgman, float64, vectorised in
numpy), which has no ordering step. mmdet3d's numba kernel is itself not
robust there either (it returns 0 for a rotated box against itself under the
CUDA simulator); on generic pairs both agree with this module to ~1e-6.

mmdet3d is imported lazily so that importing :mod:`ebm_det` stays cheap and
free of OpenMMLab side effects.
"""
from __future__ import annotations

import sys
import types

import numpy as np

__all__ = ['rotate_iou_cpu_eval', 'install_cpu_kitti_eval', 'select_kitti_iou_backend']

_KITTI_UTILS = 'mmdet3d.evaluation.functional.kitti_utils'
_ROTATE_IOU = _KITTI_UTILS + '.rotate_iou'
_EVAL = _KITTI_UTILS + '.eval'
# Marker attribute that identifies our stub module (for idempotency checks).
_STUB_FLAG = '__ebm_det_cpu_rotate_iou__'
# Pairs per vectorised chunk (~100 MB peak for the (pairs, 8, 2) buffers).
_CHUNK_PAIRS = 1 << 20


def _kitti_corners(boxes: np.ndarray) -> np.ndarray:
    """Counter-clockwise corners of KITTI BEV rectangles.

    Same rectangle as ``rbbox_to_corners`` in mmdet3d's ``rotate_iou.py``:
    the local corners are rotated by *minus* the angle (camera BEV, where a
    positive rotation_y turns clockwise seen from above the x-z plane).

    Args:
        boxes: (M, 5) ``[x, y, w, h, angle]``.

    Returns:
        (M, 4, 2) float64 corners in counter-clockwise order.
    """
    x, y, w, h, a = (boxes[:, i, None] for i in range(5))
    # Local corners listed counter-clockwise; a rotation keeps the order.
    lx = np.array([-0.5, 0.5, 0.5, -0.5]) * w
    ly = np.array([-0.5, -0.5, 0.5, 0.5]) * h
    cos, sin = np.cos(a), np.sin(a)
    return np.stack([cos * lx + sin * ly + x, -sin * lx + cos * ly + y], axis=-1)


def _clip_area(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Area of the intersection of convex quadrilaterals, pair by pair.

    Sutherland-Hodgman: the subject polygon is clipped by the four
    half-planes of the clip polygon. Every step is a sign test and a linear
    interpolation, so coincident or collinear edges only create duplicate
    vertices, which add zero area (no sorting, unlike mmcv's kernel).

    Args:
        subject: (P, 4, 2) counter-clockwise corners.
        clip: (P, 4, 2) counter-clockwise corners.

    Returns:
        (P,) intersection areas (same unit as the corners, squared).
    """
    poly = subject
    count = np.full(len(poly), 4)
    for e in range(4):
        a = clip[:, e, None, :]  # (P, 1, 2)
        edge = clip[:, (e + 1) % 4, None, :] - a
        m = poly.shape[1]
        idx = np.arange(m)
        valid = idx[None] < count[:, None]  # (P, m)
        nxt = np.where(idx[None] + 1 < count[:, None], idx[None] + 1, 0)
        cur_pt = poly
        nxt_pt = np.take_along_axis(poly, nxt[..., None], axis=1)
        rel = cur_pt - a
        side = edge[..., 0] * rel[..., 1] - edge[..., 1] * rel[..., 0]
        side_nxt = np.take_along_axis(side, nxt, axis=1)
        inside = side >= 0
        crosses = valid & (inside != (side_nxt >= 0))
        keep = valid & inside
        denom = np.where(crosses, side - side_nxt, 1.0)
        t = np.where(crosses, side / denom, 0.0)[..., None]
        hit = cur_pt + t * (nxt_pt - cur_pt)
        # Each input vertex emits (itself if inside, crossing if any), in
        # order; compact the emitted points to the front, order preserved.
        cand = np.stack([cur_pt, hit], axis=2).reshape(len(poly), 2 * m, 2)
        emit = np.stack([keep, crosses], axis=2).reshape(len(poly), 2 * m)
        order = np.argsort(~emit, axis=1, kind='stable')
        count = emit.sum(axis=1)
        width = max(int(count.max()), 1)
        poly = np.take_along_axis(cand, order[:, :width, None], axis=1)
    # Shoelace over the valid prefix; padding repeats vertex 0 (zero area).
    idx = np.arange(poly.shape[1])
    poly = np.where((idx[None] < count[:, None])[..., None], poly, poly[:, :1])
    rolled = np.roll(poly, -1, axis=1)
    cross = poly[..., 0] * rolled[..., 1] - poly[..., 1] * rolled[..., 0]
    return np.where(count >= 3, 0.5 * cross.sum(axis=1), 0.0)


def rotate_iou_cpu_eval(boxes: np.ndarray,
                        query_boxes: np.ndarray,
                        criterion: int = -1,
                        device_id: int = 0) -> np.ndarray:
    """Overlap of rotated rectangles, a CPU twin of ``rotate_iou_gpu_eval``.

    Args:
        boxes (np.ndarray): (N, 5) rectangles ``[x, y, w, h, angle]`` as the
            KITTI eval passes them: BEV boxes in the camera frame, i.e.
            ``[x_cam, z_cam, l, w, rotation_y]`` (metres, radians).
        query_boxes (np.ndarray): (K, 5) rectangles in the same layout.
        criterion (int): What to return per pair ``(n, k)``, exactly as the
            CUDA kernel computes it: ``-1`` IoU; ``0`` intersection / area of
            ``query_boxes[k]``; ``1`` intersection / area of ``boxes[n]``;
            any other value the raw intersection area in m^2
            (``d3_box_overlap`` passes 2). Note the kernel calls
            ``devRotateIoUEval(query_box, box)``, so its "area1" (criterion
            0) is the *query* box, contrary to what its docstring suggests.
        device_id (int): Ignored; kept for signature compatibility.

    Returns:
        np.ndarray: (N, K) float32 overlaps (computed in float64).
    """
    boxes = np.asarray(boxes, dtype=np.float64)[:, :5]
    query_boxes = np.asarray(query_boxes, dtype=np.float64)[:, :5]
    n, k = boxes.shape[0], query_boxes.shape[0]
    inter = np.zeros((n, k))
    if n and k:
        # Only pairs whose circumscribed circles meet can overlap.
        radius_b = 0.5 * np.hypot(boxes[:, 2], boxes[:, 3])
        radius_q = 0.5 * np.hypot(query_boxes[:, 2], query_boxes[:, 3])
        dist = np.hypot(boxes[:, None, 0] - query_boxes[None, :, 0],
                        boxes[:, None, 1] - query_boxes[None, :, 1])
        rows, cols = np.nonzero(dist <= radius_b[:, None] + radius_q[None])
        corners_b, corners_q = _kitti_corners(boxes), _kitti_corners(query_boxes)
        for s in range(0, len(rows), _CHUNK_PAIRS):
            r, c = rows[s:s + _CHUNK_PAIRS], cols[s:s + _CHUNK_PAIRS]
            inter[r, c] = _clip_area(corners_b[r], corners_q[c])

    area_b = (boxes[:, 2] * boxes[:, 3])[:, None]
    area_q = (query_boxes[:, 2] * query_boxes[:, 3])[None, :]
    with np.errstate(divide='ignore', invalid='ignore'):
        if criterion == -1:
            out = inter / (area_b + area_q - inter)
        elif criterion == 0:
            out = inter / area_q
        elif criterion == 1:
            out = inter / area_b
        else:
            out = inter
    return np.ascontiguousarray(out, dtype=np.float32)


def _make_stub() -> types.ModuleType:
    """Build the module that stands in for mmdet3d's ``rotate_iou``."""
    stub = types.ModuleType(
        _ROTATE_IOU,
        'ebm_det CPU stand-in for mmdet3d kitti_utils.rotate_iou '
        '(numba.cuda); rotate_iou_gpu_eval is ebm_det rotate_iou_cpu_eval.')
    stub.rotate_iou_gpu_eval = rotate_iou_cpu_eval
    stub.rotate_iou_cpu_eval = rotate_iou_cpu_eval
    setattr(stub, _STUB_FLAG, True)
    return stub


def install_cpu_kitti_eval(force: bool = False) -> bool:
    """Make mmdet3d's KITTI eval use :func:`rotate_iou_cpu_eval` on CPU hosts.

    In mmdet3d 1.4, ``kitti_utils/rotate_iou.py`` compiles its kernel with an
    explicit signature at import time, so importing it raises
    ``CudaSupportError`` without a CUDA driver; ``kitti_utils/eval.py``
    imports it lazily, inside ``bev_box_overlap`` and ``d3_box_overlap``
    (``from .rotate_iou import rotate_iou_gpu_eval``). Hence ``kitti_eval``
    and ``KittiMetric`` import fine but fail on the first BEV/3D overlap.
    That import statement resolves the submodule through ``sys.modules``
    first, so registering a stub module under
    ``mmdet3d.evaluation.functional.kitti_utils.rotate_iou`` is the
    narrowest hook: no mmdet3d function is replaced, nothing is imported
    eagerly, and the order relative to ``import mmdet3d.evaluation`` does
    not matter. For mmdet3d variants that bind the name at module level,
    an already-imported ``eval`` module is rebound as well.

    Idempotent: a second call finds the stub and changes nothing.

    Args:
        force (bool): Install even when CUDA is available (for tests).

    Returns:
        bool: True if the CPU path is active after the call, False if CUDA is
        available and nothing was changed.

    Raises:
        RuntimeError: if ``eval.py`` was already imported and, after the
            hook, its ``bev_box_overlap`` still does not reach the CPU
            function (e.g. an mmdet3d version that captured the CUDA function
            elsewhere); the message says to install before importing.
    """
    import torch

    if torch.cuda.is_available() and not force:
        return False

    stub = sys.modules.get(_ROTATE_IOU)
    if stub is None or not getattr(stub, _STUB_FLAG, False):
        stub = _make_stub()
        sys.modules[_ROTATE_IOU] = stub

    # Submodule imports also bind the child on the parent package; keep that
    # attribute consistent if the package is already imported.
    pkg = sys.modules.get(_KITTI_UTILS)
    if pkg is not None:
        setattr(pkg, 'rotate_iou', stub)

    evaluator = sys.modules.get(_EVAL)
    if evaluator is not None:
        if hasattr(evaluator, 'rotate_iou_gpu_eval'):
            evaluator.rotate_iou_gpu_eval = rotate_iou_cpu_eval
        # Already imported: prove the hook took effect on a unit box (1 ms).
        box = np.array([[0.0, 0.0, 2.0, 1.0, 0.3]])
        try:
            ok = abs(float(evaluator.bev_box_overlap(box, box)[0, 0]) - 1) < 1e-5
        except Exception as exc:  # noqa: BLE001 - reported below
            ok, why = False, repr(exc)
        else:
            why = 'overlap of a box with itself is not 1'
        if not ok:
            raise RuntimeError(
                f'{_EVAL} was imported before install_cpu_kitti_eval() and '
                f'still does not use the CPU rotated IoU ({why}); call '
                'install_cpu_kitti_eval() before importing mmdet3d.evaluation.')
    return True


_BACKEND_LOGGED = []


def select_kitti_iou_backend() -> str:
    """Choose who computes mmdet3d's KITTI BEV/3D IoU and log the choice once per process.

    Without CUDA, :func:`install_cpu_kitti_eval` routes it to :func:`rotate_iou_cpu_eval`; with
    CUDA, mmdet3d's own numba kernel stays. Nothing happens on ``import ebm_det``: a config opts in
    with ``custom_imports=dict(imports=['ebm_det', 'ebm_det.evaluation.kitti_iou_backend'])`` (or a
    script calls this function).

    Returns:
        'ebm_det CPU' or 'mmdet3d numba.cuda'.
    """
    backend = 'ebm_det CPU' if install_cpu_kitti_eval() else 'mmdet3d numba.cuda'
    if not _BACKEND_LOGGED:
        from mmengine.logging import print_log
        detail = ('rotate_iou_cpu_eval, exact convex clipping in float64: no CUDA device' if backend == 'ebm_det CPU'
                  else "mmdet3d's rotate_iou_gpu_eval")
        print_log(f'KITTI BEV/3D IoU backend: {backend} ({detail})', logger='current')
        _BACKEND_LOGGED.append(backend)
    return backend
