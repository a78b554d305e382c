"""The mmdet3d layer: EBMBoxHead3D, EBMRefineDetector3D through the mmengine Runner on generated
KITTI-format scenes (ebm_det.synthetic.kitti_scenes), and the CPU-scale 3D configs."""
import math
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import ROOT, count_forwards_and_steps, run_config

pytest.importorskip('mmdet3d')
import ebm_det  # noqa: E402,F401
from ebm_det.core import RefineConfig, wrap_angle  # noqa: E402
from ebm_det.models import EBMBoxHead3D  # noqa: E402

BEV_RANGE = (0.0, -20.0, 40.0, 20.0)
AP_KEY = 'pred_instances_3d/KITTI/Car_{}_AP40_moderate_strict'


def _head(method='NCELoss', num_samples=8, **kw):
    torch.manual_seed(0)
    head = EBMBoxHead3D(in_channels=8, bev_range=BEV_RANGE, fc_channels=32, zh_channels=8,
                        loss=dict(type=method, num_samples=num_samples), **kw)
    head.init_weights()
    return head


def _bev(batch=2, channels=8, size=40):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, channels, size, size, generator=g)


def _boxes():
    # (x, y, z, l, w, h, yaw) LiDAR boxes, one with yaw just below pi
    return torch.tensor([[10.0, 2.0, -1.7, 4.0, 1.7, 1.5, 0.3],
                         [25.0, -8.0, -1.6, 4.4, 1.8, 1.6, math.pi - 0.01],
                         [18.0, 5.0, -1.7, 3.8, 1.6, 1.5, -2.0]])


GT_LABELS = [torch.tensor([0, 0]), torch.tensor([0])]


# ---------------------------------------------------------------------------------------------
# (a) losses
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('method', ['NCELoss', 'NCEPlusLoss'])
@pytest.mark.parametrize('normalized', [False, True])
def test_head_loss_finite_and_trains(method, normalized):
    head = _head(method, normalized_space=normalized, reduced_channels=4)
    boxes = _boxes()
    loss = head.loss([_bev()], [boxes[:2], boxes[2:]], GT_LABELS)['loss_ebm']
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for module in (head.fcs, head.fc_score, head.reduce, head.z_mlp, head.h_mlp):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0
    # a few Adam steps lower the loss on the same batch (the head can fit)
    opt = torch.optim.Adam(head.parameters(), 1e-3)
    torch.manual_seed(1)
    first = head.loss([_bev()], [boxes[:2], boxes[2:]], GT_LABELS)['loss_ebm'].item()
    for _ in range(15):
        opt.zero_grad()
        head.loss([_bev()], [boxes[:2], boxes[2:]], GT_LABELS)['loss_ebm'].backward()
        opt.step()
    torch.manual_seed(1)
    assert head.loss([_bev()], [boxes[:2], boxes[2:]], GT_LABELS)['loss_ebm'].item() < first


def test_head_loss_without_gt_is_zero_and_reaches_parameters():
    head = _head(reduced_channels=4)
    loss = head.loss([_bev()], [torch.zeros(0, 7), torch.zeros(0, 7)],
                     [torch.zeros(0, dtype=torch.long)] * 2)['loss_ebm']
    assert loss.item() == 0.0
    loss.backward()
    assert head.fc_score.weight.grad is not None


# ---------------------------------------------------------------------------------------------
# (b) refinement
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('normalized', [False, True])
def test_head_refine_monotone_wrapped_positive(normalized):
    head = _head(normalized_space=normalized)
    boxes = _boxes()
    boxes[2, 3:6] = 0.06  # a tiny box: big steps must not make sizes negative
    step = 0.05 if not normalized else 0.02
    with torch.no_grad():
        res = head.refine([_bev()], boxes, torch.tensor([0, 0, 1]), torch.zeros(3, dtype=torch.long),
                          RefineConfig(step_sizes=step, num_steps=10))
    assert res.boxes.shape == (3, 7) and res.steps == 10
    assert (res.scores >= res.init_scores).all() and (res.scores > res.init_scores).any()
    assert ((res.boxes[:, 6] >= -math.pi) & (res.boxes[:, 6] < math.pi)).all()
    assert (res.boxes[:, 3:6] > 0).all()
    # no box jumps: every coordinate moved by at most num_steps proposals, yaw compared wrapped
    assert (wrap_angle(res.boxes[:, 6] - boxes[:, 6]).abs() < 1.0).all()
    assert (res.boxes[:, :3] - boxes[:, :3]).abs().max() < 5.0
    assert all(p.grad is None for p in head.parameters())


