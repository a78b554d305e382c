"""Inputs from public bug reports (trackers, test-time augmentation, half precision), each a test with
the right value, and a property-based fuzz of the public refine entry points (hypothesis)."""
import math

import numpy as np
import pytest
import torch

pytest.importorskip('mmdet')
hypothesis = pytest.importorskip('hypothesis')
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import ebm_det  # noqa: E402,F401
from ebm_det.core import RefineConfig, refine_boxes  # noqa: E402
from ebm_det.models import EBMBoxHead, refine_instances  # noqa: E402
from ebm_det.tracking import EBMBoxRefiner  # noqa: E402

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
STRIDES = (4, 8)


def _head(num_classes=3):
    torch.manual_seed(0)
    head = EBMBoxHead(num_classes=num_classes, in_channels=8, fc_channels=32, featmap_strides=list(STRIDES),
                      loss=dict(num_samples=4))
    head.init_weights()
    torch.nn.init.normal_(head.fc_score.weight, std=0.3)  # a non-flat f, so boxes move
    return head.eval()


def _feats(batch, size, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 8, size // s, size // s, generator=g).to(dtype) for s in STRIDES]


# ------------------------------------------------------ 1. a degenerate box in the tracker's state
def _bytetracker(write_back=True):
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    tracker = MODELS.build(dict(type='EBMByteTracker', motion=dict(type='KalmanFilter'), init_track_thr=0.5,
                                obj_score_thrs=dict(high=0.5, low=0.1), ebm=dict(write_back=write_back)))
    tracker.bind_ebm(EBMBoxRefiner(_head(1), dict(num_steps=5, step_sizes=(0.05, 0.05, 0.1, 0.1))))
    return tracker


def _frame(t, boxes, size=64):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    s = DetDataSample(metainfo=dict(frame_id=t, img_shape=(size, size), scale_factor=(1.0, 1.0)))
    n = len(boxes)
    s.pred_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float).reshape(n, 4),
                                    scores=torch.full((n, ), 0.9), labels=torch.zeros(n, dtype=torch.long))
    return s


def test_byte_tracker_write_back_keeps_every_track_state_finite():
    """64 x 64 frames: one object stands still, one moves down 10 px a frame and leaves after frame 3.
    Its lost track's prediction leaves the image; a refined box clipped to zero height used to be
    written into the Kalman state as [40, 64, inf, 0], then [0, 0, nan, 0]."""
    tracker = _bytetracker(write_back=True)
    still = [5., 5., 25., 25.]
    for t in range(16):  # the unguarded path wrote [40.9, 64, inf, 0] at frame 12 with this head
        boxes = [still] + ([[30., 10. * t, 50., 10. * t + 20.]] if t <= 3 else [])
        out = tracker.track(_frame(t, boxes), feats=_feats(1, 64))
        assert torch.isfinite(out.bboxes).all(), t
        for tid, track in tracker.tracks.items():
            assert np.isfinite(track.mean).all() and np.isfinite(track.covariance).all(), (t, tid, track.mean)
            assert track.mean[2] > 0 and track.mean[3] > 0, (t, tid, track.mean)  # aspect ratio and height
    assert 0 in out.instances_id.tolist()  # the still object is still tracked, as itself


# ------------------------------------------------------ 2. test-time augmentation and before/after
def _shapes_model():
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from conftest import ROOT
    init_default_scope('mmdet')
    cfg = Config.fromfile(str(ROOT / 'configs' / 'faster-rcnn_r18_fpn_ebm-nceplus_shapes.py'))
    cfg.model.detector.test_cfg.rcnn.score_thr = 0.0
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.nn.init.normal_(model.ebm_head.fc_score.weight, std=0.3)
    return model.eval()


