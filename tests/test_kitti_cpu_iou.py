"""Tests for ebm_det.evaluation.kitti_cpu_iou (CPU KITTI BEV/3D overlaps).

The reference is mmdet3d's own numba-CUDA ``rotate_iou_gpu_eval`` run under
numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) in a subprocess, so the
CPU path is checked against the exact code it replaces, including the angle
convention.
"""
from __future__ import annotations

import os
import os.path as osp
import subprocess
import sys
import textwrap
import time
from typing import Dict

import numpy as np
import pytest

pytest.importorskip('mmdet3d')

from ebm_det.evaluation.kitti_cpu_iou import (  # noqa: E402
    install_cpu_kitti_eval, rotate_iou_cpu_eval)

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# Runs in a fresh interpreter with NUMBA_ENABLE_CUDASIM=1. rotate_iou.py only
# imports math/numba/numpy, so it is loaded by file path: importing it as
# mmdet3d.evaluation... would pull in all of mmdet3d for nothing.
_SIM_SCRIPT = textwrap.dedent('''
    import importlib.util, os, sys, time
    import numpy as np
    root = os.path.dirname(importlib.util.find_spec('mmdet3d').origin)
    path = os.path.join(root, 'evaluation', 'functional', 'kitti_utils',
                        'rotate_iou.py')
    spec = importlib.util.spec_from_file_location('_orig_rotate_iou', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    data = np.load(sys.argv[1])

    def run(*args):
        # The simulator swaps `cuda` in the kernel's globals from each of its
        # 64 threads; the first launch can race ("dictionary changed size
        # during iteration"), so a failed launch is simply retried.
        for attempt in range(3):
            try:
                return mod.rotate_iou_gpu_eval(*args)
            except RuntimeError:
                if attempt == 2:
                    raise

    run(data['boxes'][:1], data['query'][:1], -1)  # warm-up launch
    out = {}
    t0 = time.perf_counter()
    for crit in (-1, 0, 1, 2):
        out[f'c{crit}'] = run(data['boxes'], data['query'], crit)
    out['seconds'] = np.array(time.perf_counter() - t0)
    np.savez(sys.argv[2], **out)
''')


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 5) [x, y, w, h, angle] boxes crowded into a 6 m square."""
    return np.concatenate([
        rng.uniform(0, 6, (n, 2)),
        rng.uniform(0.5, 4.5, (n, 2)),
        rng.uniform(-np.pi, np.pi, (n, 1)),
    ], axis=1).astype(np.float32)


@pytest.fixture(scope='module')
def simulator_reference(tmp_path_factory) -> Dict[str, np.ndarray]:
    """30x20 boxes and the CUDA-simulator overlaps for criteria -1, 0, 1, 2."""
    rng = np.random.default_rng(0)
    boxes = _random_boxes(rng, 30)
    query = _random_boxes(rng, 20)
    # Exact copies and small perturbations exercise IoU ~ 1 and shared edges.
    query[:5] = boxes[:5]
    query[5:8] = boxes[5:8] + np.float32([0.1, -0.1, 0.05, 0.0, 0.02])
    tmp = tmp_path_factory.mktemp('cudasim')
    np.savez(tmp / 'in.npz', boxes=boxes, query=query)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM='1')
    res = subprocess.run(
        [sys.executable, '-c', _SIM_SCRIPT,
         str(tmp / 'in.npz'), str(tmp / 'out.npz')],
        env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = dict(np.load(tmp / 'out.npz'))
    ref.update(boxes=boxes, query=query)
    return ref


@pytest.mark.parametrize('criterion', [-1, 0, 1, 2])
def test_matches_numba_cuda_simulator(simulator_reference, criterion):
    ref = simulator_reference
    t0 = time.perf_counter()
    got = rotate_iou_cpu_eval(ref['boxes'], ref['query'], criterion)
    cpu_s = time.perf_counter() - t0
    want = ref[f'c{criterion}']
    assert got.shape == (30, 20) and got.dtype == np.float32
    # Criterion 2 is an area in m^2 (up to ~20), the others are ratios.
    atol = 1e-4 * (max(1.0, float(np.abs(want).max())) if criterion == 2 else 1)
    # Coincident boxes are excluded from the comparison: the numba kernel's
    # vertex/edge tests have no tolerance, and under the simulator it returns
    # 0 or 1/3 for identical rotated rectangles instead of 1 (e.g.
    # [0, 0, 2, 1, 0.3] with itself gives 0); the CPU path gives 1, checked
    # below (and against exact polygons in the next test).
    same = (ref['boxes'][:, None, :] == ref['query'][None, :, :]).all(-1)
    assert same.sum() == 5
    np.testing.assert_allclose(got[~same], want[~same], atol=atol, rtol=0)
    # The random layout must actually overlap, or the check is vacuous.
    assert (want > 0).mean() > 0.3
    area = ref['boxes'][:, 2] * ref['boxes'][:, 3]
    expected_same = {-1: 1.0, 0: 1.0, 1: 1.0}.get(
        criterion, area[:, None].repeat(20, 1)[same])
    np.testing.assert_allclose(got[same], expected_same, rtol=1e-5)
    if criterion == -1:
        print(f'\nCPU {cpu_s * 1e3:.2f} ms vs CUDA simulator '
              f'{float(ref["seconds"]) / 4 * 1e3:.0f} ms per call (30x20)')


def test_degenerate_pairs_match_exact_polygons():
    """Near-coincident, edge-sharing and vertex-on-edge pairs vs GEOS.

    These are the configurations of well-refined boxes, where sorting-based
    kernels (mmcv's CPU op, the numba one) lose vertices; shapely's exact
    float64 polygon intersection is the reference.
    """
    shapely = pytest.importorskip('shapely', minversion='2.0')
    from ebm_det.evaluation.kitti_cpu_iou import _kitti_corners

    rng = np.random.default_rng(1)
    n = 60
    boxes = _random_boxes(rng, n).astype(np.float64)
    query = boxes.copy()
    query[:15] += rng.normal(0, 1e-6, (15, 5))  # float32 round-trip noise
    # Same yaw, slid along the heading: two edge lines coincide.
    u = rng.uniform(-1, 1, 15) * boxes[15:30, 2]
    query[15:30, 0] += u * np.cos(boxes[15:30, 4])
    query[15:30, 1] -= u * np.sin(boxes[15:30, 4])
    # Random yaw, one query corner placed exactly on a box edge.
    query[30:45, 4] = rng.uniform(-np.pi, np.pi, 15)
    cb, cq = _kitti_corners(boxes[30:45]), _kitti_corners(query[30:45])
    t = rng.uniform(0, 1, (15, 1))
    query[30:45, :2] += cb[:, 0] * (1 - t) + cb[:, 1] * t - cq[:, 2]
    query[45:] = boxes[45:]  # exact copies

    polys_b = shapely.polygons(_kitti_corners(boxes))
    polys_q = shapely.polygons(_kitti_corners(query))
    inter = shapely.area(shapely.intersection(polys_b[:, None], polys_q[None]))
    area_b = shapely.area(polys_b)[:, None]
    area_q = shapely.area(polys_q)[None]
    expected = {-1: inter / (area_b + area_q - inter), 0: inter / area_q,
                1: inter / area_b, 2: inter}
    for criterion, want in expected.items():
        got = rotate_iou_cpu_eval(boxes, query, criterion)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_angle_sign_matters():
    """A mirrored angle must change the IoU, so the sign check is not vacuous."""
    a = np.array([[0, 0, 4, 1, 0.5]], np.float32)
    b = np.array([[1, 1, 4, 1, 0.5]], np.float32)
    b_mirror = b.copy()
    b_mirror[0, 4] = -0.5
    assert abs(rotate_iou_cpu_eval(a, b)[0, 0]
               - rotate_iou_cpu_eval(a, b_mirror)[0, 0]) > 0.05


def test_empty_inputs():
    box = np.zeros((3, 5), np.float32)
    assert rotate_iou_cpu_eval(box, np.zeros((0, 5)), -1).shape == (3, 0)
    assert rotate_iou_cpu_eval(np.zeros((0, 5)), box, 2).shape == (0, 3)


def _anno(names, bboxes, dims, locs, rots, scores=None) -> dict:
    """KITTI-style annotation dict as kitti_eval consumes it.

    ``dimensions`` are (l, h, w) and ``location`` the bottom centre, both in
    the camera frame, as mmdet3d's KittiMetric builds them.
    """
    n = len(names)
    anno = dict(
        name=np.array(names),
        truncated=np.zeros(n),
        occluded=np.zeros(n, dtype=np.int64),
        alpha=np.array([r - np.arctan2(loc[0], loc[2])
                        for r, loc in zip(rots, locs)]),
        bbox=np.array(bboxes, dtype=np.float64),
        dimensions=np.array(dims, dtype=np.float64),
        location=np.array(locs, dtype=np.float64),
        rotation_y=np.array(rots, dtype=np.float64),
    )
    anno['score'] = np.array(scores if scores is not None else np.ones(n))
    return anno


def test_kitti_eval_perfect_predictions():
    if _cuda_available():
        pytest.skip('CUDA host: mmdet3d uses its own GPU kernel')
    assert install_cpu_kitti_eval()
    stub = sys.modules['mmdet3d.evaluation.functional.kitti_utils.rotate_iou']
    assert install_cpu_kitti_eval()  # idempotent: same stub object
    assert sys.modules[
        'mmdet3d.evaluation.functional.kitti_utils.rotate_iou'] is stub
    from mmdet3d.evaluation.functional import kitti_eval

    # KITTI picks at most one recall threshold per true positive, so AP can
    # only reach 100 with >= 41 valid GT per class and difficulty; hence 21
    # frames x 2 objects per class. 2D boxes are disjoint and taller than
    # 40 px (easy), locations/rotations vary per frame.
    gt = []
    for f in range(21):
        yaw = -np.pi + 0.29 * f
        gt.append(_anno(
            ['Car', 'Pedestrian', 'Car', 'Pedestrian'],
            [[200, 160, 400, 230], [450, 140, 500, 250],
             [800, 170, 950, 215], [600, 150, 640, 230]],
            [[4.0, 1.5, 1.7], [0.8, 1.8, 0.6], [4.4, 1.6, 1.8], [0.6, 1.7, 0.6]],
            [[-5.0 + 0.1 * f, 1.65, 15.0], [-2.0, 1.65, 8.0 + 0.1 * f],
             [5.0, 1.65, 25.0 - 0.2 * f], [3.0, 1.65, 12.0]],
            [yaw, -yaw, 0.5 * yaw, 1.0]))
    dt = [dict(g, score=np.array([0.9, 0.8, 0.7, 0.6])) for g in gt]
    _, ap = kitti_eval(gt, dt, ['Car', 'Pedestrian'],
                       eval_types=['bbox', 'bev', '3d'])
    keys = [k for k in ap if k.startswith(('KITTI/Car_', 'KITTI/Pedestrian_'))]
    assert any('_3D_AP40_' in k for k in keys)
    assert any('_BEV_AP40_' in k for k in keys)
    for k in keys:
        assert ap[k] == pytest.approx(100.0, abs=1e-3), k

    # A shifted copy must lower 3D AP (guards against a vacuous IoU of 1).
    shifted = [dict(d, location=d['location'] + [0.0, 0.0, 1.2]) for d in dt]
    _, ap_shift = kitti_eval(gt, shifted, ['Car'], eval_types=['bbox', 'bev', '3d'])
    assert ap_shift['KITTI/Car_3D_AP40_moderate_strict'] < 50


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def test_install_after_mmdet3d_evaluation_was_imported():
    """Order independence: importing mmdet3d.evaluation first must not matter."""
    script = textwrap.dedent('''
        import sys
        import numpy as np
        import mmdet3d.evaluation  # noqa: F401  (imported before the install)
        from ebm_det.evaluation.kitti_cpu_iou import install_cpu_kitti_eval
        assert install_cpu_kitti_eval()
        assert install_cpu_kitti_eval()  # idempotent
        from mmdet3d.evaluation.functional.kitti_utils import eval as kitti
        boxes = np.array([[0, 1.6, 10, 4, 1.5, 1.7, 0.3]], np.float64)
        bev = kitti.bev_box_overlap(boxes[:, [0, 2, 3, 5, 6]],
                                    boxes[:, [0, 2, 3, 5, 6]])
        d3 = kitti.d3_box_overlap(boxes, boxes)
        assert abs(bev[0, 0] - 1) < 1e-5 and abs(d3[0, 0] - 1) < 1e-5
        print('OK')
    ''')
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (REPO_ROOT, env.get('PYTHONPATH')) if p)
    res = subprocess.run([sys.executable, '-c', script], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and 'OK' in res.stdout, res.stderr[-3000:]