def test_head_refine_crosses_the_yaw_wrap_smoothly():
    """A score peaked at yaw = -pi + 0.05 pulls a box at yaw = pi - 0.05 across the wrap."""
    head = _head()
    target = -math.pi + 0.05
    learned = head.score

    def score(bev, b, idx, labels):
        return 1e-3 * learned(bev, b, idx, labels) - 10.0 * wrap_angle(b[:, 6] - target)**2

    head.score = score
    boxes = _boxes()[1:2].clone()
    boxes[0, 6] = math.pi - 0.05
    path = []
    for steps in range(1, 9):
        with torch.no_grad():
            res = head.refine([_bev()], boxes, torch.tensor([0]), torch.tensor([0]),
                              RefineConfig(step_sizes=2e-2, num_steps=steps))
        path.append(res.boxes[0, 6].item())
    # crossed: now on the negative side, next to the target, and every step was small
    assert path[-1] < 0 and abs(path[-1] - target) < 0.02
    yaws = torch.tensor([boxes[0, 6].item()] + path)
    assert (wrap_angle(yaws[1:] - yaws[:-1]).abs() < 0.1).all()
    assert ((yaws >= -math.pi) & (yaws < math.pi)).all()
    assert torch.allclose(res.boxes[0, :6], boxes[0, :6], atol=1e-2)


def test_head_refine_empty():
    head = _head()
    res = head.refine([_bev()], torch.zeros(0, 7), torch.zeros(0, dtype=torch.long),
                      torch.zeros(0, dtype=torch.long))
    assert res.boxes.shape == (0, 7) and res.scores.shape == (0, )