def _views(size=96):
    """One image and its horizontal flip, as mmdet's TestTimeAug packs them (already preprocessed)."""
    from mmdet.structures import DetDataSample
    img = torch.randint(0, 255, (3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = []
    for flip in (False, True):
        meta = dict(img_id=0, img_path='x.png', ori_shape=(size, size), img_shape=(size, size), scale_factor=(1., 1.),
                    flip=flip, flip_direction='horizontal' if flip else None)
        views.append((img.flip(-1) if flip else img, DetDataSample(metainfo=meta)))
    return dict(inputs=[[v[0]] for v in views], data_samples=[[v[1]] for v in views])


def test_tta_keeps_the_detectors_boxes_or_before_after_fails_loudly():
    from mmdet.registry import MODELS
    from ebm_det.evaluation import InitialPredictionMetric
    model = _shapes_model()
    from mmengine.config import ConfigDict
    tta_cfg = ConfigDict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)
    # mmdet's DetTTAModel drops bboxes_init: the before/after metric refuses to score the result
    stock = MODELS.build(dict(type='DetTTAModel', module=model, tta_cfg=tta_cfg))
    with torch.no_grad():
        merged = stock.test_step(_views())[0]
    assert 'bboxes_init' not in merged.pred_instances and len(merged.pred_instances) > 0
    metric = InitialPredictionMetric(metric=dict(type='CocoMetric', ann_file=None, metric='bbox'))
    with pytest.raises(ValueError, match='no \\*_init fields.*EBMDetTTAModel'):
        metric.process({}, [merged.to_dict()])
    # EBMDetTTAModel merges the pairs: each kept detection keeps its own detector box, flipped back
    ours = MODELS.build(dict(type='EBMDetTTAModel', module=model, tta_cfg=tta_cfg))
    with torch.no_grad():
        views = [model.test_step(dict(inputs=v, data_samples=s))[0] for v, s in
                 zip(_views()['inputs'], _views()['data_samples'])]
        merged = ours.test_step(_views())[0].pred_instances
    assert {'bboxes', 'bboxes_init', 'scores_init', 'ebm_scores'} <= set(merged.keys())
    torch.testing.assert_close(merged.bboxes, stock.test_step(_views())[0].pred_instances.bboxes)
    def unflip(b, w=96):
        return torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)

    # every view's detections, in the original image: (refined box, detector box)
    refined = torch.cat([views[0].pred_instances.bboxes, unflip(views[1].pred_instances.bboxes)])
    initial = torch.cat([views[0].pred_instances.bboxes_init, unflip(views[1].pred_instances.bboxes_init)])
    for box, init in zip(merged.bboxes, merged.bboxes_init):
        k = int((refined - box).abs().sum(1).argmin())
        torch.testing.assert_close(refined[k], box)
        torch.testing.assert_close(init, initial[k])
    assert not torch.equal(merged.bboxes, merged.bboxes_init)
    from ebm_det.evaluation import require_initial_fields
    require_initial_fields(ours.test_step(_views())[0].to_dict())  # the fields are there: no error


def test_refinement_disabled_still_writes_the_before_after_fields():
    model = _shapes_model()
    model.refine_cfg = model.refine_cfg.replace(enabled=False)
    data = _views()
    with torch.no_grad():
        pred = model.test_step(dict(inputs=data['inputs'][0], data_samples=data['data_samples'][0]))[0].pred_instances
    assert torch.equal(pred.bboxes, pred.bboxes_init) and torch.isinf(pred.ebm_scores).all()


