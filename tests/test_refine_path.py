"""The one refinement path: settings and losses checked when built, the per-box-type codecs, the
refinement step ``refine_boxes`` on exact small cases, and features handed over without hooks."""
import math

import pytest
import torch

from conftest import QuadraticHead, count_forwards_and_steps
from ebm_det.core import (Box2DCodec, LiDARBoxCodec, RefineConfig, RefineResult, build_loss, refine_boxes,
                          refine_by_gradient_ascent)

# ---------------------------------------------------------------------------------- RefineConfig


def test_refine_config_defaults_and_checks():
    cfg = RefineConfig()
    # T = 5: the shipped T has one home, this dataclass (the configs state only differences)
    assert (cfg.num_steps, cfg.step_sizes, cfg.decay, cfg.max_per_img, cfg.enabled) == (5, None, 0.5, 100, True)
    assert RefineConfig.build(dict(step_sizes=[1e-3, 1e-3, 2e-3, 2e-3])).step_sizes == (1e-3, 1e-3, 2e-3, 2e-3)
    assert RefineConfig.build(None, num_steps=3).num_steps == 3
    assert cfg.replace(decay=0.25).decay == 0.25 and cfg.decay == 0.5
    # the box type's paper default when unset; one value per box-space dimension otherwise
    assert cfg.step_sizes_for(4, Box2DCodec.default_step_sizes) == (8e-4, 8e-4, 3.2e-3, 3.2e-3)
    assert cfg.step_sizes_for(7, LiDARBoxCodec.default_step_sizes) == (2e-4, )
    with pytest.raises(ValueError, match='1 or 4 values'):
        RefineConfig(step_sizes=(1e-3, 1e-3)).step_sizes_for(4, (1.0, ))


@pytest.mark.parametrize('bad,match', [
    (dict(num_step=5), r"unknown argument\(s\) \['num_step'\]; valid: \['num_steps'"),
    (dict(num_steps=-1), 'num_steps'),
    (dict(num_steps=2.5), 'num_steps'),
    (dict(decay=0.0), 'decay'),
    (dict(decay=1.5), 'decay'),
    (dict(step_sizes=(1e-3, -1e-3)), 'step_sizes'),
    (dict(step_sizes=float('nan')), 'step_sizes'),
    (dict(tol=-1.0), 'tol'),
    (dict(max_per_img=-1), 'max_per_img'),
    (dict(score_thr=float('inf')), 'score_thr'),
    (dict(chunk_size=0), 'chunk_size'),
    (dict(rescore_weight=2.0), 'rescore_weight'),
    (dict(enabled='yes'), 'enabled'),
])
def test_refine_config_rejects_bad_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        RefineConfig.build(bad)


# ---------------------------------------------------------------------------------------- codecs
def test_box2d_codec_validity_and_clipping_exact():
    codec = Box2DCodec()
    boxes = torch.tensor([[0., 0., 10., 10.],  # valid
                          [0., 0., 0.5, 10.],  # under 1 px wide
                          [5., 5., 4., 9.],  # negative width
                          [0., float('inf'), 3., 3.],  # non-finite
                          [0., 0., 1., 1.]])  # exactly min_size: valid
    assert codec.valid(boxes).tolist() == [True, False, False, False, True]
    clipped = codec.clip(torch.tensor([[-5., -2., 30., 12.], [40., 1., 50., 8.]]), torch.tensor([[10, 20], [10, 20]]))
    assert clipped.tolist() == [[0., 0., 20., 10.], [20., 1., 20., 8.]]  # (h, w) = (10, 20)
    assert codec.valid(clipped).tolist() == [True, False]  # the second became degenerate
    with pytest.raises(ValueError, match='min_size'):
        Box2DCodec(min_size=0.0)


def test_box2d_codec_round_trips_mmdet_box_types():
    pytest.importorskip('mmdet')
    from mmdet.structures.bbox import HorizontalBoxes
    codec = Box2DCodec()
    like = HorizontalBoxes(torch.tensor([[1., 2., 3., 4.]], dtype=torch.float16))
    t = codec.to_tensor(like)
    assert t.dtype == torch.float32 and t.tolist() == [[1., 2., 3., 4.]]
    back = codec.from_tensor(t + 1, like)
    assert isinstance(back, HorizontalBoxes) and back.tensor.dtype == torch.float16
    assert back.tensor.tolist() == [[2., 3., 4., 5.]]
    plain = codec.from_tensor(t, torch.zeros(1, 4, dtype=torch.float64))
    assert plain.dtype == torch.float64


