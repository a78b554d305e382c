"""Tracking: the video generator, EBMBoxRefiner, EBM trackers inside mmdet's MOT models (through the
Runner and MOTChallengeMetric), the tracking benchmark's MOT scores (mmdet's MOTChallengeMetric and the
motmetrics cross-check) on hand-checked cases, its constant-velocity tracker and OPE success AUC."""
import uuid

import numpy as np
import pytest
import torch

from conftest import ROOT

pytest.importorskip('mmdet')
pytest.importorskip('trackeval')
import ebm_det  # noqa: E402,F401
import ebm_det.tracking  # noqa: E402,F401
from ebm_det.core import RefineConfig  # noqa: E402
from ebm_det.models import EBMBoxHead  # noqa: E402
from ebm_det.tracking import EBMBoxRefiner, EBMByteTracker  # noqa: E402

pytest.importorskip('motmetrics')
# the tracking benchmark's scoring and single-object pieces (tools/benchmarks/tracking_*.py)
from tools.benchmarks import tracking_metrics as mot_scores  # noqa: E402
from tools.benchmarks import tracking_sot as sot  # noqa: E402
read_mot_txt = mot_scores.read_mot_txt


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """2 busy cores: one intra-op thread is several times faster than two fighting ones."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope='module')
def video(tmp_path_factory):
    """Two 12-frame 256 px sequences; the first has a stretch of frames without objects."""
    from ebm_det.synthetic import mot_video as gen
    out = tmp_path_factory.mktemp('video')
    gen.generate(out, 1, 12, size=256, seed=3, split='val', empty_prob=1.0)
    gen.generate(out / 'b', 1, 12, size=256, seed=4, split='val', empty_prob=0.0)
    return out


# ------------------------------------------------------------------------------------ generator
def test_generator_writes_motchallenge_and_cocovid(video, tmp_path):
    import json
    from ebm_det.synthetic import mot_video as gen
    seq = video / 'val' / 'SHAPES-01'
    assert sorted(p.name for p in (seq / 'img1').iterdir())[:2] == ['000001.jpg', '000002.jpg']
    assert len(list((seq / 'img1').iterdir())) == 12
    info = gen.read_seqinfo(seq)
    assert (info['name'], info['seqlength'], info['imwidth'], info['imext']) == ('SHAPES-01', '12', '256', '.jpg')
    gt = read_mot_txt(seq / 'gt' / 'gt.txt')
    assert gt.shape[1] == 9 and set(gt[:, 7]) <= {1, 8} and ((gt[:, 6] == 1) == (gt[:, 7] == 1)).all()
    assert (gt[:, 8] >= 0).all() and (gt[:, 8] <= 1).all()
    assert (gt[:, 2] >= 0).all() and (gt[:, 2] + gt[:, 4] <= 256).all() and (gt[:, 4] >= 1).all()
    # a stretch of frames with no object
    assert set(range(1, 13)) - set(gt[:, 0].astype(int))
    # the json holds the same boxes, with mmdet's MOTChallengeDataset keys
    coco = json.loads((video / 'annotations' / 'val_cocoformat.json').read_text())
    assert coco['categories'][0] == dict(id=1, name='pedestrian') and len(coco['categories']) == 13
    assert len(coco['annotations']) == len(gt) and len(coco['images']) == 12
    img = coco['images'][0]
    assert img['file_name'] == 'SHAPES-01/img1/000001.jpg' and img['frame_id'] == 0 and img['mot_frame_id'] == 1
    ann = coco['annotations'][0]
    assert {'instance_id', 'mot_instance_id', 'mot_conf', 'visibility', 'video_id', 'shape_label'} <= set(ann)
    # seeded: the same call gives the same labels
    gen.generate(tmp_path, 1, 12, size=256, seed=3, split='val', empty_prob=1.0)
    assert (tmp_path / 'val/SHAPES-01/gt/gt.txt').read_text() == (seq / 'gt' / 'gt.txt').read_text()


def test_generator_tracks_leave_and_objects_move(tmp_path):
    from ebm_det.synthetic import mot_video as gen
    gen.generate(tmp_path, 3, 40, size=128, seed=0, split='s', empty_prob=0.0)
    left, moved = 0, 0
    for k in (1, 2, 3):
        gt = read_mot_txt(tmp_path / f's/SHAPES-0{k}/gt/gt.txt')
        for tid in np.unique(gt[:, 1]):
            rows = gt[gt[:, 1] == tid]
            last = rows[-1]
            at_border = last[2] <= 0 or last[3] <= 0 or last[2] + last[4] >= 128 or last[3] + last[5] >= 128
            left += int(last[0] < 40 and at_border)
            moved += int(np.abs(rows[-1, 2:4] - rows[0, 2:4]).max() > 5)
    assert left >= 1 and moved >= 3


# -------------------------------------------------------------------------------------- refiner
def _head(num_classes=3):
    torch.manual_seed(0)
    head = EBMBoxHead(num_classes=num_classes, in_channels=8, fc_channels=32, featmap_strides=[4, 8],
                      loss=dict(type='NCEPlusLoss', sigmas=[[0.075] * 4], num_samples=4))
    head.init_weights()
    torch.nn.init.normal_(head.fc_score.weight, std=0.3)  # a non-flat score, so boxes move
    return head.eval()


def _feats(batch=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 8, 32, 32, generator=g), torch.randn(batch, 8, 16, 16, generator=g)]


def test_refiner_batched_equals_one_by_one_and_raises_scores():
    head = _head()
    refiner = EBMBoxRefiner(head, dict(num_steps=5, step_sizes=(0.05, 0.05, 0.1, 0.1)))
    feats = _feats()
    boxes = torch.tensor([[10., 12., 60., 50.], [30., 30., 100., 120.], [5., 5., 40., 70.], [50., 40., 90., 80.],
                          [20., 60., 70., 110.]])
    batch_idx = torch.tensor([0, 2, 1, 2, 0])
    labels = torch.tensor([0, 2, 1, 1, 2])
    out, scores = refiner.refine(feats, boxes, (128, 128), labels=labels, batch_idx=batch_idx)
    assert out.shape == (5, 4) and not torch.equal(out, boxes)
    for i in range(5):
        b = batch_idx[i]
        one, s = refiner.refine([f[b:b + 1] for f in feats], boxes[i:i + 1], (128, 128), labels=labels[i:i + 1])
        torch.testing.assert_close(one[0], out[i], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(s[0], scores[i], rtol=1e-4, atol=1e-4)
    init = head.refine(feats, boxes, batch_idx, labels, RefineConfig(num_steps=0)).scores
    assert (scores >= init - 1e-6).all() and (scores > init).any()
    assert all(p.grad is None for p in head.parameters())
    # labels=None: each box's best class at its input box
    best = refiner.best_labels(feats, boxes, batch_idx)
    out2, _ = refiner.refine(feats, boxes, (128, 128), labels=None, batch_idx=batch_idx)
    torch.testing.assert_close(out2, refiner.refine(feats, boxes, (128, 128), labels=best, batch_idx=batch_idx)[0])


def test_refiner_clamps_to_image_and_skips_invalid_boxes():
    refiner = EBMBoxRefiner(_head(), dict(num_steps=3, step_sizes=(0.5, 0.5, 0.5, 0.5)))
    feats = _feats(1)
    boxes = torch.tensor([[-20., -10., 40., 30.],  # partly outside
                          [100., 110., 160., 150.],  # past the bottom-right corner
                          [50., 50., 50., 70.],  # zero width: not refined
                          [float('nan'), 0., 10., 10.],  # not refined, returned as given
                          [30., 140., 50., 180.]])  # wholly below the image: not refined
    out, scores = refiner.refine(feats, boxes, (128, 120), labels=torch.zeros(5, dtype=torch.long))
    assert torch.isfinite(out[:3]).all() and torch.isnan(out[3, 0]) and torch.equal(out[4], boxes[4])
    refined = torch.isfinite(scores)
    assert refined[0] and not refined[2:].any()
    # each coordinate of a refined box is inside the image, or at most as far outside as the tracker's
    # box had it; one that clipping would leave scoring below its input comes back as given; a box
    # wholly below the image (the last) is not refined
    frame = torch.tensor([120., 128., 120., 128.])
    assert (out[refined] >= torch.clamp(boxes[refined], max=0)).all()
    assert (out[refined] <= torch.maximum(boxes[refined], frame)).all()
    assert refined[1] or torch.equal(out[1], boxes[1])
    assert out[2].tolist() == [50., 50., 50., 70.]
    # boxes in original-image pixels: scale_factor maps them to the input and back
    half, s2 = refiner.refine(feats, boxes[:2] / 2, (128, 120), labels=torch.zeros(2, dtype=torch.long),
                              scale_factor=(2.0, 2.0))
    torch.testing.assert_close(half * 2, out[:2])
    torch.testing.assert_close(s2, scores[:2])
    assert (half[refined[:2]][:, 0::2] <= torch.clamp(boxes[:2][refined[:2]][:, 0::2] / 2, min=60)).all()
    # nothing to refine
    empty, es = refiner.refine(feats, torch.zeros(0, 4), (128, 120))
    assert empty.shape == (0, 4) and es.shape == (0, )


def test_refiner_from_head_config_with_checkpoint(tmp_path):
    head = _head()
    torch.save(dict(state_dict={f'ebm_head.{k}': v for k, v in head.state_dict().items()}), tmp_path / 'ebm.pth')
    cfg = dict(type='EBMBoxHead', num_classes=3, in_channels=8, fc_channels=32, featmap_strides=[4, 8],
               loss=dict(type='NCEPlusLoss', sigmas=[[0.075] * 4], num_samples=4))
    refiner = EBMBoxRefiner(cfg, dict(num_steps=2), checkpoint=str(tmp_path / 'ebm.pth'))
    for k, v in head.state_dict().items():
        assert torch.equal(refiner.head.state_dict()[k], v), k


def test_refiner_from_config_extracts_features(video):
    import cv2
    cfg = ROOT / 'configs' / 'faster-rcnn_r18_fpn_ebm-nceplus_shapes.py'
    refiner = EBMBoxRefiner.from_config(str(cfg), num_steps=2)
    assert refiner.cfg.num_steps == 2 and refiner.cfg.step_sizes == refiner.detector.refine_cfg.step_sizes
    image = cv2.imread(str(video / 'val' / 'SHAPES-01' / 'img1' / '000001.jpg'))
    feats = refiner.features([image])
    assert feats[0].shape[0] == 1 and feats[0].shape[-2:] == (64, 64)  # stride 4 on 256 px
    data = refiner.detector.data_preprocessor(dict(inputs=[torch.from_numpy(image.transpose(2, 0, 1).copy())]), False)
    with torch.no_grad():
        torch.testing.assert_close(feats[0], refiner.detector.extract_feat(data['inputs'])[0])
    out, scores = refiner.refine(feats, torch.tensor([[10., 10., 60., 50.], [150., 140., 240., 230.]]), image.shape[:2])
    assert torch.isfinite(scores).all() and (out[:, 2] <= 256).all()


def test_constant_velocity_tracker_follows_refiner_and_detections():
    class Shift:  # a stand-in refiner that moves every box +2 px in x
        def refine(self, feats, boxes, img_shape, labels=None, scale_factor=None):
            return boxes + torch.tensor([2., 0., 2., 0.]), torch.zeros(len(boxes))

        def best_labels(self, feats, boxes, batch_idx=None):
            return torch.zeros(len(boxes), dtype=torch.long)

    cv = sot.ConstantVelocityTracker(Shift(), momentum=0.0)
    cv.add(['a'], torch.tensor([[10., 10., 20., 20.]]), feats=[torch.zeros(1)])
    assert cv.step(feats=[torch.zeros(1)])['a'].tolist() == [12., 10., 22., 20.]
    assert cv.step(feats=[torch.zeros(1)])['a'].tolist() == [16., 10., 26., 20.]  # v=2 then +2 refine
    plain = sot.ConstantVelocityTracker(None)
    plain.add([1], torch.tensor([[10., 10., 20., 20.]]))
    assert plain.step()[1].tolist() == [10., 10., 20., 20.]  # no measurement: static
    assert plain.step(dets=torch.tensor([[11., 10., 21., 20.], [90., 90., 99., 99.]]))[1].tolist() == [11., 10., 21., 20.]
    plain.remove([1])
    assert plain.step() == {}


# -------------------------------------------------------------------------------------- metrics
def _box(frame, tid, x, y=10.0, w=20.0, h=30.0, conf=1, cls=1):
    return [frame, tid, x, y, w, h, conf, cls, 1.0]


def test_metrics_perfect_tracker_is_one(video):
    seq = video / 'val' / 'SHAPES-01'
    gt = read_mot_txt(seq / 'gt' / 'gt.txt')
    assert mot_scores.seq_length(seq) == 12
    res = mot_scores.mot_challenge_metrics({'SHAPES-01': gt}, {'SHAPES-01': gt[:, :7]}, {'SHAPES-01': 12})
    assert res['MOTA'] == 1.0 and res['IDF1'] == 1.0 and res['HOTA'] == pytest.approx(1.0)
    mm = mot_scores.motmetrics_summary({'SHAPES-01': gt}, {'SHAPES-01': gt[:, :7]})
    assert mm['MOTA'] == 1.0 and mm['IDF1'] == 1.0


def test_metrics_hand_computed_id_switch_and_false_positive():
    # GT: A (id 1) and B (id 2), 4 frames, plus a don't-care object (conf 0, class 8) in frame 1
    gt = [_box(t, 1, 10 + 5 * t) for t in range(1, 5)] + [_box(t, 2, 150) for t in range(1, 5)]
    gt.append(_box(1, 3, 80, y=100, conf=0, cls=8))
    pred = [_box(t, 1 if t <= 2 else 3, 10 + 5 * t)[:7] for t in range(1, 5)]  # A: switch 1 -> 3 at frame 3
    pred += [_box(t, 2, 150)[:7] for t in range(1, 5)]
    pred.append(_box(2, 4, 80, y=200)[:7])  # one false positive, overlapping nothing
    pred.append(_box(1, 5, 80, y=100)[:7])  # on the don't-care object: ignored
    gt, pred = {'S': np.array(gt)}, {'S': np.array(pred)}
    r = mot_scores.mot_challenge_metrics(gt, pred, {'S': 4})
    # CLEAR: 8 GT boxes, TP 8, FP 1, FN 0, IDSW 1 -> MOTA = 1 - (0 + 1 + 1) / 8
    assert (r['TP'], r['FP'], r['FN'], r['IDSW']) == (8, 1, 0, 1)
    assert r['MOTA'] == pytest.approx(0.75)
    # Identity: A<->1 (or 3) 2 frames, B<->2 4 frames: IDTP 6, IDFN 2, IDFP 9 - 6 = 3
    assert (r['IDTP'], r['IDFN'], r['IDFP']) == (6, 2, 3)
    assert r['IDF1'] == pytest.approx(12 / 17)
    # HOTA with exact boxes (every alpha alike): DetA = 8 / 9; AssA = (4 * 1 + 4 * 2 / 4) / 8
    assert r['DetA'] == pytest.approx(8 / 9) and r['AssA'] == pytest.approx(0.75)
    assert r['HOTA'] == pytest.approx(np.sqrt(8 / 9 * 0.75))
    mm = mot_scores.motmetrics_summary(gt, pred)
    assert mm['MOTA'] == pytest.approx(0.75) and mm['IDF1'] == pytest.approx(12 / 17)
    assert (mm['IDSW'], mm['FP'], mm['FN']) == (1, 1, 0)


def test_metrics_frames_without_objects_and_empty_results():
    gt = {'S': np.array([_box(3, 1, 10), _box(4, 1, 12)])}  # frames 1, 2, 5 are empty
    score = mot_scores.mot_challenge_metrics
    r = score(gt, {'S': np.array([_box(3, 1, 10)[:7], _box(4, 1, 12)[:7]])}, {'S': 5})
    assert r['MOTA'] == 1.0 and r['IDF1'] == 1.0 and r['HOTA'] == pytest.approx(1.0)
    fp_on_empty_frame = {'S': np.array([_box(1, 7, 10)[:7]])}
    r = score(gt, fp_on_empty_frame, {'S': 5})
    assert r['FP'] == 1 and r['FN'] == 2 and r['MOTA'] == pytest.approx(1 - 3 / 2)
    mm = mot_scores.motmetrics_summary(gt, fp_on_empty_frame, {'S': 5})
    assert (mm['FP'], mm['FN']) == (1, 2) and mm['MOTA'] == pytest.approx(1 - 3 / 2)
    r = score(gt, {}, {'S': 5})
    assert r['MOTA'] == 0.0 and r['FN'] == 2


def test_success_auc_hand_computed():
    ious = [1.0, 0.5, 0.0]
    curve = sot.success_curve(ious)
    assert curve[0] == pytest.approx(2 / 3) and curve[10] == pytest.approx(1 / 3) and curve[-1] == 0
    assert sot.success_auc(ious) == pytest.approx((10 * 2 / 3 + 10 * 1 / 3) / 21)
    assert sot.success_auc([1.0] * 5) == pytest.approx(20 / 21) and sot.success_auc([]) == 0.0


# ------------------------------------------------------------------------- trackers, standalone
def test_byte_tracker_refines_predicted_boxes_and_handles_empty_frames():
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    head = _head(num_classes=1)
    refiner = EBMBoxRefiner(head, dict(num_steps=3, step_sizes=(0.05, 0.05, 0.1, 0.1)))
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    tracker = MODELS.build(dict(type='EBMByteTracker', motion=dict(type='KalmanFilter'), init_track_thr=0.5,
                                obj_score_thrs=dict(high=0.5, low=0.1)))
    assert isinstance(tracker, EBMByteTracker)
    tracker.bind_ebm(refiner)

    def frame(t, boxes):
        s = DetDataSample(metainfo=dict(frame_id=t, img_shape=(128, 128), scale_factor=(1.0, 1.0)))
        n = len(boxes)
        s.pred_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float).reshape(n, 4),
                                        scores=torch.full((n, ), 0.9), labels=torch.zeros(n, dtype=torch.long))
        return s

    def track(t, boxes):
        return tracker.track(frame(t, boxes), feats=_feats(1))

    moving = lambda t: [[10. + 4 * t, 20., 40. + 4 * t, 60.], [70., 70., 100., 110.]]  # noqa: E731
    out = track(0, moving(0))
    assert out.instances_id.tolist() == [0, 1]
    out = track(1, moving(1))
    assert out.instances_id.tolist() == [0, 1]
    ref = tracker.last_refinement
    assert sorted(ref['ids']) == [0, 1] and not torch.equal(ref['boxes'], ref['boxes_in'])
    assert (ref['boxes'] >= 0).all() and (ref['boxes'] <= 128).all()
    out = track(2, [])  # a frame without objects
    assert len(out) == 0 and tracker._frame is None
    out = track(3, moving(3))
    assert out.instances_id.tolist() == [0, 1]  # both tracks survive the empty frame
    # write_back: an unmatched track keeps its refined box as the Kalman position
    tracker.ebm = tracker.ebm.replace(write_back=True)
    track(4, moving(4)[:1])
    ref = tracker.last_refinement
    from mmdet.structures.bbox import bbox_xyxy_to_cxcyah
    k = ref['ids'].index(1)
    np.testing.assert_allclose(tracker.tracks[1].mean[:4], bbox_xyxy_to_cxcyah(ref['boxes'][k:k + 1].double())[0],
                               rtol=1e-5)
    tracker.ebm = tracker.ebm.replace(enabled=False, write_back=False)
    track(5, moving(5))
    assert tracker.last_refinement == {}
    tracker.ebm = tracker.ebm.replace(enabled=True)
    tracker.track(frame(6, moving(6)))  # no features given: nothing is refined
    assert tracker.last_refinement == {}


# ------------------------------------------------------------------ mmdet MOT models, via Runner
def _mot_runner(video, config, work_dir, stock=False, **options):
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(str(ROOT / 'configs' / config))
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = uuid.uuid4().hex
    cfg.test_dataloader.dataset.data_root = f'{video}/'
    cfg.test_dataloader.dataset.ann_file = 'annotations/val_cocoformat.json'
    # an untrained detector scores near 1/num_classes: low thresholds, so tracks exist
    det = cfg.model.detector
    det.detector.test_cfg.rcnn.update(score_thr=0.0, max_per_img=12)
    det.detector.test_cfg.rpn.update(nms_pre=200, max_per_img=100)
    det.test_cfg = dict(max_per_img=12)
    if cfg.model.tracker.type == 'EBMByteTracker':
        cfg.model.tracker.update(init_track_thr=0.0, obj_score_thrs=dict(high=0.15, low=0.05))
    else:
        cfg.model.tracker.obj_score_thr = 0.0
    cfg.merge_from_dict(options)
    if stock:  # mmdet's own ByteTrack and ByteTracker around our refine detector
        cfg.model.type = 'ByteTrack'
        cfg.model.pop('track_refine_cfg', None)
        cfg.model.tracker.type = 'ByteTracker'
        cfg.model.tracker.pop('ebm', None)
    torch.manual_seed(0)
    return Runner.from_cfg(cfg)


@pytest.mark.parametrize('config,stock', [('bytetrack_ebm_shapes-video.py', True),
                                          ('bytetrack_ebm_shapes-video.py', False),
                                          ('sort_ebm_shapes-video.py', False)])
def test_mot_model_refines_detections_and_tracks_through_runner(video, tmp_path, config, stock):
    """mmdet's MOT model loop (detector.predict then tracker.track per frame), our refine detector,
    the EBM tracker (or mmdet's own ByteTrack/ByteTracker: ``stock``), MOTChallengeDataset and
    MOTChallengeMetric (PyPI trackeval) end to end on a 12-frame sequence with empty frames."""
    runner = _mot_runner(video, config, tmp_path, stock=stock)
    model = runner.model
    seen = dict(det_moved=0, det=0, track_calls=0, track_moved=0)
    # mmdet's ByteTrack calls the detector's predict, ours its detect (which also returns the features)
    name = 'predict' if stock else 'detect'
    det_call = getattr(model.detector, name)

    def spy(*a, **k):
        out = det_call(*a, **k)
        p = (out if stock else out[0])[0].pred_instances
        seen['det'] += len(p)
        seen['det_moved'] += int((p.bboxes - p.bboxes_init).abs().sum(-1).gt(0).sum())
        return out

    setattr(model.detector, name, spy)
    if not stock:
        refine_ids = model.tracker._refine_ids

        def spy_refine(ids, boxes):
            refine_ids(ids, boxes)
            if ids:
                seen['track_calls'] += 1
                r = model.tracker.last_refinement
                seen['track_moved'] += int((r['boxes'] - r['boxes_in']).abs().sum(-1).gt(0).sum())

        model.tracker._refine_ids = spy_refine
    metrics = runner.test()
    for k in ('HOTA', 'MOTA', 'IDF1', 'IDSW'):
        assert f'motchallenge-metric/{k}' in metrics
    assert seen['det'] > 0 and seen['det_moved'] > 0  # the MOT model got refined detections
    if not stock:
        assert seen['track_calls'] > 0 and seen['track_moved'] > 0
        assert model.tracker._frame is None  # no features kept after the video


def test_mot_model_trains_only_the_ebm_head_on_still_images():
    """The MOT17 config's training path at CPU scale: TrackDataPreprocessor(use_det_processor) ->
    ByteTrack.loss -> EBMRefineDetector.loss: the EBM loss, the frozen detector untouched."""
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.structures import InstanceData
    cfg = Config.fromfile(str(ROOT / 'configs' / 'bytetrack_ebm_shapes-video.py'))
    cfg.model.data_preprocessor.use_det_processor = True
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).train()
    sample = DetDataSample(metainfo=dict(img_shape=(128, 128), ori_shape=(128, 128), scale_factor=(1., 1.)))
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[10., 20., 80., 90.], [60., 50., 120., 110.]]),
                                       labels=torch.tensor([0, 3]))
    data = model.data_preprocessor(
        dict(inputs=[torch.randint(0, 255, (3, 128, 128), dtype=torch.uint8)], data_samples=[sample]), True)
    losses = model.loss(data['inputs'], data['data_samples'])
    assert set(losses) == {'loss_ebm'} and torch.isfinite(losses['loss_ebm'])
    losses['loss_ebm'].backward()
    assert model.detector.ebm_head.fc_score.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.detector.detector.parameters())