# ------------------------------------------------------------------ 3. half-precision features
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_precision_features_in_the_3d_head_and_the_tracker_refiner(dtype):
    pytest.importorskip('mmdet3d')
    from ebm_det.models import EBMBoxHead3D
    torch.manual_seed(0)
    head3d = EBMBoxHead3D(in_channels=8, bev_range=(0., -20., 40., 20.), fc_channels=32, zh_channels=8,
                          loss=dict(num_samples=4))
    head3d.init_weights()
    boxes = torch.tensor([[10., 2., -1.7, 4., 1.7, 1.5, 0.3], [25., -8., -1.6, 4.4, 1.8, 1.6, 3.1]])
    out = refine_boxes(head3d, [torch.randn(1, 8, 40, 40).to(dtype)], boxes, torch.zeros(2, dtype=torch.long),
                       torch.zeros(2, dtype=torch.long), RefineConfig(step_sizes=0.05))
    assert out.refined.all() and torch.isfinite(out.boxes).all() and (out.ebm_scores >= out.init_scores).all()
    refiner = EBMBoxRefiner(_head(), dict(step_sizes=(0.05, 0.05, 0.1, 0.1)))
    refined, scores = refiner.refine(_feats(1, 64, dtype), torch.tensor([[10., 12., 40., 50.]]), (64, 64))
    assert torch.isfinite(scores).all() and refined.dtype == torch.float32


# --------------------------------------------------------------------------------- 4. fuzzing
COORD = st.one_of(st.floats(-40, 140, allow_nan=False, width=32), st.sampled_from([math.nan, math.inf, -math.inf]))


@st.composite
def image_boxes(draw, max_boxes=12):
    """A batch of 1-3 images of different sizes, each with 0..max_boxes boxes, some of them NaN,
    inf, zero or negative in size, or outside the image."""
    sizes = draw(st.lists(st.sampled_from([32, 48, 64]), min_size=1, max_size=3))
    per_image = []
    for _ in sizes:
        n = draw(st.integers(0, max_boxes))
        rows = []
        for _ in range(n):
            x1, y1 = draw(COORD), draw(COORD)
            w, h = draw(st.sampled_from([0.0, -3.0, 0.5, 4.0, 20.0, 60.0, 200.0])), draw(
                st.sampled_from([0.0, 2.0, 12.0, 40.0, 150.0]))
            rows.append([x1, y1, x1 + w, y1 + h])
        per_image.append(torch.tensor(rows, dtype=torch.float64).reshape(n, 4))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.float64]))
    return sizes, [b.to(dtype) for b in per_image]


def _instances(boxes, seed):
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(seed)
    n = len(boxes)
    return InstanceData(bboxes=boxes.clone(), scores=torch.rand(n, generator=g),
                        labels=torch.randint(0, 3, (n, ), generator=g))


@FUZZ
@given(image_boxes(), st.integers(0, 3), st.sampled_from([1, 3, 100]))
def test_fuzz_2d_refine_path(batch, num_steps, max_per_img):
    sizes, boxes = batch
    head = _head()
    side = max(sizes)
    preds = [_instances(b, i) for i, b in enumerate(boxes)]
    metas = [dict(img_shape=(s, s)) for s in sizes]
    cfg = RefineConfig(num_steps=num_steps, step_sizes=(0.05, 0.05, 0.1, 0.1), max_per_img=max_per_img)
    with torch.no_grad():
        refine_instances(head, _feats(len(sizes), side), preds, metas, cfg)
    for p, b, size in zip(preds, boxes, sizes):
        assert {'bboxes_init', 'scores_init', 'ebm_scores'} <= set(p.keys())
        assert p.bboxes.shape == b.shape and p.bboxes.dtype == b.dtype
        assert torch.allclose(p.bboxes_init, b, equal_nan=True)
        finite = torch.isfinite(b).all(-1)
        assert torch.isfinite(p.bboxes[finite]).all()
        moved = torch.isfinite(p.ebm_scores)
        assert torch.allclose(p.bboxes[~moved], b[~moved], equal_nan=True)  # unrefined: exactly as given
        r = p.bboxes[moved].float()
        assert ((r[:, 2:] - r[:, :2]) >= 1 - 1e-2).all() and (r >= 0).all() and (r <= size + 1e-2).all()
        assert int(moved.sum()) <= max_per_img


