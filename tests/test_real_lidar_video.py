"""Real LiDAR frames and a real video, as FORMAT and GEOMETRY checks (issue 26, item 4): no
accuracy claim, every model here has random weights.

- KITTI, 6 raw training frames: mmdet3d's own converters (its ``tools/dataset_converters``,
  shipped in ``mmdet3d/.mim``: ``create_kitti_info_file``, ``update_kitti_infos``,
  ``_create_reduced_point_cloud``) write the infos; mmdet3d's ``KittiDataset`` with
  ``LoadPointsFromFile`` / ``LoadAnnotations3D`` loads them; the boxes are checked against
  label_2 + calib worked by hand here (LiDAR frame, sizes, yaw, projection into image_2) and
  against the points (mmdet3d's ``points_in_rbbox``).
- KITTI 000008 with the infos pkl mmdet3d's demo ships: ``KittiDataset`` and mmdet3d's
  ``init_model`` / ``inference_detector`` on our EBM config.
- Our 3D refinement: ``configs/pointpillars_hv_secfpn_ebm-nce_kitti-3d-car.py`` (the real-KITTI
  config) through the mmengine Runner with mmdet3d's ``KittiMetric`` (refined and initial boxes);
  jittered ground truth refined through ``EBMRefineDetector3D.refine``; ``KittiMetric`` on the
  ground truth itself, written back as KITTI label lines that must be label_2's.
- nuScenes, one sample: ``NuScenesDataset`` with the demo's infos pkl; its 9-D boxes (velocity
  columns) refined by an ``EBMBoxHead3D`` on a pillar BEV map of the sweep.
- The 8-frame street video: ``configs/bytetrack_ebm_shapes-video.py`` end to end through
  ``tools/track_video.py`` (mmcv's ``VideoReader``, mmdet's ``init_track_model`` /
  ``inference_mot``), the tracks written in MOTChallenge format and read back by motmetrics.

The data live in ``../shared/data`` (beside the repository; CI has it at the same place; nothing
of it is copied here). Where it is absent (a user's clone) every test skips, saying why.
"""
import importlib
import importlib.util
import math
import sys
import types
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT

DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'
LIDAR = DATA / 'real_lidar'
KITTI6 = LIDAR / 'kitti_6frames'
KITTI8 = LIDAR / 'kitti_000008'
NUSC = LIDAR / 'nuscenes_1sample'
VIDEO = DATA / 'real_video' / 'street_8frames.mp4'
KITTI_CONFIG = ROOT / 'configs' / 'pointpillars_hv_secfpn_ebm-nce_kitti-3d-car.py'
MOT_CONFIG = ROOT / 'configs' / 'bytetrack_ebm_shapes-video.py'
KITTI_CLASSES = ('Pedestrian', 'Cyclist', 'Car', 'Van', 'Truck', 'Person_sitting', 'Tram', 'Misc')
AP = 'pred_instances_3d/KITTI/Car_{}_AP40_moderate_strict'


def need(path: Path) -> None:
    """Skip, saying why, where the shared data (or this part of it) is absent."""
    if not path.exists():
        pytest.skip(f'../shared/data/{path.relative_to(DATA)} not found: real-data checks need the shared data '
                    f'folder ({DATA}, see its README.md), which sits beside the repository in CI')


# ------------------------------------------------------------------------------------ helpers
def read_label(path: Path) -> list:
    """KITTI label_2 rows as dicts (camera frame: location = bottom centre, dims h, w, l)."""
    rows = []
    for line in path.read_text().splitlines():
        v = line.split()
        if v:
            rows.append(dict(name=v[0], truncated=float(v[1]), bbox=[float(x) for x in v[4:8]],
                             hwl=[float(x) for x in v[8:11]], location=[float(x) for x in v[11:14]],
                             ry=float(v[14])))
    return rows


def read_calib(path: Path) -> dict:
    """P2 (3 x 4) and R0_rect, Tr_velo_to_cam as 4 x 4 from a KITTI calib file."""
    vals = {}
    for line in path.read_text().splitlines():
        if ':' in line:
            key, rest = line.split(':', 1)
            vals[key] = np.array([float(x) for x in rest.split()])
    r0, tr = np.eye(4), np.eye(4)
    r0[:3, :3] = vals['R0_rect'].reshape(3, 3)
    tr[:3, :4] = vals['Tr_velo_to_cam'].reshape(3, 4)
    return dict(P2=vals['P2'].reshape(3, 4), R0_rect=r0, Tr_velo_to_cam=tr)


