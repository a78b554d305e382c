"""The mmdet layer: registration, EBMBoxHead, EBMRefineDetector through the mmengine Runner."""
import math
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_config, tiny_shapes_config

mmdet = pytest.importorskip('mmdet')
import ebm_det  # noqa: E402,F401
from ebm_det.core import RefineConfig, refine_boxes, select_for_refinement  # noqa: E402
from ebm_det.evaluation import swap_initial_fields  # noqa: E402
from ebm_det.models import EBMBoxHead  # noqa: E402

METHODS = ['NCEPlusLoss', 'NCELoss', 'MLISLoss', 'KLDISLoss', 'DSMLoss', 'MLMCMCLoss']
STEPS = RefineConfig(step_sizes=(0.05, 0.05, 0.1, 0.1))


def test_import_registers_in_mmdet_registries():
    code = ('import ebm_det; from mmdet.registry import MODELS, METRICS; '
            "assert MODELS.get('EBMBoxHead') is not None; assert MODELS.get('EBMRefineDetector') is not None; "
            "assert METRICS.get('InitialPredictionMetric') is not None; print('ok')")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == 'ok', out.stderr


def _head(method='NCEPlusLoss', num_samples=8, **kw):
    head = EBMBoxHead(num_classes=3, in_channels=8, fc_channels=32, featmap_strides=[4, 8],
                      loss=dict(type=method, sigmas=[[0.075] * 4, [0.15] * 4, [0.3] * 4], num_samples=num_samples),
                      **kw)
    head.init_weights()
    return head


def _feats(batch=2):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, 8, 32, 32, generator=g), torch.randn(batch, 8, 16, 16, generator=g)]


GT = [torch.tensor([[10., 12., 60., 50.], [30., 30., 100., 120.]]), torch.tensor([[5., 5., 40., 70.]])]
LABELS = [torch.tensor([0, 2]), torch.tensor([1])]


@pytest.mark.parametrize('method', METHODS)
def test_head_loss_every_method_trains(method):
    torch.manual_seed(0)
    head = _head(method)
    loss = head.loss(_feats(), GT, LABELS)['loss_ebm']
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in head.fcs.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_head_loss_reads_gt_class_and_skips_degenerate_boxes():
    torch.manual_seed(0)
    head = _head(reduced_channels=4)
    degenerate = [torch.tensor([[10., 10., 10.5, 40.]]), torch.zeros(0, 4)]
    loss = head.loss(_feats(), degenerate, [torch.tensor([0]), torch.zeros(0, dtype=torch.long)])['loss_ebm']
    assert loss.item() == 0.0  # nothing valid: a zero that still reaches every parameter
    loss.backward()
    assert head.reduce.weight.grad is not None
    # only the GT class's output carries the loss
    head.zero_grad()
    head.loss(_feats(), [GT[0][:1], GT[1][:0]], [torch.tensor([2]), torch.zeros(0, dtype=torch.long)])['loss_ebm'].backward()
    row_grad = head.fc_score.weight.grad.abs().sum(1)
    assert row_grad[2] > 0 and row_grad[0] == 0 and row_grad[1] == 0


def test_head_refine_raises_scores_without_parameter_grads():
    torch.manual_seed(0)
    head = _head()
    feats = _feats()
    boxes = torch.cat(GT)
    batch_idx, labels = torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1])
    with torch.no_grad():
        res = head.refine(feats, boxes, batch_idx, labels, STEPS)
        out = refine_boxes(head, feats, boxes, batch_idx, labels, STEPS, img_shapes=torch.tensor([[128, 128]] * 2))
    assert (res.scores >= res.init_scores).all() and (res.scores > res.init_scores).any()
    assert not torch.equal(res.boxes, boxes)
    assert out.refined.all() and (out.boxes >= 0).all() and (out.boxes <= 128).all()
    torch.testing.assert_close(out.boxes, res.boxes.clamp(0, 128))
    assert all(p.grad is None for p in head.parameters())


