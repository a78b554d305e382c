"""Small training sets (issue 16): the refinement gate, the validation signals and the guards."""
import math

import numpy as np
import pytest
import torch

from conftest import ROOT, QuadraticHead

pytest.importorskip('mmdet')

import ebm_det  # noqa: E402,F401
from ebm_det.core import RefineConfig, refine_boxes  # noqa: E402
from ebm_det.evaluation import (EBMLossMetric, InitialPredictionMetric, RefinementLocalisationMetric,  # noqa: E402
                                best_margin, calibrate_min_gain, match_refined_detections)


# --------------------------------------------------------------------------- the refinement gate
def test_best_margin_exact_cases():
    assert best_margin([1., 2., 3.], [0.1, 0.1, 0.1]) == 0.0  # refinement helps every box: no gate
    assert best_margin([1., 2., 3.], [-0.1, 0.05, 0.1]) == 2.0  # only the box gaining 1 in f is hurt
    assert best_margin([1., 2., 3.], [-0.1, -0.1, -0.1]) == math.inf  # hurts at every margin: refine none
    assert best_margin([1., 1., 3.], [0.1, -0.3, 0.1]) == 3.0  # ties in f are kept or dropped together
    assert best_margin([], []) == 0.0
    assert best_margin([float('-inf'), 2.], [0.0, 0.2]) == 0.0  # unrefined boxes are ignored
    assert calibrate_min_gain([1., 2., 3., 1.], [0.5] * 4, [0.4, 0.7, 0.6, 0.6], labels=[0, 0, 1, 3],
                              num_classes=4) == [2.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match='num_classes'):
        calibrate_min_gain([1.], [0.5], [0.6], labels=[0])


@pytest.mark.parametrize('bad', [-0.1, float('nan'), [], [0.0, -1.0], 'x', True])
def test_min_gain_is_checked(bad):
    with pytest.raises(ValueError, match='min_gain'):
        RefineConfig(min_gain=bad)


def test_min_gain_values():
    assert RefineConfig().min_gain == 0.0
    assert type(RefineConfig(min_gain=2).min_gain) is float  # a whole number from --cfg-options
    assert RefineConfig(min_gain=[0, math.inf, 2]).min_gain == (0.0, math.inf, 2.0)
    labels = torch.tensor([2, 0, 1])
    assert RefineConfig(min_gain=[0, math.inf, 2]).gain_margin(labels).tolist() == [2.0, 0.0, math.inf]
    assert RefineConfig(min_gain=1.5).gain_margin(labels) == 1.5


def test_refine_boxes_gate_exact():
    """One unit step lands on the target: f gains 750 for the far box, 2 for the near one."""
    head = QuadraticHead([10., 10., 40., 50.])
    boxes = torch.tensor([[0., 0., 20., 20.], [9., 9., 39., 49.]])
    idx, labels = torch.zeros(2, dtype=torch.long), torch.tensor([0, 1])
    target = [10., 10., 40., 50.]

    def run(min_gain):
        cfg = RefineConfig(num_steps=1, step_sizes=1.0, min_gain=min_gain)
        return refine_boxes(head, None, boxes, idx, labels, cfg)

    out = run(0.0)
    assert out.refined.tolist() == [True, True] and out.boxes.tolist() == [target, target]
    assert (out.ebm_scores - out.init_scores).tolist() == [750.0, 2.0]
    out = run(2.0)  # the margin is inclusive
    assert out.refined.tolist() == [True, True]
    out = run(100.0)
    assert out.refined.tolist() == [True, False] and out.boxes.tolist() == [target, boxes[1].tolist()]
    assert math.isinf(out.ebm_scores[1]) and out.init_scores[1] == -2.0
    out = run([0.0, math.inf])  # per class: class 1 is never refined
    assert out.refined.tolist() == [True, False]


def _shapes_model(**changes):
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    cfg = Config.fromfile(str(ROOT / 'configs' / 'faster-rcnn_r18_fpn_ebm-nceplus_shapes.py'))
    cfg.model.ebm_head.loss = dict(type='NCEPlusLoss', num_samples=8)
    for key, value in changes.items():
        cfg.model[key] = value
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.eval()