def project(lidar2img: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """(N, 3) LiDAR points -> (N, 2) pixels with a 3 x 4 or 4 x 4 lidar2img."""
    uvw = np.concatenate([xyz, np.ones((len(xyz), 1))], 1) @ np.asarray(lidar2img)[:3].T
    assert (uvw[:, 2] > 0).all(), 'behind the camera'
    return uvw[:, :2] / uvw[:, 2:3]


def points_in_boxes(points: np.ndarray, boxes) -> np.ndarray:
    """(M,) points inside each of M LiDAR boxes, by mmdet3d's own CPU ``points_in_rbbox``."""
    from mmdet3d.structures.ops import box_np_ops
    t = boxes.tensor if hasattr(boxes, 'tensor') else boxes
    if len(t) == 0:
        return np.zeros(0, dtype=np.int64)
    return box_np_ops.points_in_rbbox(np.ascontiguousarray(points[:, :3], dtype=np.float32),
                                      t[:, :7].detach().double().numpy()).sum(0)


def check_lidar_boxes(boxes, bev_range=None, margin=1.0) -> torch.Tensor:
    """mmdet3d LiDAR boxes with finite values, positive sizes, yaw in [-pi, pi) and (optionally)
    centres inside ``bev_range`` (x_min, y_min, x_max, y_max) +- ``margin`` metres."""
    from mmdet3d.structures import LiDARInstance3DBoxes
    assert isinstance(boxes, LiDARInstance3DBoxes) and boxes.with_yaw
    t = boxes.tensor
    assert torch.isfinite(t).all() and (t[:, 3:6] > 0).all()
    assert ((t[:, 6] >= -math.pi) & (t[:, 6] < math.pi)).all()
    if bev_range is not None:
        x0, y0, x1, y1 = bev_range
        assert ((t[:, 0] >= x0 - margin) & (t[:, 0] <= x1 + margin)).all()
        assert ((t[:, 1] >= y0 - margin) & (t[:, 1] <= y1 + margin)).all()
    return t


def mmdet3d_converters():
    """mmdet3d's own dataset converters (its ``tools/dataset_converters``, which pip installs as
    ``mmdet3d/.mim/tools``) imported as one package, ``(kitti_converter, update_infos_to_v2)``.

    ``kitti_data_utils`` imports scikit-image for one call, ``skimage.io.imread(png).shape[:2]``
    (the image size). scikit-image is not among what ebm_det installs (mmdet3d goes in
    ``--no-deps``), so where it is absent ``mmcv.imread`` stands in for that import only.
    """
    import mmcv
    import mmdet3d
    name = '_mmdet3d_dataset_converters'
    if name not in sys.modules:
        folder = Path(mmdet3d.__file__).parent / '.mim' / 'tools' / 'dataset_converters'
        assert folder.is_dir(), f'{folder} missing: this mmdet3d install does not ship its tools'
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules[name] = package
    stub = None
    if importlib.util.find_spec('skimage') is None:
        stub = types.ModuleType('skimage')
        stub.io = types.ModuleType('skimage.io')
        stub.io.imread = lambda path: mmcv.imread(path, 'unchanged')
        sys.modules.update({'skimage': stub, 'skimage.io': stub.io})
    try:
        return (importlib.import_module(name + '.kitti_converter'),
                importlib.import_module(name + '.update_infos_to_v2'))
    finally:
        if stub is not None:
            del sys.modules['skimage'], sys.modules['skimage.io']


def build_dataset(cfg: dict):
    from mmengine.registry import init_default_scope
    from mmdet3d.registry import DATASETS
    init_default_scope('mmdet3d')
    return DATASETS.build(cfg)


def kitti_gt_pipeline(extra=()):
    return [dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=4, use_dim=4),
            dict(type='LoadAnnotations3D', with_bbox_3d=True, with_label_3d=True), *extra,
            dict(type='Pack3DDetInputs', keys=['points', 'gt_bboxes_3d', 'gt_labels_3d'])]


def kitti_config(**model):
    """The real-KITTI EBM config, its detector and head at their initial (random) weights."""
    from mmengine.config import Config
    cfg = Config.fromfile(str(KITTI_CONFIG))
    cfg.model.detector_checkpoint = None
    cfg.model.ebm_head.loss = dict(type='NCELoss', num_samples=8)
    cfg.model.update(model)
    return cfg


def kitti_metric(ann_file: Path, samples: list, classes=('Car', ), submission_prefix=None) -> dict:
    """mmdet3d's KittiMetric (through mmengine's Evaluator) on Det3DDataSamples; keys without the
    metric's 'Kitti metric/' prefix. With ``submission_prefix`` it also writes the boxes as KITTI
    label files (``<prefix>/pred_instances_3d/<sample_idx>.txt``)."""
    from mmengine.evaluator import Evaluator
    import ebm_det.evaluation.kitti_iou_backend  # noqa: F401  (the CPU BEV/3D IoU where CUDA is absent)
    evaluator = Evaluator(dict(type='KittiMetric', ann_file=str(ann_file), metric='bbox',
                               submission_prefix=None if submission_prefix is None else str(submission_prefix)))
    evaluator.dataset_meta = dict(classes=list(classes))
    evaluator.process(samples)
    return {k.split('/', 1)[1]: v for k, v in evaluator.evaluate(len(samples)).items()}