def test_lidar_codec_keeps_extra_columns_and_box_type():
    pytest.importorskip('mmdet3d')
    from mmdet3d.structures import LiDARInstance3DBoxes
    codec = LiDARBoxCodec()
    like = LiDARInstance3DBoxes(torch.tensor([[1., 2., -1., 4., 2., 1.5, 0.3, 0.7, -0.2]]), box_dim=9)
    t = codec.to_tensor(like)
    assert t.shape == (1, 7)
    back = codec.from_tensor(t + 1, like)
    assert isinstance(back, LiDARInstance3DBoxes) and back.box_dim == 9
    assert back.tensor[0, 7:].tolist() == pytest.approx([0.7, -0.2])
    assert codec.valid(torch.tensor([[0., 0., 0., 1., 1., 1., 0.], [0., 0., 0., 1., 0., 1., 0.]])).tolist() == \
        [True, False]


# -------------------------------------------------------------------------------- refine_boxes
def test_refine_boxes_exact_small_case():
    """One step of size 1 on f = -|b - t|^2 / 2 lands exactly on t; clipping then keeps the image."""
    head = QuadraticHead([10., 10., 40., 50.])
    boxes = torch.tensor([[0., 0., 20., 20.],  # image 0: refined to the target
                          [5., 5., 5.5, 30.],  # image 0: under 1 px wide, not refined
                          [8., 8., 30., 30.],  # image 1: refined, then clipped to its 32 x 32 image
                          [9., 9., 39., 49.]])  # image 1: lowest score, beyond max_per_img=1
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1])
    batch_idx = torch.tensor([0, 0, 1, 1])
    cfg = RefineConfig(num_steps=1, step_sizes=1.0, max_per_img=1)
    out = refine_boxes(head, None, boxes, batch_idx, torch.zeros(4, dtype=torch.long), cfg, scores=scores,
                       img_shapes=torch.tensor([[64, 64], [32, 32]]))
    assert out.boxes.tolist() == [[10., 10., 40., 50.], [5., 5., 5.5, 30.], [10., 10., 32., 32.], [9., 9., 39., 49.]]
    assert out.refined.tolist() == [True, False, True, False]
    assert out.ebm_scores[0] == 0 and math.isinf(out.ebm_scores[1]) and math.isinf(out.ebm_scores[3])
    # f at the box returned: clipped from the target (10, 10, 40, 50) to (10, 10, 32, 32): 8^2 + 18^2
    assert out.ebm_scores[2] == -0.5 * (8**2 + 18**2)
    assert out.init_scores[2] == -0.5 * (2**2 + 2**2 + 10**2 + 20**2) and math.isinf(out.init_scores[3])