def test_per_class_gate_needs_one_value_per_class():
    from ebm_det.tracking import EBMBoxRefiner
    with pytest.raises(ValueError, match='one per class of the EBM head \\(5\\)'):
        _shapes_model(test_cfg=dict(min_gain=[0.0, 1.0]))
    model = _shapes_model(test_cfg=dict(min_gain=[0.0] * 5))
    assert model.refine_cfg.min_gain == (0.0, ) * 5
    assert _shapes_model(test_cfg=dict(min_gain=2)).refine_cfg.min_gain == 2.0
    with pytest.raises(ValueError, match='track_refine_cfg.min_gain has 2 values'):  # the trackers' refiner too
        EBMBoxRefiner(model.ebm_head, dict(min_gain=[0.0, 1.0]))


# ------------------------------------------------------------------------------ validation loss
def _samples_with_gt(scale=2.0):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    out = []
    for boxes, labels in (([[4., 5., 30., 40.], [10., 10., 20., 30.]], [1, 3]), ([[2., 2., 3., 3.]], [0])):
        s = DetDataSample(metainfo=dict(img_shape=(96, 128), ori_shape=(48, 64), pad_shape=(96, 128),
                                        scale_factor=(scale, scale), batch_input_shape=(96, 128)))
        s.gt_instances = InstanceData(bboxes=torch.tensor(boxes), labels=torch.tensor(labels))
        out.append(s)
    return out


def test_validation_loss_is_the_training_loss_on_fixed_noise():
    model = _shapes_model()
    model.detector.test_cfg.rcnn.score_thr = 0.0
    imgs = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        results = model.predict(imgs, _samples_with_gt())
        again = model.predict(imgs, _samples_with_gt())
    meta = results[0].metainfo
    # one loss per image, on its own result (the second image's GT box is 2 x 2 input pixels
    # after scaling: valid, >= 1 px), so EBMLossMetric keeps one result per sample
    assert meta['ebm_val_num_gt'] == 2 and results[1].metainfo['ebm_val_num_gt'] == 1
    for r, a in zip(results, again):  # fixed noise: epochs compare
        assert a.metainfo['ebm_val_loss'] == r.metainfo['ebm_val_loss']
    gt = [torch.tensor([[8., 10., 60., 80.], [20., 20., 40., 60.]]), torch.tensor([[4., 4., 6., 6.]])]
    labels = [torch.tensor([1, 3]), torch.tensor([0])]
    for i, r in enumerate(results):  # each image's loss alone, noise seeded per image: batch-independent
        torch.manual_seed(model.VAL_LOSS_SEED)
        with torch.no_grad():
            expected = model.ebm_head.loss(model.extract_feat(imgs[i:i + 1]), gt[i:i + 1], labels[i:i + 1],
                                           subsample=False)
        assert r.metainfo['ebm_val_loss'] == pytest.approx(float(expected['loss_ebm']), rel=1e-4)
    # the caller's random stream is untouched
    torch.manual_seed(7)
    with torch.no_grad():
        model.predict(imgs, _samples_with_gt())
    drawn = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(drawn, torch.rand(3))
    # a batch whose ground truth is all invalid (under 1 px): counted as computed, no loss
    tiny = _samples_with_gt(scale=0.01)
    with torch.no_grad():
        meta = model.predict(imgs, tiny)[0].metainfo
    assert meta['ebm_val_num_gt'] == 0 and 'ebm_val_loss' not in meta
    # inference without annotations: no loss, no error
    no_gt = _samples_with_gt()
    for s in no_gt:
        del s.gt_instances
    with torch.no_grad():
        assert 'ebm_val_loss' not in model.predict(imgs, no_gt)[0].metainfo
    assert 'ebm_val_loss' not in _shapes_model(val_loss=False).predict(imgs, _samples_with_gt())[0].metainfo
    with pytest.raises(ValueError, match='val_loss'):
        _shapes_model(val_loss='yes')