def test_bev_map_of_the_cpu_configs_covers_the_point_cloud_range():
    """The EBM's bev_range must be the metres its BEV map covers: the SECONDFPN map of the
    CPU-scale PointPillars is at half the pillar grid's resolution and spans the whole range."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet3d.registry import MODELS
    init_default_scope('mmdet3d')
    cfg = Config.fromfile(str(ROOT / 'configs' / 'pointpillars_ebm-nce_kitti-gen_car.py'))
    model = MODELS.build(cfg.model).eval()
    det = cfg.model.detector
    pcr = det.data_preprocessor.voxel_layer.point_cloud_range
    vx, vy = det.data_preprocessor.voxel_layer.voxel_size[:2]
    ny, nx = det.middle_encoder.output_shape
    assert (nx * vx, ny * vy) == pytest.approx((pcr[3] - pcr[0], pcr[4] - pcr[1]))  # pillar grid
    assert list(cfg.model.ebm_head.bev_range) == [pcr[0], pcr[1], pcr[3], pcr[4]]
    pts = torch.rand(500, 4) * torch.tensor([40.0, 40.0, 3.0, 1.0]) + torch.tensor([0.0, -20.0, -2.5, 0.0])
    data = model.data_preprocessor(dict(inputs=dict(points=[pts]), data_samples=None), False)
    with torch.no_grad():
        bev = model.ebm_head.prepare_features(model.extract_feat(data['inputs']))
    assert bev.shape[1] == cfg.model.ebm_head.reduced_channels
    assert tuple(bev.shape[-2:]) == (ny // 2, nx // 2)  # (y, x): 0.5 m cells over the 40 m range
    assert cfg.model.ebm_head.in_channels == sum(det.neck.out_channels)


# ---------------------------------------------------------------------------------------------
# (c) Runner: detector -> frozen detector + EBM -> test before / after
# ---------------------------------------------------------------------------------------------
def _tiny_config(tmp: Path, base: str, data_root: str, max_iters: int = 2, extra: str = '') -> Path:
    ann = f'{data_root}/kitti_infos_val.pkl'
    metric = f"dict(type='KittiMetric', ann_file='{ann}', metric='bbox')"
    evaluator = f"[{metric}, dict(type='InitialPredictionMetric', metric={metric})]" if 'ebm' in base else metric
    text = f"""
    _base_ = ['{ROOT}/configs/{base}']
    train_dataloader = dict(dataset=dict(data_root='{data_root}/'))
    test_dataloader = dict(dataset=dict(data_root='{data_root}/'))
    test_evaluator = {evaluator}
    # no validation after training (IterBasedTrainLoop validates at the last iteration)
    val_dataloader = None
    val_evaluator = None
    val_cfg = None
    train_cfg = dict(max_iters={max_iters})
    param_scheduler = [dict(type='ConstantLR', factor=1.0, begin=0, end={max_iters}, by_epoch=False)]
    default_hooks = dict(checkpoint=dict(interval={max_iters}), logger=dict(interval=1))
    """
    path = tmp / f'tiny_{Path(base).stem}.py'
    path.write_text(textwrap.dedent(text) + textwrap.dedent(extra))
    return path


@pytest.fixture(scope='module')
def trained3d(tmp_path_factory):
    """4 train + 10 val generated frames; a PointPillars trained 2 iterations, then an EBM head
    trained 2 iterations on it (detector_checkpoint)."""
    tmp = tmp_path_factory.mktemp('runner3d')
    from ebm_det.synthetic import kitti_scenes as gen
    root = gen.generate(str(tmp / 'kitti_gen'), num_train=4, num_val=10, seed=0)['root']
    det_cfg = _tiny_config(tmp, 'pointpillars_kitti-gen_car.py', root)
    run_config(det_cfg, tmp / 'det')
    det_ckpt = (tmp / 'det' / 'last_checkpoint').read_text().strip()
    # score_thr 0: the 2-iteration detector's boxes all reach the EBM (else nothing to refine)
    ebm_cfg = _tiny_config(tmp, 'pointpillars_ebm-nce_kitti-gen_car.py', root, extra=f"""
        model = dict(detector_checkpoint='{det_ckpt}', detector=dict(test_cfg=dict(score_thr=0.0, max_num=20)),
                     ebm_head=dict(loss=dict(type='NCELoss', num_samples=16)))
        """)
    run_config(ebm_cfg, tmp / 'ebm')
    return dict(tmp=tmp, root=root, det_ckpt=det_ckpt, ebm_cfg=ebm_cfg,
                ebm_ckpt=(tmp / 'ebm' / 'last_checkpoint').read_text().strip())


def test_runner_trains_frozen_detector_and_reports_before_after(trained3d):
    state = torch.load(trained3d['ebm_ckpt'], map_location='cpu', weights_only=True)['state_dict']
    det_state = torch.load(trained3d['det_ckpt'], map_location='cpu', weights_only=True)['state_dict']
    assert det_state and any(k.startswith('ebm_head.') for k in state)
    for k, v in det_state.items():  # the frozen detector is exactly the loaded one (BN stats too)
        assert torch.equal(state['detector.' + k], v), k
    metrics = run_config(trained3d['ebm_cfg'], trained3d['tmp'] / 'test', trained3d['ebm_ckpt'], test=True)
    for kind in ('3D', 'BEV', '2D'):
        assert f'Kitti metric/{AP_KEY.format(kind)}' in metrics
        assert f'Kitti metric_init/{AP_KEY.format(kind)}' in metrics
    assert len([k for k in metrics if k.startswith('Kitti metric_init/')]) == \
        len([k for k in metrics if k.startswith('Kitti metric/')])
    # refinement off: both reports score the same boxes
    same = run_config(trained3d['ebm_cfg'], trained3d['tmp'] / 'test_off', trained3d['ebm_ckpt'], test=True,
                **{'model.test_cfg.enabled': False})
    for key, value in same.items():
        if key.startswith('Kitti metric/'):
            assert same[key.replace('Kitti metric/', 'Kitti metric_init/')] == value, key
    assert same[f'Kitti metric_init/{AP_KEY.format("3D")}'] == metrics[f'Kitti metric_init/{AP_KEY.format("3D")}']


def test_mmdet3d_entry_points_on_the_ebm_config(trained3d):
    """mmdet3d's own ``init_model`` + ``inference_detector`` on the CPU 3D EBM config and checkpoint."""
    from mmdet3d.apis import inference_detector, init_model
    model = init_model(str(trained3d['ebm_cfg']), trained3d['ebm_ckpt'], device='cpu')
    assert type(model).__name__ == 'EBMRefineDetector3D'
    state = torch.load(trained3d['ebm_ckpt'], map_location='cpu', weights_only=True)['state_dict']
    assert torch.equal(model.ebm_head.fc_score.weight, state['ebm_head.fc_score.weight'])
    model.detector.test_cfg.update(score_thr=0.0, max_num=20)
    cloud = str(Path(trained3d['root']) / 'training' / 'velodyne' / '000004.bin')
    result, _ = inference_detector(model, cloud)
    pred = result.pred_instances_3d
    assert {'bboxes_3d', 'bboxes_3d_init', 'scores_3d_init', 'ebm_scores'} <= set(pred.keys())
    _check(pred, refined_any=True)