def iou_2d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of (N, 4) x1, y1, x2, y2 boxes."""
    lt, rb = np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def prediction_sample(sample_idx: int, boxes, labels, scores=None):
    from mmdet3d.structures import Det3DDataSample
    from mmengine.structures import InstanceData
    s = Det3DDataSample(metainfo=dict(sample_idx=sample_idx))
    s.pred_instances_3d = InstanceData(bboxes_3d=boxes, labels_3d=labels,
                                       scores_3d=torch.ones(len(labels)) if scores is None else scores)
    s.pred_instances = InstanceData()
    return s


# ----------------------------------------------------------------------- (a) KITTI, raw layout
@pytest.fixture(scope='module')
def kitti6(tmp_path_factory):
    """mmdet3d's KITTI preparation (what ``tools/create_data.py kitti`` runs) on the 6 raw frames,
    written to a temporary folder: v1 infos, the 1.x infos of the val split (frames 0-5), and the
    camera-FOV ("reduced") clouds the stock KITTI configs read."""
    need(KITTI6)
    pytest.importorskip('mmdet3d')
    kitti_converter, update_infos = mmdet3d_converters()
    tmp = tmp_path_factory.mktemp('kitti6')
    for sub in ('v1', 'v2', 'velodyne_reduced'):
        (tmp / sub).mkdir()
    kitti_converter.create_kitti_info_file(str(KITTI6), 'kitti', save_path=str(tmp / 'v1'))
    update_infos.update_kitti_infos(str(tmp / 'v1' / 'kitti_infos_val.pkl'), str(tmp / 'v2'))
    kitti_converter._create_reduced_point_cloud(str(KITTI6), str(tmp / 'v1' / 'kitti_infos_val.pkl'),
                                                save_path=str(tmp / 'velodyne_reduced'))
    return dict(ann=tmp / 'v2' / 'kitti_infos_val.pkl', reduced=tmp / 'velodyne_reduced')


def test_kitti_raw_frames_through_mmdet3d_converters_and_kittidataset(kitti6):
    """The 6 frames: the converters' infos match the raw files; ``KittiDataset`` loads every
    point and every labelled object; each LiDAR box is label_2's camera box through the calib
    (worked by hand), projects into its 2D box, and holds the points the converter counted."""
    import mmcv
    import mmengine
    from mmdet3d.structures import LiDARInstance3DBoxes
    from ebm_det.core import wrap_angle
    infos = mmengine.load(kitti6['ann'])
    assert infos['metainfo']['dataset'] == 'kitti'
    data_list = infos['data_list']
    assert [d['sample_idx'] for d in data_list] == list(range(6))
    ds = build_dataset(dict(type='KittiDataset', data_root=str(KITTI6), ann_file=str(kitti6['ann']),
                            data_prefix=dict(pts='training/velodyne', img='training/image_2'),
                            modality=dict(use_lidar=True, use_camera=False), box_type_3d='LiDAR',
                            pipeline=kitti_gt_pipeline()))
    assert len(ds) == 6 and tuple(ds.metainfo['classes']) == KITTI_CLASSES
    num_objects = 0
    for i, info in enumerate(data_list):
        labels = read_label(KITTI6 / 'training' / 'label_2' / f'{i:06d}.txt')
        calib = read_calib(KITTI6 / 'training' / 'calib' / f'{i:06d}.txt')
        cam2 = info['images']['CAM2']
        image = mmcv.imread(str(KITTI6 / 'training' / 'image_2' / cam2['img_path']))
        assert (cam2['height'], cam2['width']) == image.shape[:2]
        assert info['lidar_points']['lidar_path'] == f'{i:06d}.bin'
        assert len(info['instances']) == len(labels)  # DontCare rows too, as label -1
        assert [inst['bbox_label_3d'] for inst in info['instances']] == \
            [KITTI_CLASSES.index(o['name']) if o['name'] in KITTI_CLASSES else -1 for o in labels]

        sample = ds[i]
        assert sample['data_samples'].metainfo['sample_idx'] == i
        raw = np.fromfile(KITTI6 / 'training' / 'velodyne' / f'{i:06d}.bin', dtype=np.float32).reshape(-1, 4)
        points = sample['inputs']['points'].numpy()
        assert 110_000 < len(raw) < 130_000
        np.testing.assert_array_equal(points, raw)  # LoadPointsFromFile: every point, x y z r
        gt = sample['data_samples'].gt_instances_3d
        objects = [o for o in labels if o['name'] != 'DontCare']
        num_objects += len(objects)
        assert isinstance(gt.bboxes_3d, LiDARInstance3DBoxes)
        assert [KITTI_CLASSES[k] for k in gt.labels_3d.tolist()] == [o['name'] for o in objects]
        boxes = check_lidar_boxes(gt.bboxes_3d).double()

        # by hand: LiDAR bottom centre = (R0_rect Tr_velo_to_cam)^-1 [camera location; 1];
        # (l, w, h) from label_2's (h, w, l); yaw = -ry - pi/2 (mmdet3d 1.x's LiDAR convention)
        lidar_to_rect = calib['R0_rect'] @ calib['Tr_velo_to_cam']
        bottom = np.array([np.linalg.solve(lidar_to_rect, [*o['location'], 1.0])[:3] for o in objects])
        np.testing.assert_allclose(boxes[:, :3].numpy(), bottom.reshape(-1, 3), atol=2e-3)
        lwh = np.array([[o['hwl'][2], o['hwl'][1], o['hwl'][0]] for o in objects]).reshape(-1, 3)
        np.testing.assert_allclose(boxes[:, 3:6].numpy(), lwh, atol=1e-5)
        yaw = torch.tensor([-o['ry'] - math.pi / 2 for o in objects], dtype=torch.float64)
        assert (wrap_angle(boxes[:, 6] - yaw).abs() < 1e-4).all()
        # the box's centre (gravity centre) projects inside its labelled 2D box in image_2
        lidar2img = calib['P2'] @ lidar_to_rect
        np.testing.assert_allclose(np.array(cam2['lidar2img'])[:3], lidar2img, rtol=1e-4, atol=1e-3)
        uv = project(lidar2img, gt.bboxes_3d.gravity_center.double().numpy())
        box2d = np.array([o['bbox'] for o in objects]).reshape(-1, 4)
        assert ((uv >= box2d[:, :2] - 1) & (uv <= box2d[:, 2:] + 1)).all(), (uv, box2d)
        # the points: the converter counted those of the camera-FOV cloud inside each box
        # (num_lidar_pts); the same boxes over that cloud, by mmdet3d's points_in_rbbox, agree
        reduced = np.fromfile(kitti6['reduced'] / f'{i:06d}.bin', dtype=np.float32).reshape(-1, 4)
        assert 0 < len(reduced) < len(raw)
        in_fov = points_in_boxes(reduced, gt.bboxes_3d)
        counted = [inst['num_lidar_pts'] for inst in info['instances'] if inst['bbox_label_3d'] != -1]
        assert in_fov.tolist() == counted and (in_fov > 0).all()
        assert (points_in_boxes(raw, gt.bboxes_3d) >= in_fov).all()
        # every reduced point projects into image_2 (the FOV cut of mmdet3d's converter)
        front = reduced[reduced[:, 0] > 0.5]
        uv = project(lidar2img, front[:, :3].astype(np.float64))
        assert len(front) > 0.9 * len(reduced)
        assert ((uv > -1) & (uv < np.array(image.shape[1::-1]) + 1)).all()
    assert num_objects == 10  # the README's count of labelled objects that are not DontCare


def test_kitti_000008_demo_infos_load_with_kittidataset():
    """KITTI 000008 as mmdet3d's demo ships it: mmdet3d 1.x's own infos pkl through
    ``KittiDataset``; its 6 car boxes hold the points the pkl says and project into their 2D boxes."""
    need(KITTI8)
    pytest.importorskip('mmdet3d')
    import mmengine
    info = mmengine.load(KITTI8 / '000008.pkl')['data_list'][0]
    ds = build_dataset(dict(type='KittiDataset', data_root=str(KITTI8), ann_file='000008.pkl',
                            data_prefix=dict(pts='', img=''), modality=dict(use_lidar=True, use_camera=False),
                            box_type_3d='LiDAR', pipeline=kitti_gt_pipeline()))
    assert len(ds) == 1
    sample = ds[0]
    points = sample['inputs']['points'].numpy()
    raw = np.fromfile(KITTI8 / '000008.bin', dtype=np.float32).reshape(-1, 4)
    assert points.shape == (17238, 4)
    np.testing.assert_array_equal(points, raw)
    gt = sample['data_samples'].gt_instances_3d
    assert len(info['instances']) == 10  # the README's count: 6 cars and 4 DontCare (label -1)
    kept = [inst for inst in info['instances'] if inst['bbox_label_3d'] != -1]
    assert len(kept) == len(gt.bboxes_3d) == 6
    assert gt.labels_3d.tolist() == [inst['bbox_label_3d'] for inst in kept]
    assert {KITTI_CLASSES[k] for k in gt.labels_3d.tolist()} == {'Car'}
    check_lidar_boxes(gt.bboxes_3d, (0, -40, 70.4, 40))
    # the cloud is the camera-FOV cut the pkl's point counts were made on
    assert points_in_boxes(points, gt.bboxes_3d).tolist() == [inst['num_lidar_pts'] for inst in kept]
    lidar2img = np.array(info['images']['CAM2']['lidar2img'])
    uv = project(lidar2img, gt.bboxes_3d.gravity_center.double().numpy())
    box2d = np.array([inst['bbox'] for inst in kept])
    inside = (uv >= box2d[:, :2] - 1) & (uv <= box2d[:, 2:] + 1)
    truncated = np.array([inst['truncated'] for inst in kept])
    assert inside[truncated < 0.5].all()  # a box cut by the image edge may have its centre outside


# --------------------------------------------------------------- (b) our refinement on KITTI
@pytest.fixture(scope='module')
def kitti_runner(kitti6, tmp_path_factory):
    """``configs/pointpillars_hv_secfpn_ebm-nce_kitti-3d-car.py`` (random weights) through the
    mmengine Runner's test loop on the 6 frames (the config's own test pipeline on the converter's
    camera-FOV clouds), scored by ``KittiMetric`` and ``InitialPredictionMetric``; the outputs kept."""
    from mmengine.hooks import Hook
    from mmengine.runner import Runner
    cfg = kitti_config()
    cfg.model.detector.test_cfg.update(score_thr=0.0, max_num=30)  # a random detector's boxes all flow
    cfg.work_dir = str(tmp_path_factory.mktemp('kitti_runner'))
    cfg.experiment_name = uuid.uuid4().hex
    cfg.test_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.test_dataloader.dataset.update(data_root=str(KITTI6), ann_file=str(kitti6['ann']),
                                       data_prefix=dict(pts=str(kitti6['reduced'])))
    metric = dict(type='KittiMetric', ann_file=str(kitti6['ann']), metric='bbox')
    cfg.test_evaluator = [metric, dict(type='InitialPredictionMetric', metric=metric)]
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler', 'val_dataloader',
                'val_evaluator', 'val_cfg'):
        cfg[key] = None
    cfg.log_level = 'WARNING'

    class Keep(Hook):
        def __init__(self):
            self.outputs = []

        def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            self.outputs.extend(outputs)

    torch.manual_seed(0)
    runner = Runner.from_cfg(cfg)
    keep = Keep()
    runner.register_hook(keep)
    metrics = runner.test()
    return dict(metrics=metrics, outputs=keep.outputs, model=runner.model, cfg=cfg)


def test_refined_predictions_on_real_kitti_are_lidar_boxes_in_range(kitti_runner):
    """Every frame's prediction: refined boxes of the detector's type (LiDAR), finite, positive,
    yaw wrapped, in the point-cloud range, next to the detector's own box, f never lowered."""
    from ebm_det.core import wrap_angle
    outputs = kitti_runner['outputs']
    pcr = kitti_runner['cfg'].model.detector.data_preprocessor.voxel_layer.point_cloud_range
    assert sorted(o.metainfo['sample_idx'] for o in outputs) == list(range(6))
    refined = moved = 0
    for out in outputs:
        pred = out.pred_instances_3d
        assert {'bboxes_3d', 'bboxes_3d_init', 'scores_3d_init', 'ebm_scores', 'ebm_init_scores'} <= set(pred.keys())
        assert 0 < len(pred.bboxes_3d) <= 30
        t = check_lidar_boxes(pred.bboxes_3d, (pcr[0], pcr[1], pcr[3], pcr[4]))
        t0 = pred.bboxes_3d_init.tensor
        assert type(pred.bboxes_3d_init) is type(pred.bboxes_3d) and t0.shape == t.shape
        # the same objects: centres and sizes within half a metre, yaw compared wrapped
        assert (t[:, :6] - t0[:, :6]).abs().max() < 0.5
        assert (wrap_angle(t[:, 6] - t0[:, 6]).abs() < 0.5).all()
        ok = torch.isfinite(pred.ebm_scores)
        assert (pred.ebm_scores[ok] >= pred.ebm_init_scores[ok]).all() and torch.equal(t[~ok], t0[~ok])
        refined += int(ok.sum())
        moved += int(((t[:, :6] - t0[:, :6]).abs().amax(1) > 0).sum())
        assert torch.equal(pred.scores_3d, pred.scores_3d_init)  # no rescoring by default
    assert refined > 0 and moved > 0


