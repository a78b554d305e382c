"""Tests for ebm_det.synthetic.kitti_scenes (synthetic KITTI scenes).

The generated folder is read back only through mmdet3d: ``KittiDataset``
with the stock LiDAR pipeline for the boxes, and ``KittiMetric`` (with the
CPU rotated IoU installed) for an end-to-end GT-as-prediction evaluation.
"""
from __future__ import annotations

import os.path as osp

import numpy as np
import pytest

pytest.importorskip('mmdet3d')
torch = pytest.importorskip('torch')

SEED = 0
CLASSES = ['Pedestrian', 'Cyclist', 'Car']


from ebm_det.synthetic import kitti_scenes as gen  # noqa: E402


@pytest.fixture(scope='module')
def small_set(tmp_path_factory):
    """3 train + 2 val frames."""
    out = tmp_path_factory.mktemp('kitti_gen')
    return gen.generate(str(out), num_train=3, num_val=2, seed=SEED)


def _dataset(root: str, ann_file: str):
    from mmdet3d.datasets import KittiDataset
    from mmdet3d.utils import register_all_modules
    register_all_modules()
    return KittiDataset(
        data_root=root,
        ann_file=ann_file,
        data_prefix=dict(pts='training/velodyne', img='training/image_2'),
        pipeline=[
            dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=4,
                 use_dim=4),
            dict(type='LoadAnnotations3D', with_bbox_3d=True,
                 with_label_3d=True),
        ],
        modality=dict(use_lidar=True, use_camera=False),
        metainfo=dict(classes=CLASSES),
        # No Pack3DDetInputs here, so the (training-mode) empty-GT filter,
        # which reads packed data_samples, must be off.
        filter_empty_gt=False,
        test_mode=False)


def _yaw_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((a - b + np.pi) % (2 * np.pi) - np.pi)


def test_layout(small_set):
    root = small_set['root']
    for split, ids in (('train', [0, 1, 2]), ('val', [3, 4]), ('test', [])):
        with open(osp.join(root, 'ImageSets', f'{split}.txt')) as f:
            assert [int(x) for x in f.read().split()] == ids
    for sub, ext in (('velodyne', 'bin'), ('label_2', 'txt'),
                     ('calib', 'txt'), ('image_2', 'png')):
        for i in range(5):
            assert osp.isfile(osp.join(root, 'training', sub, f'{i:06d}.{ext}'))
    from PIL import Image
    with Image.open(osp.join(root, 'training', 'image_2', '000000.png')) as im:
        assert im.size == (1242, 375)


@pytest.mark.parametrize('split', ['train', 'val'])
def test_kitti_dataset_roundtrip(small_set, split):
    """Boxes read back by KittiDataset equal the generated LiDAR boxes."""
    ds = _dataset(small_set['root'], small_set[f'{split}_info'])
    first = 0 if split == 'train' else 3
    assert len(ds) == (3 if split == 'train' else 2)
    for i in range(len(ds)):
        item = ds[i]
        assert item['sample_idx'] == i  # mmengine uses the list position
        scene = gen.make_scene(SEED, first + i)
        gt = item['gt_bboxes_3d'].tensor.numpy()
        want = scene.boxes_lidar
        assert len(want) >= 1 and gt.shape == want.shape
        np.testing.assert_allclose(gt[:, :6], want[:, :6], atol=1e-3)
        assert _yaw_diff(gt[:, 6], want[:, 6]).max() < 1e-3
        assert [CLASSES[k] for k in item['gt_labels_3d']] == scene.names
        # Points: the stored cloud is exactly the scene's, ~24k per frame.
        pts = item['points'].tensor.numpy()
        np.testing.assert_array_equal(pts, scene.points)
        assert 15_000 < len(pts) <= 30_000


