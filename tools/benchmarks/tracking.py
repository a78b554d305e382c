#!/usr/bin/env python3
"""Tracking with and without EBM refinement, on generated shapes video, from the same detections.

    python tools/benchmarks/tracking.py [--num-seqs 4 --num-frames 60 --long-frames 400]

Uses the 2D detector + EBM of ``tools/demo.sh`` (``work_dirs/demo/ebm/last_checkpoint``; the video's
objects are the same shapes), or trains small ones into ``work_dirs/tracking_bench`` when absent.
Each frame runs the detector once; its features and detections feed every variant:

* MOT (mmdet's ByteTracker, stock thresholds), scored with trackeval (HOTA / CLEAR / Identity,
  MOTChallenge preprocessing) and cross-checked with motmetrics:
  ``ByteTrack`` (detector boxes), ``+ EBM dets`` (detections refined, ``EBMRefineDetector``),
  ``+ EBM tracks`` (Kalman-predicted track boxes refined before association, ``EBMByteTracker``),
  ``+ EBM dets + tracks``.
* Single object, OPE (each GT track initialised with its first box, then tracked alone): a
  constant-velocity tracker alone (a static box), ``+ EBM`` (the prediction refined each frame by
  ``EBMBoxRefiner``), ``+ dets`` (the best-overlapping detection replaces the prediction), ``+ dets
  + EBM``; success AUC over 21 IoU thresholds.
* Memory: the mmdet MOT model (``EBMByteTrack``, both refinements) over one long sequence, frame
  by frame; resident memory sampled along the way.

Writes ``docs/figures/tracking.md`` (and ``.json``) with the exact command.
"""
import argparse
import copy
import glob
import json
import os
import os.path as osp
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tools' / 'data'))


def rss_mb() -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    return float('nan')


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------ the models
def find_or_train(args) -> tuple:
    """(config path, checkpoint) of a trained EBMRefineDetector: the demo's, else small new ones."""
    for work in (args.ebm_work_dir, osp.join(args.train_dir, 'ebm')):
        last = osp.join(work, 'last_checkpoint')
        if osp.exists(last):
            cfgs = sorted(glob.glob(osp.join(work, '*.py')))
            if cfgs:  # the config the checkpoint was trained with, as the Runner dumped it
                return cfgs[0], open(last).read().strip(), 'found'
    print(f'[tracking] no checkpoint in {args.ebm_work_dir}: training small ones in {args.train_dir}', flush=True)
    py = sys.executable
    data = args.shapes_data
    if not osp.exists(osp.join(data, 'annotations', 'instances_val.json')):
        subprocess.run([py, 'tools/data/generate_coco_shapes.py', '--out', data, '--num-train', '300', '--num-val',
                        '20'], cwd=ROOT, check=True)
    roots = [f'{k}.dataset.data_root={data}/' for k in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    ann = f'{data}/annotations/instances_val.json'
    det_dir, ebm_dir = osp.join(args.train_dir, 'det'), osp.join(args.train_dir, 'ebm')
    it = args.train_det_iters
    if not osp.exists(osp.join(det_dir, 'last_checkpoint')):
        subprocess.run([py, 'tools/train.py', 'configs/faster-rcnn_r18_fpn_shapes.py', '--work-dir', det_dir,
                        '--cfg-options', *roots, f'val_evaluator.ann_file={ann}', f'train_cfg.max_iters={it}',
                        f'train_cfg.val_interval={it + 1}', f'default_hooks.checkpoint.interval={it}',
                        f'param_scheduler.1.end={it}', f'param_scheduler.1.milestones=[{it * 3 // 4},{it * 9 // 10}]'],
                       cwd=ROOT, check=True)
    det_ckpt = open(osp.join(det_dir, 'last_checkpoint')).read().strip()
    it = args.train_ebm_iters
    subprocess.run([py, 'tools/train.py', 'configs/faster-rcnn_r18_fpn_ebm-nceplus_shapes.py', '--work-dir', ebm_dir,
                    '--cfg-options', *roots, f'model.detector_checkpoint={det_ckpt}', f'val_evaluator.0.ann_file={ann}',
                    f'val_evaluator.1.metric.ann_file={ann}', f'train_cfg.max_iters={it}',
                    f'train_cfg.val_interval={it + 1}', f'default_hooks.checkpoint.interval={it}',
                    f'param_scheduler.0.end={it}', f'param_scheduler.0.milestones=[{it * 2 // 3},{it * 5 // 6}]'],
                   cwd=ROOT, check=True)
    return sorted(glob.glob(osp.join(ebm_dir, '*.py')))[0], open(osp.join(ebm_dir, 'last_checkpoint')).read().strip(), \
        'trained'


def build_detector(cfg_path: str, ckpt: str):
    import ebm_det  # noqa: F401
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    cfg = Config.fromfile(cfg_path)
    init_default_scope('mmdet')
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg['detector_checkpoint'] = None
    model = MODELS.build(model_cfg)
    load_checkpoint(model, ckpt, map_location='cpu', strict=True, logger='silent')
    return cfg, model.eval()


# ------------------------------------------------------------------------------------- the loop
class Frame:
    """One frame through the detector: features, raw and refined detections."""

    def __init__(self, model, image: np.ndarray, frame_id: int):
        from mmdet.structures import DetDataSample
        from ebm_det.models.refine_detector import refine_instances
        h, w = image.shape[:2]
        meta = dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0), frame_id=frame_id)
        data = model.data_preprocessor(
            dict(inputs=[torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))],
                 data_samples=[DetDataSample(metainfo=meta)]), False)
        with torch.no_grad():
            out = model.detector.predict(data['inputs'], data['data_samples'], rescale=True)[0]
            self.feats = model._feats[0]
            model._feats.clear()
            self.raw = out.pred_instances
            self.refined = copy.deepcopy(self.raw)
            cfg = {k: v for k, v in model.test_cfg.items() if k != 'enabled'}
            refine_instances(model.ebm_head, self.feats, [self.refined], [out.metainfo],
                             [out.metainfo['scale_factor']], cfg)
        self.meta = dict(out.metainfo, frame_id=frame_id)
        self.img_shape = out.metainfo['img_shape'][:2]

    def sample(self, refined: bool):
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData
        s = DetDataSample(metainfo=self.meta)
        p = self.refined if refined else self.raw
        s.pred_instances = InstanceData(bboxes=p.bboxes.clone(), scores=p.scores.clone(), labels=p.labels.clone())
        return s