def test_kitti_metric_runs_on_refined_and_initial_predictions(kitti_runner):
    metrics = kitti_runner['metrics']
    for kind in ('3D', 'BEV', '2D'):
        for prefix in ('Kitti metric', 'Kitti metric_init'):
            value = metrics[f'{prefix}/{AP.format(kind)}']
            assert 0.0 <= value <= 100.0
    assert len([k for k in metrics if k.startswith('Kitti metric/')]) == \
        len([k for k in metrics if k.startswith('Kitti metric_init/')]) > 0


def test_jittered_ground_truth_refined_on_real_kitti_stays_on_its_object(kitti6, tmp_path):
    """GT boxes of every class, jittered by the head's own training noise, refined on the real
    frames' BEV map through ``EBMRefineDetector3D.refine`` (the predict path): valid LiDAR boxes,
    f never lowered, still on the ground and around their object's points. ``KittiMetric`` scores
    them and the unjittered ground truth, and writes the latter back as the KITTI label lines of
    label_2 (our LiDAR boxes are KITTI's boxes)."""
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope
    from mmengine.structures import InstanceData
    from mmdet3d.registry import MODELS
    from ebm_det.core import RefineConfig, wrap_angle
    init_default_scope('mmdet3d')
    cfg = kitti_config()
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    model.ebm_head.init_weights()
    torch.nn.init.normal_(model.ebm_head.fc_score.weight, std=0.3)  # a non-flat f, so that boxes move
    pcr = cfg.model.detector.data_preprocessor.voxel_layer.point_cloud_range
    ds = build_dataset(dict(type='KittiDataset', data_root=str(KITTI6), ann_file=str(kitti6['ann']),
                            data_prefix=dict(pts=str(kitti6['reduced'])), box_type_3d='LiDAR',
                            modality=dict(use_lidar=True, use_camera=False),
                            pipeline=kitti_gt_pipeline([dict(type='PointsRangeFilter', point_cloud_range=pcr),
                                                        dict(type='ObjectRangeFilter', point_cloud_range=pcr)])))
    batch = model.data_preprocessor(pseudo_collate([ds[i] for i in range(len(ds))]), False)
    with torch.no_grad():
        feats = model.extract_feat(batch['inputs'])
    g = torch.Generator().manual_seed(0)
    results, gts = [], []
    for sample in batch['data_samples']:
        gt = sample.gt_instances_3d
        gts.append(gt)
        boxes = gt.bboxes_3d.tensor
        jittered = model.ebm_head.space.project(model.ebm_head.noise.sample(boxes, 1, generator=g)[:, 0])
        res = sample.clone()
        res.pred_instances_3d = InstanceData(bboxes_3d=type(gt.bboxes_3d)(jittered), labels_3d=gt.labels_3d.clone(),
                                             scores_3d=torch.ones(len(boxes)))
        results.append(res)
    assert sum(len(g_.bboxes_3d) for g_ in gts) >= 6
    model.refine(feats, results, RefineConfig(num_steps=10, step_sizes=0.02))
    points = [p.numpy() for p in batch['inputs']['points']]
    moved = 0
    for res, gt, pts in zip(results, gts, points):
        pred = res.pred_instances_3d
        t = check_lidar_boxes(pred.bboxes_3d, (pcr[0], pcr[1], pcr[3], pcr[4]))
        t0 = pred.bboxes_3d_init.tensor
        ok = torch.isfinite(pred.ebm_scores)  # refined and written back; the others come back as given
        assert ok.any() and (pred.ebm_scores[ok] >= pred.ebm_init_scores[ok]).all() and torch.equal(t[~ok], t0[~ok])
        step = (t - t0).abs()
        moved += int((step[:, :6].amax(1) > 1e-3).sum())
        assert step[:, :6].max() < 1.0  # at most 10 accepted steps of 0.02 x the gradient
        assert (wrap_angle(t[:, 6] - t0[:, 6]).abs() < 0.5).all()
        # still on the ground and around the object: z near the labelled bottom, points inside
        assert ((t[:, 2] - gt.bboxes_3d.tensor[:, 2]).abs() < 0.6).all()
        had = points_in_boxes(pts, gt.bboxes_3d)
        has = points_in_boxes(pts, pred.bboxes_3d)
        assert (has[had >= 20] > 0).all()
    assert moved > 0
    # KittiMetric (Car) on the ground truth itself and on the refined boxes
    car = KITTI_CLASSES.index('Car')
    as_gt, refined = [], []
    for res, gt in zip(results, gts):
        is_car = gt.labels_3d == car
        zeros = torch.zeros(int(is_car.sum()), dtype=torch.long)
        as_gt.append(prediction_sample(res.metainfo['sample_idx'], gt.bboxes_3d[is_car], zeros))
        refined.append(prediction_sample(res.metainfo['sample_idx'], res.pred_instances_3d.bboxes_3d[is_car], zeros))
    perfect = kitti_metric(kitti6['ann'], as_gt, submission_prefix=tmp_path / 'kitti_labels')
    scored = kitti_metric(kitti6['ann'], refined)
    # KittiMetric writes our LiDAR boxes back as KITTI label lines: they are label_2's cars (camera
    # location, h w l, rotation_y; the 2D box is the projected 3D box clipped to the image)
    for i in range(6):
        written = read_label(tmp_path / 'kitti_labels' / 'pred_instances_3d' / f'{i:06d}.txt')
        cars = [o for o in read_label(KITTI6 / 'training' / 'label_2' / f'{i:06d}.txt') if o['name'] == 'Car']
        in_range = [o for o in cars if o['location'][2] < pcr[3]]  # ObjectRangeFilter: x < 69.12 m
        assert len(written) == len(in_range) and all(o['name'] == 'Car' for o in written)
        for w, o in zip(written, in_range):
            np.testing.assert_allclose(w['location'], o['location'], atol=2e-3)
            np.testing.assert_allclose(w['hwl'], o['hwl'], atol=1e-3)
            assert abs(float(wrap_angle(torch.tensor(w['ry'] - o['ry'])))) < 1e-3
        if written:
            assert (iou_2d(np.array([w['bbox'] for w in written]), np.array([o['bbox'] for o in in_range])) > 0.6).all()
    # The ground truth scores the most KittiMetric gives here, alike in 3D and BEV; with 3 cars of
    # "moderate" difficulty that is 5.0, not 100: KITTI's evaluation takes at most one score
    # threshold per true positive (get_thresholds) and AP40 skips the first, so 3 ground-truth
    # boxes fill 2 of its 40 recall points
    for kind in ('3D', 'BEV', '2D'):
        assert 0.0 <= scored[AP.format(kind)] <= perfect[AP.format(kind)]
    assert perfect[AP.format('3D')] == perfect[AP.format('BEV')] == pytest.approx(100.0 * 2 / 40)