# ---------------------------------------------------------------------------------------------
# (d) predict on awkward frames
# ---------------------------------------------------------------------------------------------
def _model(trained3d, **test_cfg):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet3d.registry import MODELS
    init_default_scope('mmdet3d')
    cfg = Config.fromfile(str(trained3d['ebm_cfg']))
    cfg.model.detector.test_cfg.update(test_cfg)
    model = MODELS.build(cfg.model)
    state = torch.load(trained3d['ebm_ckpt'], map_location='cpu', weights_only=True)['state_dict']
    model.load_state_dict(state)
    return model.eval()


def _batch(clouds):
    from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
    samples = [Det3DDataSample(metainfo=dict(box_type_3d=LiDARInstance3DBoxes, sample_idx=i))
               for i in range(len(clouds))]
    return dict(inputs=dict(points=clouds), data_samples=samples)


def _cloud(trained3d, frame=4):
    import numpy as np
    path = Path(trained3d['root']) / 'training' / 'velodyne' / f'{frame:06d}.bin'
    pts = torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(-1, 4))
    keep = (pts[:, 0] > 0) & (pts[:, 0] < 40) & (pts[:, 1].abs() < 20) & (pts[:, 2] > -3) & (pts[:, 2] < 1)
    return pts[keep]


def _check(pred, refined_any=None):
    init, boxes = pred.bboxes_3d_init, pred.bboxes_3d
    assert type(init) is type(boxes) and init.tensor.shape == boxes.tensor.shape
    assert pred.ebm_scores.shape == pred.scores_3d.shape
    t = boxes.tensor
    assert torch.isfinite(t).all() and (t[:, 3:6] > 0).all()
    assert ((t[:, 6] >= -math.pi) & (t[:, 6] < math.pi)).all()
    if refined_any is not None:
        assert bool(torch.isfinite(pred.ebm_scores).any()) == refined_any


