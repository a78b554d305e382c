"""The benchmarks' shared plumbing (tools/benchmarks/common.py) and the pieces of the benchmarks that
now call the package or the stack instead of their own copies: each gives the numbers of the code it
replaced (written out here as the reference) on a small fixed input."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip('mmdet')
from mmdet.structures import DetDataSample  # noqa: E402
from mmdet.structures.bbox import bbox_overlaps  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

from ebm_det.evaluation import best_overlaps  # noqa: E402
from tools.benchmarks import common  # noqa: E402

SHAPES_EBM = 'configs/faster-rcnn_r18_fpn_ebm-nceplus_shapes.py'


def test_median_seconds_runs_at_the_process_threads():
    """``repeats`` timed runs after the Timer's warm-up, at this process's torch threads (the Timer's
    own default is one), and the median of them."""
    seen = []

    def fn():
        seen.append(torch.get_num_threads())

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seconds = common.median_seconds(fn, repeats=3)
    finally:
        torch.set_num_threads(old)
    assert 0 < seconds < 0.1
    assert len(seen) >= 4 and set(seen) == {2}


def test_timed_returns_the_output_of_one_call():
    calls = []
    out, seconds = common.timed(lambda a, b=0: calls.append(a) or a + b, 2, b=3)
    assert out == 5 and calls == [2] and seconds >= 0


def test_parse_options_as_cfg_options():
    assert common.parse_options(['a.b=1', 'c=[8e-3,3.2e-2]', 'd=bfloat16', 'e=None', 'f=x=y']) == {
        'a.b': 1, 'c': [8e-3, 3.2e-2], 'd': 'bfloat16', 'e': None, 'f': 'x=y'}


def test_test_checkpoint_runs_tools_test_as_before(tmp_path, monkeypatch):
    """The tools/test.py command line of shapes_2d's former ``test_checkpoint`` (EBM config: both
    evaluators' annotation files), and ``reuse`` reads a finished run back without running."""
    calls = []
    out = tmp_path / 'm.json'
    monkeypatch.setattr(common.subprocess, 'run',
                        lambda cmd, **kw: calls.append(cmd) or out.write_text(json.dumps({'coco/bbox_mAP': 0.5})))
    data, ckpt = 'data/x', 'work/ebm/iter_1.pth'
    assert common.test_checkpoint(SHAPES_EBM, ckpt, out, ['model.test_cfg.num_steps=10'], tmp_path / 'w',
                                  data=data) == {'coco/bbox_mAP': 0.5}
    ann = f'{data}/annotations/instances_val.json'
    assert calls[0][1:] == ['tools/test.py', SHAPES_EBM, ckpt, '--work-dir', str(tmp_path / 'w'), '--out-json',
                            str(out), '--cfg-options', f'test_dataloader.dataset.data_root={data}/',
                            f'test_evaluator.0.ann_file={ann}', f'test_evaluator.1.metric.ann_file={ann}',
                            'model.test_cfg.num_steps=10']
    assert common.test_checkpoint(SHAPES_EBM, ckpt, out, reuse=True) == {'coco/bbox_mAP': 0.5} and len(calls) == 1


def refined_sample(seed: int, num_pred: int = 12, num_gt: int = 4) -> DetDataSample:
    """A refine detector's result with ground truth: random boxes of 3 classes in a 100 px image,
    the refined ones moved a little from the initial ones."""
    g = torch.Generator().manual_seed(seed)

    def boxes(n):
        xy = torch.rand(n, 2, generator=g) * 60
        return torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 30], 1)

    gt = boxes(num_gt)
    init = torch.cat([gt + torch.randn(num_gt, 4, generator=g) * 3, boxes(num_pred - num_gt)])
    s = DetDataSample(metainfo=dict(img_shape=(100, 100)))
    s.gt_instances = InstanceData(bboxes=gt, labels=torch.randint(3, (num_gt, ), generator=g))
    labels = torch.cat([s.gt_instances.labels, torch.randint(3, (num_pred - num_gt, ), generator=g)])
    s.pred_instances = InstanceData(bboxes=init + torch.randn(num_pred, 4, generator=g), bboxes_init=init,
                                    labels=labels, scores=torch.rand(num_pred, generator=g),
                                    scores_init=torch.rand(num_pred, generator=g))
    return s


def test_shapes_2d_localisation_is_the_metric():
    """shapes_2d's ``localisation`` (now ``RefinementLocalisationMetric``) gives the numbers of its
    former own loop over ``match_refined_detections``."""
    from ebm_det.evaluation import match_refined_detections
    from tools.benchmarks import shapes_2d
    results = [refined_sample(seed) for seed in range(5)]
    matched = [match_refined_detections(r.to_dict(), shapes_2d.MATCH_SCORE, shapes_2d.MATCH_IOU) for r in results]
    before = torch.cat([m['iou_init'] for m in matched])
    after = torch.cat([m['iou'] for m in matched])
    assert len(before) > 3
    expected = dict(matched=len(before), iou_before=float(before.mean()), iou_after=float(after.mean()),
                    improved=float((after > before).float().mean()))
    assert shapes_2d.localisation(results) == expected
    none = shapes_2d.localisation([])
    assert none['matched'] == 0 and all(np.isnan(none[k]) for k in ('iou_before', 'iou_after', 'improved'))