MOT_VARIANTS = (('ByteTrack', False, False), ('+ EBM dets', True, False), ('+ EBM tracks', False, True),
                ('+ EBM dets + tracks', True, True))
SOT_VARIANTS = (('constant velocity', False, False), ('+ EBM', True, False), ('+ dets', False, True),
                ('+ dets + EBM', True, True))


def make_tracker(tracker_cfg: dict, refiner, ebm_on: bool):
    from mmdet.registry import MODELS
    cfg = copy.deepcopy(tracker_cfg)
    cfg['type'] = 'EBMByteTracker'
    cfg['ebm'] = dict(cfg.get('ebm', {}), enabled=ebm_on)
    tracker = MODELS.build(cfg)
    tracker.bind_ebm(refiner, None)
    return tracker


def run_sequences(model, refiner, tracker_cfg, data_root: Path, seqs, sot_det_thr: float):
    import cv2
    from ebm_det.tracking import ConstantVelocityTracker
    from ebm_det.tracking.metrics import box_iou_xyxy, read_mot_txt, seq_length
    mot = {name: {} for name, _, _ in MOT_VARIANTS}
    sot_ious = {name: [] for name, _, _ in SOT_VARIANTS}
    n_frames, t0 = 0, time.perf_counter()
    for seq in seqs:
        gt = read_mot_txt(data_root / seq / 'gt' / 'gt.txt')
        length = seq_length(data_root / seq)
        trackers = {name: make_tracker(tracker_cfg, refiner, trk) for name, _, trk in MOT_VARIANTS}
        rows = {name: [] for name in trackers}
        sots = {name: ConstantVelocityTracker(refiner if ebm else None) for name, ebm, _ in SOT_VARIANTS}
        visible = gt[gt[:, 7] == 1]
        first = {int(i): int(visible[visible[:, 1] == i, 0].min()) for i in np.unique(visible[:, 1])}
        last = {int(i): int(visible[visible[:, 1] == i, 0].max()) for i in np.unique(visible[:, 1])}
        for t in range(1, length + 1):
            image = cv2.imread(str(data_root / seq / 'img1' / f'{t:06d}.jpg'))
            fr = Frame(model, image, t - 1)
            for (name, det_ref, _), tracker in zip(MOT_VARIANTS, trackers.values()):
                out = tracker.track(fr.sample(det_ref), feats=fr.feats)
                b = out.bboxes.cpu().numpy()
                for k in range(len(out)):
                    rows[name].append([t, int(out.instances_id[k]) + 1, b[k, 0], b[k, 1], b[k, 2] - b[k, 0],
                                       b[k, 3] - b[k, 1], float(out.scores[k])])
            gt_t = {int(r[1]): np.array([r[2], r[3], r[2] + r[4], r[3] + r[5]]) for r in visible[visible[:, 0] == t]}
            for (name, ebm, use_dets), sot in zip(SOT_VARIANTS, sots.values()):
                dets = fr.refined if ebm else fr.raw
                keep = dets.scores >= sot_det_thr
                pred = sot.step(fr.feats, fr.img_shape, dets.bboxes[keep] if use_dets else None)
                for tid, box in pred.items():
                    if tid in gt_t:
                        sot_ious[name].append(float(box_iou_xyxy(box.numpy(), gt_t[tid])[0]))
                new = [i for i in gt_t if first[i] == t]
                if new:
                    sot.add(new, torch.tensor(np.stack([gt_t[i] for i in new])).float(), feats=fr.feats)
                sot.remove([i for i in sot.ids if last[i] <= t])
            n_frames += 1
        for name in rows:
            mot[name][seq] = np.array(rows[name]).reshape(-1, 7)
        print(f'[tracking] {seq}: {length} frames, {n_frames / (time.perf_counter() - t0):.2f} frames/s overall',
              flush=True)
    return mot, sot_ious, n_frames, time.perf_counter() - t0