def test_refine_boxes_keeps_the_input_when_clipping_leaves_it_worse():
    """Refinement moves a box towards a target outside the image; clipping keeps it inside the image
    (each coordinate at most as far outside as the input box's); clipped, a box that scores below
    the input box is not written back (the score guarantee holds for the box returned)."""
    head = QuadraticHead([40., 0., 80., 30.])  # mostly right of a 48-px-wide image
    one, cfg = torch.zeros(1, dtype=torch.long), RefineConfig(num_steps=1, step_sizes=1.0)
    boxes = torch.tensor([[20., 0., 40., 30.]])  # inside the image; f = -(20^2 + 40^2) / 2 = -1000
    out = refine_boxes(head, None, boxes, one, one, cfg, img_shapes=torch.tensor([[32, 48]]))
    # refined to the target, clipped to (40, 0, 48, 30): f = -32^2 / 2 = -512 > -1000, kept
    assert out.refined[0] and out.boxes.tolist() == [[40., 0., 48., 30.]] and out.ebm_scores[0] == -512
    # the detector put the box past the border (x2 = 50 > 48, as YOLOX does): clipping alone does not
    # pull it in, so the refined box may end at x2 = 50: (40, 0, 50, 30), f = -30^2 / 2 = -450
    crossing = torch.tensor([[20., 0., 50., 30.]])
    out = refine_boxes(head, None, crossing, one, one, cfg, img_shapes=torch.tensor([[32, 48]]))
    assert out.refined[0] and out.boxes.tolist() == [[40., 0., 50., 30.]] and out.ebm_scores[0] == -450

    class NarrowPenalty(QuadraticHead):  # f drops by 1000 for boxes narrower than 5 px
        def score(self, prepared, b, batch_idx, labels):
            return super().score(prepared, b, batch_idx, labels) - 1000 * ((b[:, 2] - b[:, 0]) < 5)

    out = refine_boxes(NarrowPenalty([40., 0., 80., 30.]), None, boxes, one, one, cfg,
                       img_shapes=torch.tensor([[32, 41]]))
    # the ascent reaches the target (f = 0); clipped to (40, 0, 41, 30): f = -39^2 / 2 - 1000 = -1760.5
    # < -1000: the input box comes back
    assert not out.refined[0] and torch.equal(out.boxes, boxes) and out.init_scores[0] == -1000


def test_refine_boxes_never_writes_back_a_box_that_clipping_makes_degenerate():
    """A box moving out of the bottom of a 64 x 64 image (a lost track's prediction): the refined box
    would be clipped to zero height, so the input box comes back, unrefined (issue 12, case 1)."""
    head = QuadraticHead([30., 70., 50., 90.])
    boxes = torch.tensor([[30., 44., 50., 64.]])  # inside the image, at its bottom edge
    out = refine_boxes(head, None, boxes, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long),
                       RefineConfig(num_steps=1, step_sizes=1.0), img_shapes=torch.tensor([[64, 64]]))
    assert out.boxes.tolist() == boxes.tolist() and not out.refined[0] and math.isinf(out.ebm_scores[0])


def test_refine_boxes_takes_a_refinable_head_and_prepares_its_features_once():
    """The head contract is declared (``RefinableHead``); a box that clipping changed is scored again
    on the features prepared for the ascent, not on a second preparation."""
    from ebm_det.core import RefinableHead
    assert isinstance(QuadraticHead([0., 0., 1., 1.]), RefinableHead)
    assert isinstance(_build(dict(type='EBMBoxHead', num_classes=2, in_channels=8, fc_channels=16)), RefinableHead)
    assert not isinstance(object(), RefinableHead)
    prepared = []

    class Counted(QuadraticHead):
        def prepare_features(self, feats):
            prepared.append(feats)
            return feats

    one = torch.zeros(1, dtype=torch.long)
    out = refine_boxes(Counted([40., 0., 80., 30.]), 'feats', torch.tensor([[20., 0., 40., 30.]]), one, one,
                       RefineConfig(num_steps=1, step_sizes=1.0), img_shapes=torch.tensor([[32, 48]]))
    assert out.refined[0] and out.boxes.tolist() == [[40., 0., 48., 30.]] and out.ebm_scores[0] == -512  # clipped
    assert prepared == ['feats']


def test_rescale_to_original_is_the_one_rescale():
    from mmengine.structures import InstanceData
    from ebm_det.models.refine_detector import rescale_to_original
    pred = InstanceData(bboxes=torch.tensor([[2., 4., 6., 8.]]), bboxes_init=torch.tensor([[4., 4., 8., 8.]]),
                        scores=torch.ones(1))
    rescale_to_original(pred, (2.0, 4.0))
    assert pred.bboxes.tolist() == [[1., 1., 3., 2.]] and pred.bboxes_init.tolist() == [[2., 1., 4., 2.]]
    only_refined = InstanceData(bboxes=torch.tensor([[2., 4., 6., 8.]]))
    rescale_to_original(only_refined, (2.0, 2.0))
    assert only_refined.bboxes.tolist() == [[1., 2., 3., 4.]] and 'bboxes_init' not in only_refined