def test_kitti_000008_through_mmdet3d_inference_detector():
    """mmdet3d's own demo path (``init_model`` + ``inference_detector`` on the .bin) with the real-KITTI
    EBM config: refined LiDAR boxes, valid and in range, next to the detector's."""
    need(KITTI8)
    pytest.importorskip('mmdet3d')
    from mmdet3d.apis import inference_detector, init_model
    from ebm_det.core import wrap_angle
    cfg = kitti_config()
    cfg.model.detector.test_cfg.update(score_thr=0.0, max_num=20)
    torch.manual_seed(0)
    model = init_model(cfg, device='cpu')
    assert type(model).__name__ == 'EBMRefineDetector3D'
    result, _ = inference_detector(model, str(KITTI8 / '000008.bin'))
    pred = result.pred_instances_3d
    pcr = cfg.model.detector.data_preprocessor.voxel_layer.point_cloud_range
    t = check_lidar_boxes(pred.bboxes_3d, (pcr[0], pcr[1], pcr[3], pcr[4]))
    assert 0 < len(t) <= 20
    t0 = pred.bboxes_3d_init.tensor
    assert (t[:, :6] - t0[:, :6]).abs().max() < 0.5 and (wrap_angle(t[:, 6] - t0[:, 6]).abs() < 0.5).all()
    ok = torch.isfinite(pred.ebm_scores)
    assert ok.any() and (pred.ebm_scores[ok] >= pred.ebm_init_scores[ok]).all()