def test_predict_empty_cloud_and_no_detections(trained3d):
    """An empty point cloud in a batch, and frames without any detection.

    The empty frame comes first: mmdet3d's PointPillarsScatter takes the batch size from the last
    pillar's frame index, so an empty *last* frame fails inside mmdet3d, before the wrapper."""
    model = _model(trained3d, score_thr=0.0, max_num=20)
    cloud = _cloud(trained3d)
    with torch.no_grad():
        out = model.test_step(_batch([cloud[:0], cloud]))
    assert len(out) == 2
    _check(out[0].pred_instances_3d)
    _check(out[1].pred_instances_3d, refined_any=True)
    # no detections in any frame: nothing to refine, empty fields of the right type
    model = _model(trained3d, score_thr=1.1)
    with torch.no_grad():
        out = model.test_step(_batch([cloud[:0], cloud]))
    for sample in out:
        pred = sample.pred_instances_3d
        assert len(pred.bboxes_3d) == 0 and pred.bboxes_3d.tensor.shape[1] == 7
        _check(pred, refined_any=False)


# ---------------------------------------------------------------------------------------------
# (e) training throughput: K head updates per frozen-detector forward
# ---------------------------------------------------------------------------------------------
def _ebm_cfg_3d(**model):
    from mmengine.config import Config
    cfg = Config.fromfile(str(ROOT / 'configs' / 'pointpillars_ebm-nce_kitti-gen_car.py'))
    cfg.model.ebm_head.loss = dict(type='NCELoss', num_samples=8)
    cfg.model.update(model)
    return cfg


def _build_3d(model_cfg):
    from mmengine.registry import init_default_scope
    from mmdet3d.registry import MODELS
    init_default_scope('mmdet3d')
    return MODELS.build(model_cfg)


def test_head_updates_take_k_steps_on_one_detector_forward_3d():
    """The 3D wrapper inherits ``train_step``: the voxelised batch (``data['inputs']`` a dict) goes once
    through the frozen detector's ``extract_feat``, then the head takes K optimiser steps."""
    from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
    from mmengine.optim import OptimWrapper
    from mmengine.structures import InstanceData
    torch.manual_seed(0)
    model = _build_3d(_ebm_cfg_3d(head_updates=3).model)
    model.init_weights()
    model.train()
    optim = OptimWrapper(torch.optim.SGD(model.ebm_head.parameters(), lr=0.1))

    def check_inputs(batch_inputs):  # the 3D preprocessor's output: a dict with the voxels
        assert isinstance(batch_inputs, dict) and 'voxels' in batch_inputs

    calls = count_forwards_and_steps(model, optim, check_inputs)
    g = torch.Generator().manual_seed(0)
    points = [torch.rand(2000, 4, generator=g) * torch.tensor([40.0, 40.0, 3.0, 1.0]) +
              torch.tensor([0.0, -20.0, -2.5, 0.0]) for _ in range(2)]
    samples = []
    for boxes in (_boxes()[:2], _boxes()[2:]):
        sample = Det3DDataSample(metainfo=dict(box_type_3d=LiDARInstance3DBoxes))
        sample.gt_instances_3d = InstanceData(bboxes_3d=LiDARInstance3DBoxes(boxes),
                                              labels_3d=torch.zeros(len(boxes), dtype=torch.long))
        samples.append(sample)
    head_before = model.ebm_head.fc_score.weight.detach().clone()
    det_before = {k: v.clone() for k, v in model.detector.state_dict().items()}
    log = model.train_step(dict(inputs=dict(points=points), data_samples=samples), optim)
    assert calls == dict(extract=1, steps=3) and 'loss_ebm' in log
    assert not torch.equal(head_before, model.ebm_head.fc_score.weight)
    for k, v in model.detector.state_dict().items():  # frozen: weights and BN statistics unchanged
        assert torch.equal(v, det_before[k]), k
    assert all(p.grad is None for p in model.detector.parameters())


def test_feature_cache_is_refused_by_the_3d_wrapper():
    """The feature cache keys features by image tensors; a 3D batch is a dict, so it is refused when built."""
    with pytest.raises(ValueError, match='feature_cache'):
        _build_3d(_ebm_cfg_3d(feature_cache=8).model)
    assert _build_3d(_ebm_cfg_3d(head_updates=2).model).feature_cache is None