def test_refine_boxes_empty_and_all_invalid():
    head = QuadraticHead([0., 0., 1., 1.])
    cfg = RefineConfig()
    out = refine_boxes(head, None, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                       torch.zeros(0, dtype=torch.long), cfg, scores=torch.zeros(0))
    assert out.boxes.shape == (0, 4) and out.ebm_scores.shape == (0, ) and out.refined.shape == (0, )
    nan = torch.tensor([[float('nan'), 0., 1., 1.]])
    out = refine_boxes(head, None, nan, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), cfg)
    assert torch.isnan(out.boxes[0, 0]) and not out.refined[0]


# ------------------------------------------------------------------ checked when the model is built
mmdet = pytest.importorskip('mmdet')


def _build(model_cfg):
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    return MODELS.build(model_cfg)


def _shapes_ebm_cfg():
    from mmengine.config import Config
    from conftest import ROOT
    import ebm_det  # noqa: F401
    return Config.fromfile(str(ROOT / 'configs' / 'faster-rcnn_r18_fpn_ebm-nceplus_shapes.py'))


@pytest.mark.parametrize('where,value,match', [
    ('test_cfg', dict(num_step=5), r"unknown argument\(s\) \['num_step'\]"),
    ('test_cfg', dict(step_sizes=[1e-3, 1e-3]), '1 or 4 values'),
    ('test_cfg', dict(decay=2.0), 'decay'),
    ('ebm_head.loss', dict(type='NCEPlusLoss', bet=0.1), r"unknown argument\(s\) \['bet'\]"),
    ('ebm_head.loss', dict(type='NCEPlusLoss', num_sample=8), r"unknown argument\(s\) \['num_sample'\]"),
    ('ebm_head.loss', dict(num_samples=8), r"has no 'type'.*registered: \['DSMLoss'"),
    ('ebm_head.loss', dict(type='NCEPlusLos'), 'unknown EBM loss type'),
    ('ebm_head.loss', dict(method='nce_plus'), 'no longer supported'),
])
def test_bad_refinement_or_loss_settings_fail_when_the_model_is_built(where, value, match):
    cfg = _shapes_ebm_cfg()
    target = cfg.model
    *path, key = where.split('.')
    for p in path:
        target = target[p]
    target[key] = value
    with pytest.raises(ValueError, match=match):
        _build(cfg.model)


def test_tracker_and_roi_head_settings_are_checked_when_built():
    from ebm_det.tracking import EBMBoxRefiner
    cfg = _shapes_ebm_cfg()
    model = _build(cfg.model)
    with pytest.raises(ValueError, match='num_step'):
        EBMBoxRefiner(model.ebm_head, dict(num_step=3))
    with pytest.raises(ValueError, match=r"TrackRefineOptions: unknown argument\(s\) \['writeback'\]; valid: "
                       r"\['enabled', 'refine_tentative', 'refine_lost', 'write_back'\]"):
        _build(dict(type='EBMByteTracker', motion=dict(type='KalmanFilter'), ebm=dict(writeback=True)))
    with pytest.raises(ValueError, match='ebm.enabled must be True or False'):
        _build(dict(type='EBMSORTTracker', ebm=dict(enabled='no')))
    tracker = _build(dict(type='EBMSORTTracker', ebm=dict(refine_lost=False)))
    assert (tracker.ebm.enabled, tracker.ebm.refine_lost, tracker.ebm.write_back) == (True, False, False)
    with pytest.raises(ValueError, match='unknown argument'):
        tracker.ebm.replace(writeback=True)
    roi = dict(cfg.model.detector.roi_head, type='EBMRoIHead', ebm_test_cfg=dict(tol=-1.0),
               ebm_head=dict(type='EBMBoxHead', num_classes=5, in_channels=64))
    with pytest.raises(ValueError, match='tol'):
        _build(roi)