# ------------------------------------------------------------------------------- (c) nuScenes
def test_nuscenes_sample_boxes_refined_on_a_pillar_bev_map():
    """The nuScenes sample through ``NuScenesDataset`` (the demo's infos pkl): the sweep's points
    and its 9-D LiDAR boxes (x, y, z, l, w, h, yaw, vx, vy), which hold about the points the pkl
    counted; then the boxes refined by an ``EBMBoxHead3D`` (10 classes) on a BEV map that a
    random pillar encoder (mmdet3d's PillarFeatureNet + PointPillarsScatter) makes of the sweep:
    finite, valid, yaw wrapped, velocity untouched, f never lowered."""
    need(NUSC)
    pytest.importorskip('mmdet3d')
    import mmengine
    from mmcv.ops import Voxelization
    from mmengine.structures import InstanceData
    from mmdet3d.registry import MODELS
    from ebm_det.core import RefineConfig
    from ebm_det.models import EBMBoxHead3D
    from ebm_det.models.refine_detector import refine_instances
    pkl = next(NUSC.glob('*.pkl'))
    infos = mmengine.load(pkl)
    assert len(infos['data_list'][0]['instances']) == 69
    cams = ('CAM_FRONT', 'CAM_FRONT_LEFT', 'CAM_FRONT_RIGHT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_BACK_RIGHT')
    ds = build_dataset(dict(
        type='NuScenesDataset', data_root=str(NUSC), ann_file=pkl.name,
        data_prefix=dict(pts='', **{c: '' for c in cams}), modality=dict(use_lidar=True, use_camera=False),
        box_type_3d='LiDAR',
        pipeline=[dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=5, use_dim=5),
                  dict(type='LoadAnnotations3D', with_bbox_3d=True, with_label_3d=True),
                  dict(type='Pack3DDetInputs', keys=['points', 'gt_bboxes_3d', 'gt_labels_3d'])]))
    sample = ds[0]
    points = sample['inputs']['points']
    assert points.shape == (34688, 5)
    gt = sample['data_samples'].gt_instances_3d
    # NuScenesDataset keeps the boxes with LiDAR points (use_valid_flag=False); -1: not one of the 10 classes
    counted = np.array([inst['num_lidar_pts'] for inst in infos['data_list'][0]['instances']])
    assert gt.bboxes_3d.box_dim == 9 and len(gt.bboxes_3d) == int((counted > 0).sum())
    boxes = check_lidar_boxes(gt.bboxes_3d)
    inside = points_in_boxes(points.numpy(), gt.bboxes_3d)
    n = counted[counted > 0]
    assert np.corrcoef(inside, n)[0, 1] > 0.99  # the boxes sit on the points nuScenes counted
    assert (np.abs(inside - n) <= np.maximum(3, 0.1 * n)).mean() > 0.95
    # a pillar BEV map over the nuScenes range: 0.4 m pillars, 256 x 256 cells
    pcr = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]
    voxel = [0.4, 0.4, 8.0]
    torch.manual_seed(0)
    voxels, coors, num_points = Voxelization(voxel, pcr, max_num_points=20, max_voxels=30000)(points)
    coors = torch.cat([coors.new_zeros(len(coors), 1), coors], 1)  # batch index, z, y, x
    encoder = MODELS.build(dict(type='PillarFeatureNet', in_channels=5, feat_channels=[16], with_distance=False,
                                voxel_size=voxel, point_cloud_range=pcr)).eval()
    scatter = MODELS.build(dict(type='PointPillarsScatter', in_channels=16, output_shape=[256, 256]))
    with torch.no_grad():
        bev = scatter(encoder(voxels, num_points, coors), coors, 1)
    assert bev.shape == (1, 16, 256, 256) and (bev.abs().sum(1) > 0).float().mean() > 0.02
    head = EBMBoxHead3D(in_channels=16, bev_range=[pcr[0], pcr[1], pcr[3], pcr[4]], fc_channels=64, zh_channels=8,
                        num_classes=10, loss=dict(type='NCELoss', num_samples=8))
    head.init_weights()
    torch.nn.init.normal_(head.fc_score.weight, std=0.3)
    keep = gt.labels_3d >= 0
    pred = InstanceData(bboxes_3d=gt.bboxes_3d[keep], labels_3d=gt.labels_3d[keep],
                        scores_3d=torch.linspace(1.0, 0.5, int(keep.sum())))
    refine_instances(head, [bev], [pred], [{}], RefineConfig(num_steps=10, step_sizes=0.02))
    t = check_lidar_boxes(pred.bboxes_3d)
    t0 = pred.bboxes_3d_init.tensor
    assert pred.bboxes_3d.box_dim == 9 and t.shape == t0.shape == (int(keep.sum()), 9)
    assert torch.equal(t[:, 7:], t0[:, 7:])  # velocities pass through
    ok = torch.isfinite(pred.ebm_scores)  # refined and written back; the others come back as given
    assert ok.float().mean() > 0.5 and (pred.ebm_scores[ok] >= pred.ebm_init_scores[ok]).all()
    assert torch.equal(t[~ok], t0[~ok])
    step = (t[:, :6] - t0[:, :6]).abs().amax(1)
    assert (step > 1e-3).any() and step.max() < 1.0
    assert torch.equal(boxes[keep], t0)
    # still around their objects: a box that held >= 20 of the sweep's points holds some after
    had = points_in_boxes(points.numpy(), pred.bboxes_3d_init)
    assert (had >= 20).sum() >= 5 and (points_in_boxes(points.numpy(), pred.bboxes_3d)[had >= 20] > 0).all()