def test_ebm_loss_metric_is_the_mean_over_ground_truth_boxes():
    metric = EBMLossMetric()
    metric.process(None, [dict(ebm_val_loss=2.0, ebm_val_num_gt=3), dict(img_id=1)])
    metric.process(None, [dict(ebm_val_loss=6.0, ebm_val_num_gt=1)])
    assert metric.evaluate(3) == {'ebm/val_loss': 3.0}
    empty = EBMLossMetric()
    empty.process(None, [dict(img_id=1)])  # no ground truth (inference): nothing to say yet
    with pytest.raises(ValueError, match='val_loss=True'):
        empty.evaluate(1)
    with pytest.raises(ValueError, match='val_loss=True'):  # ground truth but no loss: at once
        EBMLossMetric().process(None, [dict(gt_instances=dict(bboxes=torch.ones(2, 4)))])
    EBMLossMetric().process(None, [dict(gt_instances=dict(bboxes=torch.ones(0, 4)))])


# ----------------------------------------------------------------------------- the guards
def _sample(init, refined, scores, labels, gt, gt_labels, ebm=None, ebm_init=None):
    pred = dict(bboxes=torch.tensor(refined), bboxes_init=torch.tensor(init), scores=torch.tensor(scores),
                scores_init=torch.tensor(scores), labels=torch.tensor(labels))
    if ebm is not None:
        pred.update(ebm_scores=torch.tensor(ebm), ebm_init_scores=torch.tensor(ebm_init))
    return dict(pred_instances=pred, gt_instances=dict(bboxes=torch.tensor(gt), labels=torch.tensor(gt_labels)))


def test_localisation_metric_exact(monkeypatch):
    import ebm_det.evaluation.initial_metric as im
    logged = []
    monkeypatch.setattr(im, 'print_log', lambda msg, **kw: logged.append((msg, kw.get('level'))))
    gt = [[0., 0., 10., 10.], [20., 20., 30., 30.]]
    sample = _sample(init=[[0., 0., 10., 8.],  # IoU 0.8 -> 1.0 (better)
                           [20., 20., 30., 30.],  # IoU 1.0 -> 0.5 (worse)
                           [0., 0., 10., 10.],  # score below 0.3: not matched
                           [0., 0., 10., 10.]],  # wrong class: not matched
                     refined=[[0., 0., 10., 10.], [20., 20., 30., 25.], [0., 0., 1., 1.], [0., 0., 1., 1.]],
                     scores=[0.9, 0.8, 0.1, 0.9], labels=[0, 1, 0, 2], gt=gt, gt_labels=[0, 1],
                     ebm=[1.0, 5.0, -math.inf, -math.inf], ebm_init=[0.5, 4.0, -math.inf, -math.inf])
    matched = match_refined_detections(sample)
    assert matched['index'].tolist() == [0, 1] and matched['labels'].tolist() == [0, 1]
    assert matched['iou_init'].tolist() == pytest.approx([0.8, 1.0])
    assert matched['iou'].tolist() == pytest.approx([1.0, 0.5])
    assert matched['gain'].tolist() == [0.5, 1.0]
    metric = RefinementLocalisationMetric()
    metric.process(None, [sample])
    out = metric.evaluate(1)
    assert out['refine/matched'] == 2 and out['refine/iou_init'] == pytest.approx(0.9)
    assert out['refine/iou'] == pytest.approx(0.75) and out['refine/iou_gain'] == pytest.approx(-0.15)
    assert out['refine/worse'] == 0.5 and out['refine/better'] == 0.5
    assert len(logged) == 1 and 'lowered the mean IoU of matched detections 0.9000 -> 0.7500' in logged[0][0]
    assert logged[0][1] == 30  # WARNING
    with pytest.raises(ValueError, match='gt_instances'):
        RefinementLocalisationMetric().process(None, [dict(pred_instances=sample['pred_instances'])])
    with pytest.raises(ValueError, match='_init'):
        RefinementLocalisationMetric().process(None, [dict(pred_instances=dict(bboxes=1, scores=2, labels=3),
                                                           gt_instances=sample['gt_instances'])])