def test_best_overlaps_is_the_rule_it_replaced():
    """The metric's class-masked maximum and the trackers' plain one, as they were written."""
    s = refined_sample(0)
    init, gt = s.pred_instances.bboxes_init, s.gt_instances.bboxes
    same = s.pred_instances.labels[:, None] == s.gt_instances.labels[None]
    ref = torch.where(same, bbox_overlaps(init, gt), torch.tensor(-1.0)).max(1)
    best, j = best_overlaps(init, gt, same)
    assert torch.equal(best, ref[0]) and torch.equal(j, ref[1])
    best, j = best_overlaps(gt, init)
    ref = bbox_overlaps(gt, init).max(1)
    assert torch.equal(best, ref[0]) and torch.equal(j, ref[1])


def test_tracking_score_detections_as_before():
    """tracking.py's detections table: per GT object its best raw detection (IoU >= GT_HIT_IOU) and
    the same detection refined, exactly as its former own matcher gave them."""
    pytest.importorskip('motmetrics')
    from tools.benchmarks import tracking
    frame = tracking.FrameDetections(dict(img_shape=(100, 100)), ())
    expected = {}
    gt = refined_sample(7).gt_instances.bboxes
    for src, seed in (('detector', 1), ('noisy GT', 2)):
        p = refined_sample(seed).pred_instances
        frame.dets[src] = (InstanceData(bboxes=p.bboxes_init), InstanceData(bboxes=p.bboxes))
        best, j = bbox_overlaps(gt, p.bboxes_init.float()).max(1)
        hit = best >= tracking.GT_HIT_IOU
        expected[(src, False)] = best[hit].tolist()
        expected[(src, True)] = bbox_overlaps(p.bboxes[j[hit]].float(), gt[hit], is_aligned=True).tolist()
    det_ious = {k: [] for k in expected}
    tracking.score_detections(frame, gt, det_ious)
    assert det_ious == expected and any(det_ious.values())


def test_tracking_detect_frame_as_before():
    """``detect_frame`` (the config's test pipeline) gives the detections and features of the former
    hand-built metainfo on a 256 px frame (a detector of random weights), with the frame id."""
    pytest.importorskip('motmetrics')
    from tools.benchmarks import tracking
    torch.manual_seed(0)
    model = common.load_model(SHAPES_EBM)
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    frame = tracking.detect_frame(model, tracking.frame_pipeline(model.cfg), image, 3)
    meta = dict(img_shape=(256, 256), ori_shape=(256, 256), scale_factor=(1.0, 1.0), frame_id=3)
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))],
                                            data_samples=[DetDataSample(metainfo=meta)]), False)
        results, feats = model.detect(data['inputs'], data['data_samples'], rescale=False, refine=False)
    assert frame.meta['frame_id'] == 3 and frame.img_shape == (256, 256)
    assert all(torch.equal(a, b) for a, b in zip(frame.feats, feats))
    raw = frame.dets['detector'][0]
    assert torch.equal(raw.bboxes, results[0].pred_instances.bboxes)
    assert torch.equal(raw.scores, results[0].pred_instances.scores)


def test_calibrate_gate_and_run_demo_commands(tmp_path, monkeypatch):
    """small_data's former tools/calibrate_gate.py command line (per class, with options) and the
    margins read back; tools/demo.sh gets its variables as strings over the given environment."""
    calls = []
    out = tmp_path / 'gate.json'

    def run(cmd, **kw):
        calls.append((cmd, kw.get('env')))
        if 'tools/calibrate_gate.py' in cmd:
            out.write_text(json.dumps({'min_gain': [0.5, 'inf']}))

    monkeypatch.setattr(common.subprocess, 'run', run)
    assert common.calibrate_gate(SHAPES_EBM, 'c.pth', 'annotations/instances_calib.json', 'data/x/', 'train/', out,
                                 ['model.ebm_head.dropout=0.5'], per_class=True) == [0.5, float('inf')]
    assert calls[0][0][1:] == ['tools/calibrate_gate.py', SHAPES_EBM, 'c.pth', '--ann-file',
                               'annotations/instances_calib.json', '--data-root', 'data/x/', '--img-prefix', 'train/',
                               '--out', str(out), '--device', 'cpu', '--per-class', '--cfg-options',
                               'model.ebm_head.dropout=0.5']
    common.run_demo({'WORK': 'w', 'PATH': '/bin'}, EBM_ITERS=600, RUN_TEST=0)
    assert calls[1] == (['bash', 'tools/demo.sh'], {'WORK': 'w', 'PATH': '/bin', 'EBM_ITERS': '600', 'RUN_TEST': '0'})


def test_write_coco_subset(tmp_path):
    full = dict(info={}, images=[dict(id=i) for i in (3, 1, 2)],
                annotations=[dict(id=k, image_id=i) for k, i in enumerate((1, 2, 2, 3))], categories=[])
    path = tmp_path / 'sub.json'
    common.write_coco_subset(full, [2, 3], path)
    assert json.loads(path.read_text()) == dict(info={}, images=[dict(id=3), dict(id=2)],
                                                annotations=[dict(id=1, image_id=2), dict(id=2, image_id=2),
                                                             dict(id=3, image_id=3)], categories=[])


def test_command_line_quotes_the_module_run():
    assert common.command_line('tools.benchmarks.x', ['--head-options', 'model.a=[1, 2]']) == \
        "python -m tools.benchmarks.x --head-options 'model.a=[1, 2]'"
    assert common.command_line('tools.benchmarks.x', []) == 'python -m tools.benchmarks.x'