def test_the_loss_is_chosen_by_type_only():
    # no type: an error naming the key and the choices, not a silent merge into the head's default
    with pytest.raises(ValueError, match=r"has no 'type'.*registered: \[.*'NCEPlusLoss'"):
        _build(dict(type='EBMBoxHead', num_classes=2, in_channels=8, fc_channels=16, loss=dict(num_samples=8)))
    with pytest.raises(ValueError, match="has no 'type'"):
        build_loss(dict(num_samples=8))
    # what --cfg-options model.ebm_head.loss=dict(...) gives (a string): a TypeError that says how
    with pytest.raises(TypeError, match='one by one'):
        _build(dict(type='EBMBoxHead', num_classes=2, in_channels=8, fc_channels=16, loss='dict(num_samples=8)'))
    # a habitual _delete_=True (the base head has no loss to replace) is mmengine's, not the loss's
    head = _build(dict(type='EBMBoxHead', num_classes=2, in_channels=8, fc_channels=16,
                       loss=dict(_delete_=True, type='NCELoss', num_samples=8)))
    assert type(head.loss_fn).__name__ == 'NCELoss' and head.loss_fn.num_samples == 8
    # M has one home, the loss class: a head's default loss names only its type
    head = _build(dict(type='EBMBoxHead', num_classes=2, in_channels=8, fc_channels=16))
    assert type(head.loss_fn).__name__ == 'NCEPlusLoss' and head.loss_fn.num_samples == 128
    assert head.loss_fn.beta == 0.1
    head = _build(dict(type='EBMBoxHead', num_classes=2, in_channels=8, fc_channels=16,
                       loss=dict(type='NCEPlusLoss', num_samples=8)))
    assert head.loss_fn.num_samples == 8 and head.loss_fn.beta == 0.1
    custom = build_loss(dict(type='KLDISLoss', num_samples=4, label_sigma=0.05))
    assert _build(dict(type='EBMBoxHead', num_classes=2, in_channels=8, loss=custom)).loss_fn is custom


# ------------------------------------------------------------------------- features, dtypes, hooks
def _tiny_model(pooling='grid_sample'):
    cfg = _shapes_ebm_cfg()
    cfg.model.ebm_head.pooling = pooling
    torch.manual_seed(0)
    model = _build(cfg.model)
    model.init_weights()
    torch.nn.init.normal_(model.ebm_head.fc_score.weight, std=0.3)  # a non-flat f: boxes move
    return model.eval()


def _sample(shape=(96, 128), scale=(2.0, 2.0)):
    from mmdet.structures import DetDataSample
    return DetDataSample(metainfo=dict(img_shape=shape, ori_shape=(int(shape[0] / scale[1]), int(shape[1] / scale[0])),
                                       pad_shape=shape, scale_factor=scale, batch_input_shape=shape))