def test_initial_metric_reports_the_gain_for_save_best_and_warns(monkeypatch):
    from mmengine.evaluator import BaseMetric
    from mmengine.registry import METRICS
    import ebm_det.evaluation.initial_metric as im

    @METRICS.register_module(name='_MeanX1Metric', force=True)
    class MeanX1(BaseMetric):  # an exact stand-in: 'AP' = the mean x1 of the predicted boxes
        default_prefix = 'toy'

        def process(self, data_batch, data_samples):
            self.results += [float(s['pred_instances']['bboxes'][:, 0].mean()) for s in data_samples]

        def compute_metrics(self, results):
            return dict(AP=float(np.mean(results)), count=len(results))

    logged = []
    monkeypatch.setattr(im, 'print_log', lambda msg, **kw: logged.append(msg))
    metric = InitialPredictionMetric(dict(type='_MeanX1Metric'), report_gain=True)
    s = _sample(init=[[10., 0., 20., 10.]], refined=[[4., 0., 20., 10.]], scores=[0.9], labels=[0],
                gt=[[0., 0., 1., 1.]], gt_labels=[0])
    metric.process(None, [s, s])
    assert metric.evaluate(2) == {'toy_init/AP': 10.0, 'toy_init/count': 2, 'toy_gain/AP': -6.0, 'toy_gain/count': 0}
    assert len(logged) == 1 and 'lowered AP 10.0000 -> 4.0000' in logged[0]
    plain = InitialPredictionMetric(dict(type='_MeanX1Metric'))
    plain.process(None, [s])
    assert plain.evaluate(1) == {'toy_init/AP': 10.0, 'toy_init/count': 1}


def test_test_tool_says_loudly_what_refinement_made_worse():
    from tools import test as test_tool
    metrics = {'coco/bbox_mAP': 0.20, 'coco_init/bbox_mAP': 0.25, 'coco/bbox_mAP_75': 0.30,
               'coco_init/bbox_mAP_75': 0.20, 'coco/bbox_mAP_copypaste': '...', 'refine/iou': 0.70,
               'refine/iou_init': 0.75, 'refine/matched': 10, 'refine/worse': 0.6}
    assert test_tool.refinement_losses(metrics) == ['coco/bbox_mAP: 0.2500 -> 0.2000', 'refine/iou: 0.7500 -> 0.7000']
    metrics.update({'coco/bbox_mAP': 0.3, 'refine/iou': 0.8, 'coco/bbox_mAP_50': 0.3995, 'coco_init/bbox_mAP_50': 0.4})
    assert test_tool.refinement_losses(metrics) == []  # a 0.05-point drop is noise
    # a drop of exactly 0.1 point, which float makes 0.0010000000000000009 (the demo's AP50 once)
    metrics.update({'coco/bbox_mAP_50': 0.384, 'coco_init/bbox_mAP_50': 0.385})
    assert test_tool.refinement_losses(metrics) == []
    metrics.update({'coco/bbox_mAP_50': 0.3835})
    assert test_tool.refinement_losses(metrics) == ['coco/bbox_mAP_50: 0.3850 -> 0.3835']
    assert 'refine/iou                                 0.7500   0.8000  +0.0500' in test_tool.before_after_table(metrics)


# ------------------------------------------------------------------------------- regularisers
def test_dropout_head_loads_the_same_checkpoints_and_is_off_in_refinement():
    from ebm_det.models import EBMBoxHead
    plain = EBMBoxHead(num_classes=3, in_channels=8, fc_channels=16, featmap_strides=[4])
    dropped = EBMBoxHead(num_classes=3, in_channels=8, fc_channels=16, featmap_strides=[4], dropout=0.5)
    dropped.load_state_dict(plain.state_dict())  # the same weights, strictly
    feats = [torch.randn(1, 8, 16, 16)]
    boxes, idx, labels = torch.tensor([[4., 4., 40., 48.]]), torch.zeros(1, dtype=torch.long), torch.tensor([1])
    plain.eval(), dropped.eval()
    f = plain.score_boxes(feats, boxes, idx, labels)
    assert torch.equal(f, dropped.score_boxes(feats, boxes, idx, labels))
    dropped.train()
    torch.manual_seed(0)
    assert not torch.equal(f, dropped.score_boxes(feats, boxes, idx, labels))
    with pytest.raises(ValueError, match='dropout'):
        EBMBoxHead(num_classes=3, in_channels=8, dropout=1.0)