def memory_run(cfg, ckpt: str, data_root: Path, seq: str, sample_every: int) -> list:
    """The mmdet MOT model frame by frame over a long sequence; (frame, RSS MB) samples."""
    import cv2
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample, TrackDataSample
    from mmengine.runner import load_checkpoint
    from ebm_det.tracking.metrics import seq_length
    mot_cfg = dict(type='EBMByteTrack', detector=copy.deepcopy(cfg.model), tracker=copy.deepcopy(TRACKER_CFG),
                   data_preprocessor=dict(type='TrackDataPreprocessor', mean=[123.675, 116.28, 103.53],
                                          std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=32))
    mot_cfg['detector']['detector_checkpoint'] = None
    model = MODELS.build(mot_cfg).eval()
    load_checkpoint(model.detector, ckpt, map_location='cpu', strict=True, logger='silent')
    length = seq_length(data_root / seq)
    samples = []
    for t in range(length):
        image = cv2.imread(str(data_root / seq / 'img1' / f'{t + 1:06d}.jpg'))
        h, w = image.shape[:2]
        frame = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0), frame_id=t,
                                            img_path=str(data_root / seq / 'img1' / f'{t + 1:06d}.jpg')))
        track = TrackDataSample(video_data_samples=[frame])
        data = model.data_preprocessor(dict(inputs=[torch.from_numpy(image.transpose(2, 0, 1)).unsqueeze(0)],
                                            data_samples=[track]), False)
        with torch.no_grad():
            model.predict(data['inputs'], data['data_samples'])
        if t == 0 or (t + 1) % sample_every == 0 or t == length - 1:
            samples.append((t + 1, round(rss_mb(), 1), len(model.tracker.tracks)))
    return samples


def runner_check(cfg, ckpt: str, data_root: Path, work_dir: str) -> dict:
    """The mmdet path: configs/bytetrack_ebm_shapes-video.py (with the benchmark's detector config)
    through the Runner, MOTChallengeDataset and MOTChallengeMetric, with and without refinement."""
    import uuid
    from mmengine.config import Config
    from mmengine.runner import Runner, load_checkpoint
    out = {}
    for name, on in (('ByteTrack', False), ('+ EBM dets + tracks', True)):
        mot = Config.fromfile(str(ROOT / 'configs' / 'bytetrack_ebm_shapes-video.py'))
        mot.model.detector = copy.deepcopy(cfg.model)
        mot.model.detector.detector_checkpoint = None
        mot.model.detector.test_cfg = dict(mot.model.detector.get('test_cfg') or {}, enabled=on)
        mot.model.tracker.ebm.enabled = on
        mot.test_dataloader.dataset.data_root = f'{data_root}/'
        mot.work_dir = work_dir
        mot.experiment_name = uuid.uuid4().hex
        mot.log_level = 'WARNING'
        runner = Runner.from_cfg(mot)
        load_checkpoint(runner.model.detector, ckpt, map_location='cpu', strict=True, logger='silent')
        metrics = runner.test()
        out[name] = {k.split('/')[-1]: float(v) for k, v in metrics.items() if k.split('/')[-1] in
                     ('HOTA', 'MOTA', 'IDF1', 'IDSW')}
    return out