# ---------------------------------------------------------------------------------------------
# (f) the MVX family (CenterPoint): point branch named pts_*, extract_feat with the metainfo
# ---------------------------------------------------------------------------------------------
def _centerpoint_wrapper(**wrapper):
    """A tiny pillar CenterPoint (nuScenes-style 9-D boxes with velocities, two tasks, three classes)
    in an ``EBMRefineDetector3D``."""
    from mmengine.config import ConfigDict
    pcr, vs = [0.0, -20.0, -3.0, 40.0, 20.0, 1.0], [0.5, 0.5, 4.0]
    bn1, bn2 = dict(type='BN1d', eps=1e-3, momentum=0.01), dict(type='BN', eps=1e-3, momentum=0.01)
    centre_range = [-10, -30, -10, 50, 30, 10]
    centerpoint = dict(
        type='CenterPoint',
        data_preprocessor=dict(type='Det3DDataPreprocessor', voxel=True,
                               voxel_layer=dict(max_num_points=16, voxel_size=vs, point_cloud_range=pcr,
                                                max_voxels=(4000, 4000))),
        pts_voxel_encoder=dict(type='PillarFeatureNet', in_channels=4, feat_channels=[16], with_distance=False,
                               voxel_size=vs, point_cloud_range=pcr, norm_cfg=bn1, legacy=False),
        pts_middle_encoder=dict(type='PointPillarsScatter', in_channels=16, output_shape=(80, 80)),
        pts_backbone=dict(type='SECOND', in_channels=16, out_channels=[16, 32], layer_nums=[1, 1],
                          layer_strides=[2, 2], norm_cfg=bn2, conv_cfg=dict(type='Conv2d', bias=False)),
        pts_neck=dict(type='SECONDFPN', in_channels=[16, 32], out_channels=[16, 16], upsample_strides=[1, 2],
                      norm_cfg=bn2, upsample_cfg=dict(type='deconv', bias=False), use_conv_for_no_stride=True),
        pts_bbox_head=dict(
            type='CenterHead', in_channels=32,
            tasks=[dict(num_class=1, class_names=['car']), dict(num_class=2, class_names=['truck', 'bus'])],
            common_heads=dict(reg=(2, 2), height=(1, 2), dim=(3, 2), rot=(2, 2), vel=(2, 2)), share_conv_channel=16,
            bbox_coder=dict(type='CenterPointBBoxCoder', post_center_range=centre_range, max_num=50,
                            score_threshold=0.0, out_size_factor=2, voxel_size=vs[:2], code_size=9, pc_range=pcr[:2]),
            separate_head=dict(type='SeparateHead', init_bias=-2.19, final_kernel=3),
            loss_cls=dict(type='mmdet.GaussianFocalLoss', reduction='mean'),
            loss_bbox=dict(type='mmdet.L1Loss', reduction='mean', loss_weight=0.25), norm_bbox=True),
        train_cfg=dict(pts=dict(grid_size=[80, 80, 1], voxel_size=vs, out_size_factor=2, dense_reg=1,
                                gaussian_overlap=0.1, max_objs=50, min_radius=2, code_weights=[1.0] * 10,
                                point_cloud_range=pcr)),
        test_cfg=dict(pts=dict(post_center_limit_range=centre_range, max_per_img=50, max_pool_nms=False,
                               min_radius=[4, 4], score_threshold=0.0, out_size_factor=2, voxel_size=vs[:2],
                               nms_type='rotate', pre_max_size=100, post_max_size=20, nms_thr=0.2,
                               pc_range=pcr[:2])))
    cfg = dict(type='EBMRefineDetector3D', detector=centerpoint,
               ebm_head=dict(type='EBMBoxHead3D', in_channels=32, bev_range=BEV_RANGE, fc_channels=32, zh_channels=8,
                             num_classes=3, loss=dict(type='NCELoss', num_samples=8)),
               test_cfg=dict(step_sizes=0.05), val_loss=True)
    torch.manual_seed(0)
    model = _build_3d(ConfigDict({**cfg, **wrapper}))
    model.init_weights()
    return model