def test_detect_hands_features_over_once_and_leaves_no_hook():
    model = _tiny_model()
    model.detector.test_cfg.rcnn.score_thr = 0.0
    imgs = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected_feats = model.extract_feat(imgs)
        results, feats = model.detect(imgs, [_sample()], rescale=False)
    assert len(feats) == len(expected_feats)
    for a, b in zip(feats, expected_feats):
        torch.testing.assert_close(a, b)
    neck = model.detector.neck
    assert not neck._forward_hooks and not model.detector.backbone._forward_hooks  # nothing outlives the call
    pred = results[0].pred_instances
    assert len(pred) > 0 and {'bboxes_init', 'scores_init', 'ebm_scores'} <= set(pred.keys())
    # the boxes change frame once, at the end: rescaled = input-frame / scale_factor, for both sets
    with torch.no_grad():
        rescaled, _ = model.detect(imgs, [_sample()], rescale=True)
    torch.testing.assert_close(rescaled[0].pred_instances.bboxes, pred.bboxes / 2)
    torch.testing.assert_close(rescaled[0].pred_instances.bboxes_init, pred.bboxes_init / 2)
    # refinement can be asked for separately, on the same features
    with torch.no_grad():
        raw, feats = model.detect(imgs, [_sample()], rescale=False, refine=False)
        assert 'bboxes_init' not in raw[0].pred_instances
        model.refine(feats, raw)
    torch.testing.assert_close(raw[0].pred_instances.bboxes, pred.bboxes)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_precision_features_refine_with_a_float32_head(dtype):
    """A half-precision detector's maps meet a float32 head: the features are cast to the head's dtype."""
    from mmengine.structures import InstanceData

    from ebm_det.models import refine_instances
    model = _tiny_model()
    feats = [torch.randn(1, 64, 96 // s, 128 // s).to(dtype) for s in (4, 8, 16, 32)]
    pred = InstanceData(bboxes=torch.tensor([[10., 12., 60., 50.], [30., 30., 100., 90.]]),
                        scores=torch.tensor([0.9, 0.8]), labels=torch.tensor([0, 3]))
    with torch.no_grad():
        refine_instances(model.ebm_head, feats, [pred], [dict(img_shape=(96, 128))], model.refine_cfg)
    assert torch.isfinite(pred.ebm_scores).all() and not torch.equal(pred.bboxes, pred.bboxes_init)
    assert pred.bboxes.dtype == torch.float32


def test_autocast_refinement_keeps_the_rule_in_its_own_precision():
    """test_cfg.autocast='bfloat16': the head runs in bf16, scores are compared in float32, so
    every written-back box scores (in bf16) at least the detector's box, and the boxes stay close
    to the float32 refinement's."""
    model = _tiny_model()
    feats = [torch.randn(1, 64, 96 // s, 128 // s) for s in (4, 8, 16, 32)]
    boxes = torch.tensor([[10., 12., 60., 50.], [30., 30., 100., 90.], [5., 5., 40., 80.]])
    idx, labels = torch.zeros(3, dtype=torch.long), torch.tensor([0, 3, 1])
    shapes = torch.tensor([[96, 128]])
    with torch.no_grad():
        full = refine_boxes(model.ebm_head, feats, boxes, idx, labels, model.refine_cfg, img_shapes=shapes)
        half = refine_boxes(model.ebm_head, feats, boxes, idx, labels, model.refine_cfg.replace(autocast='bfloat16'),
                            img_shapes=shapes)
    assert half.refined.any() and torch.isfinite(half.boxes).all()
    assert half.ebm_scores.dtype == torch.float32
    assert (half.ebm_scores[half.refined] >= half.init_scores[half.refined]).all()
    assert (half.boxes - full.boxes).abs().max() < 2.0  # pixels, on boxes 35-70 px wide
    with pytest.raises(ValueError, match='autocast'):
        RefineConfig(autocast='int8')


@pytest.mark.parametrize('pooling', ['grid_sample', 'prroi'])
def test_head_refine_is_the_core_refiner_in_the_head_space(pooling):
    """``EBMBoxHead.refine`` is ``refine_by_gradient_ascent`` on ``head.score`` in (cx/w0, cy/h0, log w,
    log h), with the box's FPN level held fixed: the same result, computed by hand; and the head's
    pooling is the core's sampler of that name."""
    from ebm_det.core import roi_grid_sample, roi_prroi_pool
    model = _tiny_model(pooling)
    head = model.ebm_head
    feats = [torch.randn(1, 64, 96 // s, 128 // s) for s in (4, 8, 16, 32)]
    boxes = torch.tensor([[10., 12., 60., 50.], [30., 30., 100., 90.]])
    idx, labels = torch.zeros(2, dtype=torch.long), torch.tensor([0, 3])
    cfg = RefineConfig(num_steps=4)
    with torch.no_grad():
        res = head.refine(feats, boxes, idx, labels, cfg)
        prepared, levels = head.prepare_features(feats), head.map_levels(boxes)
        ref = refine_by_gradient_ascent(lambda b, i: head.score(prepared, b, idx[i], labels[i], levels=levels[i]),
                                        boxes, (8e-4, 8e-4, 3.2e-3, 3.2e-3), RefineConfig(num_steps=4, decay=0.5),
                                        space=head.space)
    assert isinstance(res, RefineResult)
    torch.testing.assert_close(res.boxes, ref.boxes)
    torch.testing.assert_close(res.scores, ref.scores)
    assert (res.attempted == 4).all() and (res.accepted <= res.attempted).all() and res.accepted.sum() > 0
    with torch.no_grad():
        if pooling == 'prroi':
            rois = roi_prroi_pool(prepared, boxes, idx, levels, head.featmap_strides, head.roi_size)
        else:
            rois = roi_grid_sample(prepared, boxes, idx, levels, head.featmap_strides, head.roi_size, 2)
        by_hand = head.fc_score(head.fcs(rois.flatten(1))).gather(1, labels[:, None])[:, 0]
    torch.testing.assert_close(res.init_scores, by_hand)


def test_prroi_head_trains_and_refines_raising_f():
    model = _tiny_model('prroi')
    head = model.ebm_head.train()
    feats = [torch.randn(2, 64, 96 // s, 128 // s) for s in (4, 8, 16, 32)]
    gt = [torch.tensor([[10., 12., 60., 50.]]), torch.tensor([[30., 30., 100., 90.], [5., 5., 40., 40.]])]
    loss = head.loss(feats, gt, [torch.tensor([0]), torch.tensor([3, 1])])['loss_ebm']
    loss.backward()
    assert torch.isfinite(loss) and head.fcs[0].weight.grad.abs().sum() > 0
    head.eval()
    boxes, idx, labels = torch.cat(gt), torch.tensor([0, 1, 1]), torch.tensor([0, 3, 1])
    with torch.no_grad():
        res = head.refine(feats, boxes, idx, labels, RefineConfig(step_sizes=(0.05, 0.05, 0.1, 0.1)))
    assert (res.scores >= res.init_scores).all() and (res.scores > res.init_scores).any()
    with pytest.raises(ValueError, match='pooling'):
        _build(dict(type="EBMBoxHead", num_classes=2, pooling="prroipool"))


# ------------------------------------------------------------- training throughput (frozen detector)
def test_head_updates_take_k_steps_on_one_detector_forward():
    from mmdet.structures import DetDataSample
    from mmengine.optim import OptimWrapper
    from mmengine.structures import InstanceData
    cfg = _shapes_ebm_cfg()
    cfg.model.head_updates = 3
    cfg.model.ebm_head.loss = dict(type='NCEPlusLoss', num_samples=8)
    torch.manual_seed(0)
    model = _build(cfg.model)
    model.init_weights()
    model.train()
    optim = OptimWrapper(torch.optim.SGD(model.ebm_head.parameters(), lr=0.1))
    calls = count_forwards_and_steps(model, optim)
    sample = DetDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), scale_factor=(1., 1.)))
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[5., 6., 40., 50.]]), labels=torch.tensor([2]))
    before = model.ebm_head.fc_score.weight.detach().clone()
    log = model.train_step(dict(inputs=[torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)],
                                data_samples=[sample]), optim)
    assert calls == dict(extract=1, steps=3) and 'loss_ebm' in log
    assert not torch.equal(before, model.ebm_head.fc_score.weight)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.detector.parameters())
    for bad in (dict(head_updates=0), dict(feature_cache=-1), dict(head_updates=2, freeze_detector=False)):
        with pytest.raises(ValueError):
            _build(dict(cfg.model, **bad))