TRACKER_CFG = dict(type='EBMByteTracker', motion=dict(type='KalmanFilter'), obj_score_thrs=dict(high=0.6, low=0.1),
                   init_track_thr=0.7, weight_iou_with_det_scores=True,
                   match_iou_thrs=dict(high=0.1, low=0.5, tentative=0.3), num_frames_retain=30,
                   ebm=dict(enabled=True, refine_tentative=True, refine_lost=True, write_back=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--ebm-work-dir', default='work_dirs/demo/ebm')
    parser.add_argument('--train-dir', default='work_dirs/tracking_bench')
    parser.add_argument('--shapes-data', default='data/shapes')
    parser.add_argument('--train-det-iters', type=int, default=400)
    parser.add_argument('--train-ebm-iters', type=int, default=200)
    parser.add_argument('--data', default='data/mot_gen/bench')
    parser.add_argument('--num-seqs', type=int, default=4)
    parser.add_argument('--num-frames', type=int, default=60)
    parser.add_argument('--long-frames', type=int, default=400, help='memory run length (0: skip)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--sot-det-thr', type=float, default=0.3)
    parser.add_argument('--track-steps', type=int, default=None, help='refinement steps for tracks (default: as dets)')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--check-runner', action='store_true',
                        help='also run configs/bytetrack_ebm_shapes-video.py through the Runner and MOTChallengeMetric')
    parser.add_argument('--out', default='docs/figures/tracking.md')
    args = parser.parse_args()
    os.chdir(ROOT)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import generate_mot_video
    from ebm_det.tracking import EBMBoxRefiner, evaluate_mot, motmetrics_summary, success_auc
    from ebm_det.tracking.metrics import read_mot_txt

    cfg_path, ckpt, origin = find_or_train(args)
    cfg, model = build_detector(cfg_path, ckpt)
    refiner = EBMBoxRefiner.from_detector(model, **({} if args.track_steps is None else
                                                    dict(num_steps=args.track_steps)))
    data = Path(args.data)
    split = 'val'
    if not (data / 'annotations' / f'{split}_cocoformat.json').exists():
        generate_mot_video.generate(data, args.num_seqs, args.num_frames, 256, args.seed, split)
    seqs = [f'SHAPES-{k + 1:02d}' for k in range(args.num_seqs)]
    mot, sot_ious, n_frames, secs = run_sequences(model, refiner, TRACKER_CFG, data / split, seqs, args.sot_det_thr)

    gts = {s: read_mot_txt(data / split / s / 'gt' / 'gt.txt') for s in seqs}
    mot_rows = []
    for name, _, _ in MOT_VARIANTS:
        r = evaluate_mot(data / split, mot[name], seqs)['COMBINED']
        mm = motmetrics_summary(gts, mot[name])
        mot_rows.append(dict(variant=name, HOTA=r['HOTA'], MOTA=r['MOTA'], IDF1=r['IDF1'], IDSW=int(r['IDSW']),
                             FP=int(r['CLR_FP']), FN=int(r['CLR_FN']), DetA=r['DetA'], AssA=r['AssA'],
                             mm_MOTA=mm['MOTA'], mm_IDF1=mm['IDF1']))
    sot_rows = [dict(variant=name, success_auc=success_auc(sot_ious[name]), mean_iou=float(np.mean(sot_ious[name])),
                     frames=len(sot_ious[name])) for name, _, _ in SOT_VARIANTS]

    check = {}
    if args.check_runner:
        t0 = time.perf_counter()
        check = runner_check(cfg, ckpt, data, osp.join(args.train_dir, 'runner_check'))
        print(f'[tracking] runner check: {time.perf_counter() - t0:.0f} s', flush=True)

    memory = []
    if args.long_frames > 0:
        long_root = Path(args.data + '_long')
        if not (long_root / 'annotations' / 'long_cocoformat.json').exists():
            generate_mot_video.generate(long_root, 1, args.long_frames, 256, args.seed, 'long')
        t0 = time.perf_counter()
        memory = memory_run(cfg, ckpt, long_root / 'long', 'SHAPES-01', max(1, args.long_frames // 8))
        print(f'[tracking] memory run: {args.long_frames} frames in {time.perf_counter() - t0:.0f} s', flush=True)

    cmd = 'python tools/benchmarks/tracking.py ' + ' '.join(shlex.quote(a) for a in sys.argv[1:])
    md = [
        '# Tracking with EBM box refinement (generated shapes video)', '',
        f'Command: `{cmd.strip()}`', '',
        f'Detector + EBM: `{cfg_path}` with `{ckpt}` ({origin}); refinement of detections: '
        f"{ {k: model.test_cfg[k] for k in ('num_steps', 'step_sizes', 'decay')} }; of tracks: "
        f'num_steps={refiner.num_steps}, step_sizes={refiner.step_sizes}.',
        f'Data: `tools/data/generate_mot_video.py`, {args.num_seqs} sequences x {args.num_frames} frames, 256 px, '
        f'seed {args.seed} ({n_frames} frames, {sum(len(g) for g in gts.values())} GT boxes); one detector pass per '
        f'frame feeds every variant ({n_frames / secs:.2f} frames/s for all variants together, '
        f'{args.threads} thread(s)).', '',
        '## MOT: mmdet ByteTracker (stock thresholds), trackeval (MOTChallenge preprocessing)', '',
        '| variant | HOTA | MOTA | IDF1 | IDSW | FP | FN | DetA | AssA | motmetrics MOTA | motmetrics IDF1 |',
        '|---|---|---|---|---|---|---|---|---|---|---|',
        *[f"| {r['variant']} | {r['HOTA']:.4f} | {r['MOTA']:.4f} | {r['IDF1']:.4f} | {r['IDSW']} | {r['FP']} | "
          f"{r['FN']} | {r['DetA']:.4f} | {r['AssA']:.4f} | {r['mm_MOTA']:.4f} | {r['mm_IDF1']:.4f} |"
          for r in mot_rows], '',
        '`+ EBM dets`: detections refined by the EBM (`EBMRefineDetector`); `+ EBM tracks`: each track\'s '
        'Kalman-predicted box refined on the frame before association (`EBMByteTracker`). Same detector pass, '
        'same raw detections in every row.', '',
        '## Single object (OPE): constant-velocity tracker, success AUC (21 IoU thresholds)', '',
        '| variant | success AUC | mean IoU | scored frames |', '|---|---|---|---|',
        *[f"| {r['variant']} | {r['success_auc']:.4f} | {r['mean_iou']:.4f} | {r['frames']} |" for r in sot_rows], '',
        'Each GT track starts from its first GT box and is tracked alone: `constant velocity` (no measurement: '
        'the box stays), `+ EBM` (the prediction refined by `EBMBoxRefiner` each frame), `+ dets` (the '
        f'best-overlapping detection with score >= {args.sot_det_thr} replaces the prediction at IoU >= 0.3), '
        '`+ dets + EBM` (refined prediction, refined detections).', '',
    ]
    if check:
        md += ['## Cross-check: the same model through mmdet\'s Runner (`configs/bytetrack_ebm_shapes-video.py`, '
               '`MOTChallengeDataset`, `MOTChallengeMetric` with PyPI trackeval)', '',
               '| variant | HOTA | MOTA | IDF1 | IDSW |', '|---|---|---|---|---|',
               *[f"| {k} | {v['HOTA']:.4f} | {v['MOTA']:.4f} | {v['IDF1']:.4f} | {int(v['IDSW'])} |"
                 for k, v in check.items()], '']
    if memory:
        md += ['## Memory over a long sequence: `EBMByteTrack` (both refinements), frame by frame', '',
               f'{args.long_frames} frames; resident set size after each sample, peak {peak_rss_mb():.0f} MB '
               '(process peak, including the evaluation above).', '',
               '| frame | RSS (MB) | live tracks |', '|---|---|---|',
               *[f'| {f} | {m} | {n} |' for f, m, n in memory], '']
    text = '\n'.join(md)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    Path(args.out).with_suffix('.json').write_text(json.dumps(dict(
        command=cmd.strip(), config=cfg_path, checkpoint=ckpt, mot=mot_rows, sot=sot_rows, memory=memory, runner=check,
        frames=n_frames, seconds=secs), indent=1))


if __name__ == '__main__':
    main()