def test_head_refine_batch_order_and_per_box_steps():
    """Boxes of two images and two FPN levels, interleaved, with per-box step sizes: the batched
    call (which refines them grouped by level and image) returns each box in its input order,
    exactly as refining it alone."""
    torch.manual_seed(0)
    head = _head()
    feats = _feats()
    boxes = torch.tensor([[10., 10., 130., 125.], [20., 15., 70., 60.], [5., 8., 125., 128.], [40., 30., 90., 85.]])
    batch_idx, labels = torch.tensor([1, 0, 0, 1]), torch.tensor([2, 0, 1, 2])
    levels = head.map_levels(boxes)
    assert levels.tolist() == [1, 0, 1, 0]  # interleaved: the head must regroup and restore
    steps = torch.tensor([[0.05, 0.05, 0.1, 0.1], [0.02, 0.02, 0.04, 0.04], [0.1, 0.1, 0.2, 0.2], [0.03] * 4])
    with torch.no_grad():
        res = head.refine(feats, boxes, batch_idx, labels, step_sizes=steps)
        for i in range(4):
            one = head.refine(feats, boxes[i:i + 1], batch_idx[i:i + 1], labels[i:i + 1], step_sizes=steps[i:i + 1])
            torch.testing.assert_close(res.boxes[i:i + 1], one.boxes, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(res.scores[i:i + 1], one.scores, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(res.init_scores[i:i + 1], one.init_scores, rtol=1e-5, atol=1e-5)
    assert not torch.equal(res.boxes, boxes)


def test_head_refine_empty():
    head = _head()
    res = head.refine(_feats(), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert res.boxes.shape == (0, 4) and res.scores.shape == (0, )


def test_select_for_refinement_exact():
    scores = torch.tensor([0.9, 0.2, 0.8, 0.7, 0.95, 0.5])
    boxes = torch.tensor([[0, 0, 10, 10]] * 6, dtype=torch.float)
    boxes[5, 2] = float('nan')
    batch_idx = torch.tensor([0, 0, 0, 1, 1, 1])
    valid = torch.isfinite(boxes).all(-1)
    sel = select_for_refinement(scores, valid, batch_idx, 2, score_thr=0.3, max_per_img=2)
    assert sel.tolist() == [True, False, True, True, True, False]
    valid[0] = False  # e.g. zero width: the next best of image 0 takes its place
    sel = select_for_refinement(scores, valid, batch_idx, 2, score_thr=0.0, max_per_img=1)
    assert sel.tolist() == [False, False, True, False, True, False]


def test_swap_initial_fields():
    sample = dict(img_id=3, pred_instances=dict(bboxes=1, bboxes_init=2, scores=3, scores_init=4, labels=5))
    out = swap_initial_fields(sample)
    assert out['pred_instances'] == dict(bboxes=2, scores=4, labels=5)
    assert sample['pred_instances']['bboxes'] == 1  # input untouched


def _last_checkpoint(work_dir):
    return (work_dir / 'last_checkpoint').read_text().strip()


def train_detector_then_ebm(tmp, shapes_root, det_base: str, ebm_base: str, ebm_iters: int = 3) -> dict:
    """A detector of ``det_base`` trained 2 iterations, then the EBM config ``ebm_base`` trained
    ``ebm_iters`` iterations on it, frozen; the paths of both."""
    det_cfg = tiny_shapes_config(tmp, det_base, shapes_root, max_iters=2)
    run_config(det_cfg, tmp / 'det')
    det_ckpt = _last_checkpoint(tmp / 'det')
    ebm_cfg = tiny_shapes_config(tmp, ebm_base, shapes_root, max_iters=ebm_iters,
                                 extra=f"model = dict(detector_checkpoint='{det_ckpt}')\n")
    run_config(ebm_cfg, tmp / 'ebm')
    return dict(tmp=tmp, det_ckpt=det_ckpt, ebm_cfg=ebm_cfg, ebm_ckpt=_last_checkpoint(tmp / 'ebm'))


@pytest.fixture(scope='module')
def trained(shapes_root, tmp_path_factory):
    """A detector trained 2 iterations, then an EBM head trained 3 iterations on it."""
    return train_detector_then_ebm(tmp_path_factory.mktemp('runner'), shapes_root, 'faster-rcnn_r18_fpn_shapes.py',
                                   'faster-rcnn_r18_fpn_ebm-nceplus_shapes.py')


def test_runner_train_freezes_detector_and_tests_before_after(trained):
    state = torch.load(trained['ebm_ckpt'], map_location='cpu', weights_only=True)['state_dict']
    det_state = torch.load(trained['det_ckpt'], map_location='cpu', weights_only=True)['state_dict']
    for k, v in det_state.items():  # the frozen detector is exactly the loaded one
        assert torch.equal(state['detector.' + k], v), k
    metrics = run_config(trained['ebm_cfg'], trained['tmp'] / 'test', trained['ebm_ckpt'], test=True)
    for name in ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l'):
        assert f'coco/{name}' in metrics and f'coco_init/{name}' in metrics
    # with refinement off, the two reports are the same boxes
    same = run_config(trained['ebm_cfg'], trained['tmp'] / 'test_off', trained['ebm_ckpt'], test=True,
                **{'model.test_cfg.enabled': False})
    assert same['coco/bbox_mAP'] == same['coco_init/bbox_mAP']


def test_runner_selects_and_stops_on_the_validation_signals(trained, shapes_root):
    """ebm/val_loss and the refined-minus-initial AP reach mmengine's CheckpointHook(save_best) and
    EarlyStoppingHook through the Runner's validation."""
    tmp = trained['tmp']
    extra = f"""
    model = dict(detector_checkpoint='{trained['det_ckpt']}')
    val_evaluator = [dict(type='CocoMetric', ann_file=ann, metric='bbox'),
                     dict(type='InitialPredictionMetric', report_gain=True,
                          metric=dict(type='CocoMetric', ann_file=ann, metric='bbox')),
                     dict(type='RefinementLocalisationMetric', score_thr=0.0), dict(type='EBMLossMetric')]
    train_cfg = dict(max_iters=4, val_interval=2)
    default_hooks = dict(checkpoint=dict(interval=2, save_best='ebm/val_loss'))
    custom_hooks = [dict(type='EarlyStoppingHook', monitor='coco_gain/bbox_mAP', rule='greater', patience=5)]
    """
    import textwrap
    cfg = tiny_shapes_config(tmp, 'faster-rcnn_r18_fpn_ebm-nceplus_shapes.py', shapes_root, max_iters=4,
                             extra=textwrap.dedent(extra))
    from mmengine.config import Config
    from mmengine.runner import Runner
    c = Config.fromfile(str(cfg))
    c.work_dir = str(tmp / 'signals')
    c.experiment_name = 'signals'
    runner = Runner.from_cfg(c)
    runner.train()
    scalars = runner.message_hub.log_scalars
    losses = scalars['val/ebm/val_loss'].data[0]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    best = list((tmp / 'signals').glob('best_ebm_val_loss_iter_*.pth'))
    assert len(best) == 1 and int(best[0].stem.rsplit('_', 1)[1]) == (2 if losses[0] <= losses[1] else 4)
    gain = scalars['val/coco_gain/bbox_mAP'].current()
    assert gain == pytest.approx(scalars['val/coco/bbox_mAP'].current() - scalars['val/coco_init/bbox_mAP'].current())
    assert 'val/refine/iou_gain' in scalars and 'val/refine/worse' in scalars


def test_runner_resume_under_weights_only(trained, shapes_root):
    """mmengine's resume goes through torch.load's weights_only default (torch >= 2.6)."""
    tmp = trained['tmp']
    cfg = tiny_shapes_config(tmp, 'faster-rcnn_r18_fpn_ebm-nceplus_shapes.py', shapes_root, max_iters=4,
                             extra=f"model = dict(detector_checkpoint='{trained['det_ckpt']}')\n")
    import shutil
    shutil.copytree(tmp / 'ebm', tmp / 'resume')
    run_config(cfg, tmp / 'resume', resume=True)
    assert _last_checkpoint(tmp / 'resume').endswith('iter_4.pth')


def test_mmdet_own_train_tool_runs_our_config(trained, shapes_root, tmp_path):
    """MMDetection's tools/train.py, unchanged, trains our config through custom_imports."""
    from pathlib import Path
    mmdet_train = Path(mmdet.__file__).parent / '.mim' / 'tools' / 'train.py'
    cfg = tiny_shapes_config(tmp_path, 'faster-rcnn_r18_fpn_ebm-nceplus_shapes.py', shapes_root, max_iters=1,
                             extra=f"model = dict(detector_checkpoint='{trained['det_ckpt']}')\n")
    out = subprocess.run([sys.executable, str(mmdet_train), str(cfg), '--work-dir', str(tmp_path / 'wd')],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / 'wd' / 'iter_1.pth').exists()


@pytest.mark.parametrize('nms_by_ebm', [False, True])
def test_ebm_roi_head_loss_and_predict(nms_by_ebm):
    """EBMRoIHead inside a Faster R-CNN: the EBM loss joins the detector's, predict refines."""
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.structures import InstanceData
    register_all_modules()
    cfg = Config.fromfile(str(ROOT / 'configs' / 'faster-rcnn_r18_fpn_shapes.py'))
    roi = cfg.model.roi_head
    roi.type = 'EBMRoIHead'
    roi.ebm_head = dict(type='EBMBoxHead', num_classes=5, in_channels=64, fc_channels=64,
                        loss=dict(type='NCEPlusLoss', num_samples=16))
    roi.nms_by_ebm = nms_by_ebm
    roi.ebm_test_cfg = dict(step_sizes=(0.05, 0.05, 0.1, 0.1))
    cfg.model.test_cfg.rcnn.score_thr = 0.0  # random weights: keep every candidate
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    imgs = torch.randn(2, 3, 128, 128)
    samples = []
    for _ in range(2):
        s = DetDataSample(metainfo=dict(img_shape=(128, 128), pad_shape=(128, 128), ori_shape=(64, 64),
                                        scale_factor=(2.0, 2.0), batch_input_shape=(128, 128)))
        s.gt_instances = InstanceData(bboxes=torch.tensor([[10., 10., 60., 80.], [70., 20., 120., 60.]]),
                                      labels=torch.tensor([0, 3]))
        samples.append(s)
    model.train()
    losses = model.loss(imgs, samples)
    assert torch.isfinite(losses['loss_ebm']) and 'loss_cls' in losses
    model.eval()
    with torch.no_grad():
        out = model.predict(imgs, samples, rescale=True)
    pred = out[0].pred_instances
    assert len(pred) > 0 and 'bboxes_init' in pred and 'ebm_scores' in pred
    # boxes are in the original image (scale factor 2): inside 64 x 64
    assert (pred.bboxes >= 0).all() and (pred.bboxes <= 64).all()
    assert not torch.equal(pred.bboxes, pred.bboxes_init)


def test_refine_instances_handles_images_without_boxes_and_bad_boxes():
    from mmengine.structures import InstanceData

    from ebm_det.models import refine_instances
    torch.manual_seed(0)
    head = _head()
    empty = InstanceData(bboxes=torch.zeros(0, 4), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.long))
    # network-input pixels of a 128 x 128 input
    bad = InstanceData(bboxes=torch.tensor([[20., 20., 100., 120.], [float('nan'), 0., 10., 10.],
                                            [40., 40., 40., 80.]]),
                       scores=torch.tensor([0.9, 0.8, 0.7]), labels=torch.tensor([0, 1, 2]))
    metas = [dict(img_shape=(128, 128)), dict(img_shape=(128, 128))]
    with torch.no_grad():
        refine_instances(head, _feats(), [empty, bad], metas, STEPS)
    assert empty.bboxes.shape == (0, 4) and empty.ebm_scores.shape == (0, )
    # the NaN box and the zero-width box are left as they were, with ebm_scores = -inf
    assert torch.isnan(bad.bboxes[1]).any() and torch.equal(bad.bboxes[2], bad.bboxes_init[2])
    assert torch.isinf(bad.ebm_scores[1:]).all() and torch.isfinite(bad.ebm_scores[0])
    assert not torch.equal(bad.bboxes[0], bad.bboxes_init[0])
    assert (bad.bboxes[0] >= 0).all() and (bad.bboxes[0] <= 128).all()  # clipped to the input image


def test_missing_or_mismatched_detector_checkpoint_is_a_clear_error(tmp_path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile(str(ROOT / 'configs' / 'faster-rcnn_r18_fpn_ebm-nceplus_shapes.py'))
    cfg.model.detector_checkpoint = str(tmp_path / 'nowhere.pth')
    model = MODELS.build(cfg.model)
    with pytest.raises(FileNotFoundError, match='nowhere.pth.*does not exist'):
        model.init_weights()
    # a checkpoint of another network: a RuntimeError that names the checkpoint and the detector
    other = tmp_path / 'other.pth'
    torch.save(dict(state_dict=torch.nn.Linear(2, 2).state_dict()), other)
    model.detector_checkpoint = str(other)
    with pytest.raises(RuntimeError, match='other.pth.*does not fit the detector config \\(FasterRCNN\\)'):
        model.init_weights()


def test_cascade_rcnn_under_the_ebm(shapes_root, tmp_path):
    """The same NCE+ head on a frozen 3-stage Cascade R-CNN (the Cascade configs of
    tools/benchmarks/cascade_2d.py): trains through the Runner with the cascade's weights frozen,
    and one test pass scores the third stage's boxes (coco_init) and the refined ones (coco)."""
    run = train_detector_then_ebm(tmp_path, shapes_root, 'cascade-rcnn_r18_fpn_shapes.py',
                                  'cascade-rcnn_r18_fpn_ebm-nceplus_shapes.py', ebm_iters=2)
    state = torch.load(run['ebm_ckpt'], map_location='cpu', weights_only=True)['state_dict']
    det_state = torch.load(run['det_ckpt'], map_location='cpu', weights_only=True)['state_dict']
    assert any('roi_head.bbox_head.2' in k for k in det_state)  # three stages
    for k, v in det_state.items():
        assert torch.equal(state['detector.' + k], v), k
    metrics = run_config(run['ebm_cfg'], tmp_path / 'test', run['ebm_ckpt'], test=True)
    assert {'coco/bbox_mAP', 'coco_init/bbox_mAP', 'refine/iou'} <= set(metrics)


def test_detector_checkpoint_loads_through_mmdet_without_importing_ebm_det_first(trained, shapes_root):
    """The shapes detector's own checkpoint (mmengine's, with its message hub state) through mmdet's
    ``DetInferencer`` in a fresh process that never imports ebm_det itself: the config's
    ``custom_imports`` must let torch's weights-only unpickler read it."""
    image = str(sorted((shapes_root / 'val').glob('*.png'))[0])
    code = (f"from mmdet.apis import DetInferencer\n"
            f"inf = DetInferencer(model={str(ROOT / 'configs' / 'faster-rcnn_r18_fpn_shapes.py')!r}, "
            f"weights={trained['det_ckpt']!r}, device='cpu', show_progress=False)\n"
            f"print('predictions', len(inf({image!r})['predictions']))\n")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and 'predictions 1' in proc.stdout, proc.stderr[-3000:]


def test_mmdet_entry_points_on_the_ebm_config(trained, shapes_root):
    """MMDetection's own APIs on the CPU 2D EBM config: ``init_detector`` + ``inference_detector``
    and ``DetInferencer`` load the checkpoint (weights-only) and return both box sets."""
    import numpy as np
    from mmdet.apis import DetInferencer, inference_detector, init_detector
    image = str(sorted((shapes_root / 'val').glob('*.png'))[0])
    model = init_detector(str(trained['ebm_cfg']), trained['ebm_ckpt'], device='cpu')
    assert type(model).__name__ == 'EBMRefineDetector' and model.dataset_meta['classes'][0] == 'rectangle'
    state = torch.load(trained['ebm_ckpt'], map_location='cpu', weights_only=True)['state_dict']
    assert torch.equal(model.ebm_head.fc_score.weight, state['ebm_head.fc_score.weight'])
    pred = inference_detector(model, image).pred_instances
    assert {'bboxes', 'bboxes_init', 'scores_init', 'ebm_scores'} <= set(pred.keys())
    assert len(pred) > 0 and (pred.bboxes >= 0).all() and (pred.bboxes <= 256).all()
    inferencer = DetInferencer(model=str(trained['ebm_cfg']), weights=trained['ebm_ckpt'], device='cpu',
                               show_progress=False)
    out = inferencer(image, return_datasamples=True)['predictions'][0].pred_instances
    np.testing.assert_allclose(out.bboxes.numpy(), pred.bboxes.numpy(), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(out.bboxes_init.numpy(), pred.bboxes_init.numpy(), rtol=1e-5, atol=1e-3)