# ---------------------------------------------------------------------------------- (d) video
def test_street_video_through_bytetrack_ebm_config_writes_motchallenge_tracks(tmp_path):
    """The 8 real 1920 x 1080 frames through ``configs/bytetrack_ebm_shapes-video.py`` (random
    weights, thresholds at 0 so that boxes flow) with ``tools/track_video.py``: detections and
    track boxes refined, a MOTChallenge file whose every line is frame,id,x,y,w,h,score,-1,-1,-1
    with boxes in the video's pixels, read back by motmetrics' own MOT parser."""
    need(VIDEO)
    pytest.importorskip('mmdet')
    import mmcv
    from tools import track_video as tool
    reader = mmcv.VideoReader(str(VIDEO))
    assert (len(reader), reader.width, reader.height) == (8, 1920, 1080)
    options = {
        # an untrained detector scores near 1 / (classes + 1): every box through, so tracks exist
        'model.detector.detector.test_cfg.rcnn.score_thr': 0.0,
        'model.detector.detector.test_cfg.rcnn.max_per_img': 12,
        'model.detector.test_cfg.max_per_img': 12,
        'model.tracker.init_track_thr': 0.0,
        'model.tracker.obj_score_thrs': dict(high=0.1, low=0.0),
    }
    torch.manual_seed(0)
    model = tool.load_model(MOT_CONFIG, cfg_options=options)
    assert type(model).__name__ == 'EBMByteTrack' and type(model.tracker).__name__ == 'EBMByteTracker'
    seen = dict(frames=0, dets=0, det_moved=0, track_moved=0)
    detect, refine_ids = model.detector.detect, model.tracker._refine_ids

    def spy_detect(*args, **kwargs):
        results, feats = detect(*args, **kwargs)
        p = results[0].pred_instances
        seen['frames'] += 1
        seen['dets'] += len(p)
        seen['det_moved'] += int((p.bboxes - p.bboxes_init).abs().sum(-1).gt(0).sum())
        return results, feats

    def spy_refine(ids, boxes):
        refine_ids(ids, boxes)
        if ids:
            r = model.tracker.last_refinement
            seen['track_moved'] += int((r['boxes'] - r['boxes_in']).abs().sum(-1).gt(0).sum())

    model.detector.detect, model.tracker._refine_ids = spy_detect, spy_refine
    out = tmp_path / 'street_8frames.txt'
    rows = tool.track_video(model, VIDEO, out)
    assert seen['frames'] == 8 and seen['dets'] > 0 and seen['det_moved'] > 0 and seen['track_moved'] > 0
    lines = out.read_text().splitlines()
    assert len(lines) == len(rows) > 0
    for line in lines:
        fields = line.split(',')
        assert len(fields) == 10 and fields[7:] == ['-1', '-1', '-1']
        frame, tid = int(fields[0]), int(fields[1])  # integers, as written
        x, y, w, h, score = (float(v) for v in fields[2:7])
        assert 1 <= frame <= 8 and tid >= 0
        assert w > 0 and h > 0 and 0 <= score <= 1
        # in the video's pixels (the pipeline resized to 256 px; boxes come back rescaled)
        assert -0.01 <= x and x + w <= 1920.01 and -0.01 <= y and y + h <= 1080.01
    table = np.array([[float(v) for v in line.split(',')] for line in lines])
    for f in np.unique(table[:, 0]):  # one box per track and frame
        ids = table[table[:, 0] == f, 1]
        assert len(ids) == len(np.unique(ids))
    assert table[:, 2:6].max() > 256  # really rescaled, not network-input pixels
    assert len(np.unique(table[:, 0])) >= 2  # tracks live on several frames
    mm = pytest.importorskip('motmetrics')
    parsed = mm.io.loadtxt(str(out), fmt='mot15-2D')
    assert len(parsed) == len(lines)
    assert sorted(parsed.index.get_level_values('FrameId').unique().tolist()) == \
        sorted(int(f) for f in np.unique(table[:, 0]))
    # motmetrics takes the file's x, y as MATLAB's 1-based pixels and subtracts 1
    parsed = parsed.reset_index().sort_values(['FrameId', 'Id'])
    table = table[np.lexsort((table[:, 1], table[:, 0]))]
    np.testing.assert_array_equal(parsed[['FrameId', 'Id']].to_numpy(), table[:, :2])
    np.testing.assert_allclose(parsed[['X', 'Y']].to_numpy() + 1, table[:, 2:4], atol=1e-3)
    np.testing.assert_allclose(parsed[['Width', 'Height', 'Confidence']].to_numpy(), table[:, 4:7], atol=1e-3)