@FUZZ
@given(image_boxes(max_boxes=8), st.integers(1, 3))
def test_fuzz_refine_boxes_scores_never_drop(batch, num_steps):
    sizes, boxes = batch
    head = _head()
    flat = torch.cat(boxes).float()
    batch_idx = torch.cat([torch.full((len(b), ), i) for i, b in enumerate(boxes)]).long()
    with torch.no_grad():
        out = refine_boxes(head, _feats(len(sizes), max(sizes)), flat, batch_idx,
                           torch.zeros(len(flat), dtype=torch.long), RefineConfig(num_steps=num_steps, step_sizes=0.2),
                           img_shapes=torch.tensor([[s, s] for s in sizes]))
        assert (out.ebm_scores[out.refined] >= out.init_scores[out.refined]).all()
        if out.refined.any():  # ebm_scores is f at the returned box
            again = head.score_boxes(_feats(len(sizes), max(sizes)), out.boxes[out.refined], batch_idx[out.refined],
                                     torch.zeros(int(out.refined.sum()), dtype=torch.long),
                                     context_boxes=flat[out.refined])
            torch.testing.assert_close(again.float(), out.ebm_scores[out.refined], rtol=1e-4, atol=1e-4)


@FUZZ
@given(image_boxes(max_boxes=10), st.sampled_from([(1.0, 1.0), (2.0, 2.0), (0.5, 1.5)]))
def test_fuzz_box_refiner(batch, scale):
    sizes, boxes = batch
    refiner = EBMBoxRefiner(_head(), dict(num_steps=2, step_sizes=(0.05, 0.05, 0.1, 0.1)))
    b = boxes[0]
    with torch.no_grad():
        out, scores = refiner.refine(_feats(1, sizes[0]), b, (sizes[0], sizes[0]), scale_factor=scale)
    assert out.shape == b.shape and out.dtype == b.dtype and scores.shape == (len(b), )
    finite = torch.isfinite(b).all(-1)
    assert torch.isfinite(out[finite]).all()
    same = ~torch.isfinite(scores)
    assert torch.allclose(out[same], b[same], equal_nan=True)


@FUZZ
@given(st.lists(st.integers(0, 5), min_size=2, max_size=6), st.integers(0, 10 ** 6),
       st.sampled_from(['EBMByteTracker', 'EBMSORTTracker']), st.booleans())
def test_fuzz_trackers(counts, seed, kind, write_back):
    """Random detections (some outside the 64 x 64 frame, some tiny), a few frames, both trackers:
    every track state and output stays finite."""
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    if kind == 'EBMByteTracker':
        tracker = MODELS.build(dict(type=kind, motion=dict(type='KalmanFilter'), init_track_thr=0.3,
                                    obj_score_thrs=dict(high=0.5, low=0.1), ebm=dict(write_back=write_back)))
    else:
        tracker = MODELS.build(dict(type=kind, motion=dict(type='KalmanFilter', center_only=False), obj_score_thr=0.3,
                                    reid=None))
    tracker.bind_ebm(EBMBoxRefiner(_head(1), dict(num_steps=3, step_sizes=(0.1, 0.1, 0.2, 0.2))))
    g = torch.Generator().manual_seed(seed)
    for t, n in enumerate(counts):
        xy = torch.rand(n, 2, generator=g) * 90 - 20
        wh = torch.rand(n, 2, generator=g) * 40 + 0.5
        sample = _frame(t, torch.cat([xy, xy + wh], 1).tolist())
        sample.pred_instances.scores = torch.rand(n, generator=g)
        with torch.no_grad():
            if kind == 'EBMByteTracker':
                out = tracker.track(sample, feats=_feats(1, 64))
            else:
                out = tracker.track(None, torch.zeros(1, 3, 64, 64), sample, ebm_feats=_feats(1, 64))
        assert torch.isfinite(out.bboxes).all()
        for track in tracker.tracks.values():
            if hasattr(track, 'mean'):
                assert np.isfinite(track.mean).all()