def _centerpoint_batch():
    from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(0)
    points = [torch.rand(3000, 4, generator=g) * torch.tensor([40., 40., 3., 1.]) + torch.tensor([0., -20., -2.5, 0.])
              for _ in range(2)]
    samples = []
    for i in range(2):
        sample = Det3DDataSample(metainfo=dict(box_type_3d=LiDARInstance3DBoxes, sample_idx=i))
        boxes = torch.tensor([[10., 2., -1.7, 4., 1.7, 1.5, 0.3, 1.0, 0.5],
                              [25., -8., -1.6, 8.4, 2.5, 3.0, 2.0, 0., 0.]])
        sample.gt_instances_3d = InstanceData(bboxes_3d=LiDARInstance3DBoxes(boxes[:2 - i], box_dim=9),
                                              labels_3d=torch.tensor([0, 2][:2 - i]))
        samples.append(sample)
    return dict(inputs=dict(points=points), data_samples=samples)


def test_centerpoint_predicts_and_trains_on_its_pts_neck_features():
    """mmdetection3d #3076 / #691: CenterPoint built inside the wrapper, but predict looked for
    ``backbone`` and training called ``extract_feat`` without the metainfo."""
    from mmengine.optim import OptimWrapper
    from ebm_det.models.refine_detector import feature_module
    model = _centerpoint_wrapper().eval()
    assert feature_module(model.detector) is model.detector.pts_neck
    with torch.no_grad():
        out = model.test_step(_centerpoint_batch())
        data = model.data_preprocessor(_centerpoint_batch(), False)
        _, pts_feats = model.detector.extract_feat(data['inputs'], [s.metainfo for s in data['data_samples']])
        feats = model.extract_feat(data['inputs'], data['data_samples'])
    assert all(torch.equal(a, b) for a, b in zip(feats, pts_feats)) and feats[0].shape[1] == 32  # the BEV map
    for sample, num_gt in zip(out, (2, 1)):
        pred = sample.pred_instances_3d
        assert {'bboxes_3d_init', 'scores_3d_init', 'ebm_scores'} <= set(pred.keys())
        _check(pred, refined_any=True)
        init, boxes = pred.bboxes_3d_init.tensor, pred.bboxes_3d.tensor
        assert boxes.shape[1] == 9 and torch.equal(boxes[:, 7:], init[:, 7:])  # velocities pass through
        assert not torch.equal(boxes[:, :7], init[:, :7])
        assert pred.labels_3d.max() <= 2  # the two tasks' labels are global: the head scores 3 classes
        assert sample.ebm_val_num_gt == num_gt and math.isfinite(sample.ebm_val_loss)
    # training, frozen (K head updates on one detector forward) and joint (CenterHead's losses too)
    model = _centerpoint_wrapper(head_updates=2)
    model.train()
    optim = OptimWrapper(torch.optim.SGD(model.ebm_head.parameters(), lr=0.1))
    before = model.ebm_head.fc_score.weight.detach().clone()
    log = model.train_step(_centerpoint_batch(), optim)
    assert math.isfinite(log['loss_ebm']) and not torch.equal(before, model.ebm_head.fc_score.weight)
    joint = _centerpoint_wrapper(freeze_detector=False)
    joint.train()
    data = joint.data_preprocessor(_centerpoint_batch(), True)
    losses = joint.loss(data['inputs'], data['data_samples'])
    assert {'task0.loss_heatmap', 'task1.loss_bbox', 'loss_ebm'} <= set(losses)
    assert all(torch.isfinite(v).all() for v in losses.values())
    # its classes are counted over the tasks: a 2-class head does not cover them
    with pytest.raises(ValueError, match='scores 2 classes.*CenterPoint predicts 3'):
        _centerpoint_wrapper(ebm_head=dict(type='EBMBoxHead3D', in_channels=32, bev_range=BEV_RANGE, num_classes=2))