def _points_in_boxes(xyz: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, M) bool: point n inside LiDAR box m (bottom-centre boxes).

    mmdet3d's ``points_in_boxes_all`` is CUDA-only, so mmcv's CPU op is used.
    """
    from mmcv.ops import points_in_boxes_cpu
    return points_in_boxes_cpu(
        torch.from_numpy(xyz[None]).float(),
        torch.from_numpy(boxes[None]).float())[0].numpy().astype(bool)


def test_points_on_ground_or_boxes(small_set):
    """Almost every return lies on the road, a labelled box, or clutter."""
    for frame in range(5):
        scene = gen.make_scene(SEED, frame)
        xyz = scene.points[:, :3]
        on_ground = np.abs(xyz[:, 2] - gen.GROUND_Z) < 0.1
        solids = np.concatenate([scene.boxes_lidar, scene.clutter_lidar])
        # Grow boxes by 10 cm (5 sigma of the range noise) around the surface.
        solids[:, 3:6] += 0.2
        solids[:, 2] -= 0.1
        in_any = _points_in_boxes(xyz, solids).any(axis=1)
        assert (on_ground | in_any).mean() > 0.99
        in_labelled = _points_in_boxes(xyz, scene.boxes_lidar)
        # The label box encloses its object's returns despite the noise
        # (minus the few returns of other objects hitting its margin).
        counts = in_labelled.sum(axis=0)
        assert (counts >= 0.9 * scene.num_points).all()
        assert (scene.num_points >= gen.MIN_OBJECT_POINTS).all()
        assert 0.02 < in_labelled.any(axis=1).mean() < 0.5
        assert on_ground.mean() > 0.5


def test_deterministic_and_seeded(small_set):
    a, b = gen.make_scene(SEED, 1), gen.make_scene(SEED, 1)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.boxes_lidar, b.boxes_lidar)
    stored = np.fromfile(osp.join(small_set['root'], 'training', 'velodyne',
                                  '000001.bin'), dtype=np.float32)
    np.testing.assert_array_equal(stored.reshape(-1, 4), a.points)
    c = gen.make_scene(SEED + 1, 1)
    assert c.points.shape != a.points.shape or not np.array_equal(c.points, a.points)


def test_kitti_metric_gt_as_prediction(tmp_path):
    """KittiMetric on predictions equal to the GT: Car AP 100 (CPU IoU)."""
    from ebm_det.evaluation.kitti_cpu_iou import install_cpu_kitti_eval
    install_cpu_kitti_eval()
    from mmdet3d.evaluation import KittiMetric

    # KITTI's AP picks one recall threshold per true positive, so it reaches
    # 100 only with >= 41 valid GT boxes of the class and difficulty; 9 val
    # frames hold >= 41 moderate cars for this seed (asserted below).
    paths = gen.generate(str(tmp_path), num_train=1, num_val=9, seed=SEED)
    ds = _dataset(paths['root'], paths['val_info'])
    rng = np.random.default_rng(0)
    samples, heights = [], []
    for i in range(len(ds)):
        item = ds[i]
        n = len(item['gt_labels_3d'])
        samples.append(dict(
            pred_instances_3d=dict(
                bboxes_3d=item['gt_bboxes_3d'],
                scores_3d=torch.from_numpy(rng.uniform(0.5, 1.0, n)).float(),
                labels_3d=torch.from_numpy(item['gt_labels_3d']).long()),
            pred_instances=dict(),
            sample_idx=item['sample_idx']))
    import mmengine
    for info in mmengine.load(paths['val_info'])['data_list']:
        heights += [ins['bbox'][3] - ins['bbox'][1] for ins in info['instances']
                    if ins['bbox_label'] == 2]
    heights = np.array(heights)

    metric = KittiMetric(ann_file=paths['val_info'], metric='bbox')
    metric.dataset_meta = dict(classes=CLASSES)
    metric.process({}, samples)
    ap = metric.compute_metrics(metric.results)

    prefix = 'pred_instances_3d/KITTI/Car'
    for diff, min_h in (('easy', 40), ('moderate', 25), ('hard', 25)):
        n = int((heights > min_h).sum())
        if diff == 'moderate':
            assert n >= 41, n
        # With every prediction a true positive precision is 1 at each of
        # the min(n, 41) thresholds KITTI can place.
        k = min(n, 41)
        ap40 = 100 * (k - 1) / 40
        ap11 = 100 * len(range(0, k, 4)) / 11
        for kind in ('3D', 'BEV', '2D'):
            for strict in ('strict', 'loose'):
                assert ap[f'{prefix}_{kind}_AP40_{diff}_{strict}'] == \
                    pytest.approx(ap40, abs=1e-3), (kind, diff, strict)
                assert ap[f'{prefix}_{kind}_AP11_{diff}_{strict}'] == \
                    pytest.approx(ap11, abs=1e-3), (kind, diff, strict)
    assert ap[f'{prefix}_3D_AP40_moderate_strict'] == pytest.approx(100, abs=1e-3)