def test_feature_cache_reuses_exact_inputs_only():
    from ebm_det.models.refine_detector import FeatureCache
    cache = FeatureCache(max_images=3)
    calls = []

    def extract(x):
        calls.append(x.shape[0])
        return (x * 2, x.mean(1, keepdim=True))

    g = torch.Generator().manual_seed(0)
    batch = torch.randn(2, 3, 8, 8, generator=g)
    first = cache.features(batch, extract)
    again = cache.features(batch.clone(), extract)  # the same pixels: from the cache
    assert calls == [2] and cache.hits == 2
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b)
    flipped = batch.flip(-1)  # an augmented view: a new entry, never the stale one
    out = cache.features(flipped, extract)
    assert calls == [2, 2]
    torch.testing.assert_close(out[0], flipped * 2)
    assert len(cache.store) == 3  # at most 3 images: the least recently used went first
    cache.features(flipped, extract)
    assert calls == [2, 2] and cache.hits == 4
    mixed = torch.stack([flipped[0], batch[0]])  # one cached image, one evicted: only that one runs
    out = cache.features(mixed, extract)
    assert calls == [2, 2, 1]
    torch.testing.assert_close(out[0], mixed * 2)
    torch.testing.assert_close(out[1], mixed.mean(1, keepdim=True))
    with pytest.raises(ValueError, match='image batches'):
        cache.features(dict(points=[]), extract)
