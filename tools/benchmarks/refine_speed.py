"""Refinement cost against the detector, against its own floor, training overhead and memory.

    python -m tools.benchmarks.refine_speed [--device cpu|cuda] [--repeats 3] [--out docs/figures/refine_speed.md]
        [--autocast none bfloat16] [--num-steps 10 5] [--fc-channels 1024] [--skip pointpillars train memory]

1. refine vs detector: Faster R-CNN R50-FPN and RetinaNet R50-FPN (random weights) at 800x1333,
   100 boxes per image, T = 10, batch 1 and 2: detector inference time, refinement time, ratio;
   PointPillars (KITTI car config) on a KITTI-size cloud (120k points), 50 boxes, batch 1 and 2.
2. refine vs floor: box-steps per second, and the time of 3*T head forwards for the same boxes
   over the refinement time (the floor: each step is a forward, a backward ~ 2 forwards).
3. training overhead: an NCE+ EBM train step (frozen detector's features, M = 128 samples per
   GT box, 10 GT boxes per image) against a plain Faster R-CNN train step.
4. memory: peak memory of refining N boxes (100 -> 10,000), unchunked and chunked.
Weights are random: only time and memory are measured. Models come from the stack's own
``mmdet.apis.init_detector`` / ``mmdet3d.apis.init_model``; one refinement is
``ebm_det.core.refine_boxes`` (select -> T gradient steps -> clip), as in the detectors.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

from ebm_det.core import RefineConfig, refine_boxes
from tools.benchmarks.common import ROOT, command_line, load_model, median_seconds, rss_mb, write_report

NUM_CLASSES = 80  # COCO: the random boxes' labels and the memory test's head
IMAGE_SIZE = (800, 1344)  # (h, w): 800x1333 padded to a multiple of 32
GT_PER_IMAGE = 10
STEPS = 10  # T
BOXES_PER_IMAGE = 100
BOXES_PER_FRAME = 50  # PointPillars
CLOUD_POINTS = 120000  # a KITTI-size cloud
KITTI_RANGE = ((0.0, -39.68, -3.0, 0.0), (69.12, 39.68, 1.0, 1.0))  # (x, y, z, intensity) low, high
CAR_SIZE = (3.9, 1.6, 1.56)  # (l, w, h) metres, the random 3D boxes' mean size
MEMORY_COUNTS = (100, 1000, 3000, 10000)
MEMORY_CHUNK = 1000
MEMORY_STEPS = 2
MEMORY_POLL_S = 0.002


def fake_batch(batch: int, device: str, h: int = IMAGE_SIZE[0], w: int = IMAGE_SIZE[1],
               gt_per_img: int = GT_PER_IMAGE):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(batch):
        s = DetDataSample(metainfo=dict(img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0),
                                        batch_input_shape=(h, w)))
        xy = torch.rand(gt_per_img, 2, generator=g) * torch.tensor([w - 200.0, h - 200.0])
        wh = 20 + torch.rand(gt_per_img, 2, generator=g) * 180
        s.gt_instances = InstanceData(bboxes=torch.cat([xy, xy + wh], 1).to(device),
                                      labels=torch.randint(NUM_CLASSES, (gt_per_img, ), generator=g).to(device))
        samples.append(s)
    return torch.randn(batch, 3, h, w, generator=g).to(device), samples


def random_boxes(batch: int, per_img: int, h: int, w: int, device: str):
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(batch * per_img, 2, generator=g) * torch.tensor([w - 300.0, h - 300.0])
    wh = 16 + torch.rand(batch * per_img, 2, generator=g) * 280
    boxes = torch.cat([xy, xy + wh], 1).to(device)
    return boxes, torch.arange(batch, device=device).repeat_interleave(per_img), torch.randint(
        NUM_CLASSES, (batch * per_img, ), generator=g).to(device)


def _row(detector: str, batch: int, n: int, steps: int, t_det: float, t_ref: float, t_fwd: float) -> dict:
    row = dict(detector=detector, batch=batch, boxes=n, det_s=t_det, refine_s=t_ref, ratio=t_ref / t_det,
               box_steps_per_s=n * steps / t_ref, floor_s=3 * steps * t_fwd, floor_ratio=3 * steps * t_fwd / t_ref)
    print(row, flush=True)
    return row


def bench_refine_vs_detector(config: str, device: str, repeats: int, boxes_per_img: int = BOXES_PER_IMAGE,
                             steps=(STEPS, ), autocasts=(None, ), fc_channels: int = 1024):
    """Rows per batch size, per number of steps T in ``steps`` and per ``RefineConfig.autocast``
    setting (the detector timed once per batch size)."""
    wrapper = load_model(f'configs/{config}', device=device, options={'model.ebm_head.fc_channels': fc_channels})
    head = wrapper.ebm_head
    rows = []
    for batch in (1, 2):
        inputs, samples = fake_batch(batch, device)
        with torch.no_grad():  # the inner detector's own prediction (and, from the same pass, its features)
            t_det = median_seconds(lambda: wrapper.detect(inputs, samples, refine=False), repeats)
            _, feats = wrapper.detect(inputs, samples, refine=False)
        boxes, bidx, labels = random_boxes(batch, boxes_per_img, inputs.shape[2], inputs.shape[3], device)
        shapes = torch.tensor([[inputs.shape[2], inputs.shape[3]]] * batch, device=device)
        for num_steps, autocast in [(t, a) for t in steps for a in autocasts]:
            cfg = RefineConfig(num_steps=num_steps, autocast=autocast)
            amp = torch.autocast(device, dtype=getattr(torch, autocast or 'float32'), enabled=autocast is not None)
            with torch.no_grad():
                t_ref = median_seconds(
                    lambda: refine_boxes(head, feats, boxes, bidx, labels, cfg, img_shapes=shapes), repeats)
                fmaps = head.prepare_features(feats)
                levels = head.map_levels(boxes)
                with amp:
                    t_fwd = median_seconds(lambda: head.score(fmaps, boxes, bidx, labels, levels=levels), repeats)
            name = config.split('_ebm')[0] + (f', fc {fc_channels}' if fc_channels != 1024 else '') + \
                (f', T={num_steps}' if num_steps != STEPS else '') + (f', autocast {autocast}' if autocast else '')
            rows.append(_row(name, batch, len(boxes), num_steps, t_det, t_ref, t_fwd))
    return rows


def random_lidar_boxes(n: int, generator: torch.Generator, device: str):
    """(n, 7) car-sized LiDAR boxes (x, y, z, l, w, h, yaw) spread over KITTI's range."""
    lo, hi = torch.tensor(KITTI_RANGE[0][:3]), torch.tensor(KITTI_RANGE[1][:3])
    xyz = lo + (hi - lo) * torch.rand(n, 3, generator=generator)
    size = torch.tensor(CAR_SIZE) * (0.8 + 0.4 * torch.rand(n, 3, generator=generator))
    yaw = (torch.rand(n, 1, generator=generator) * 2 - 1) * torch.pi
    return torch.cat([xyz, size, yaw], 1).to(device)


def bench_refine_vs_pointpillars(device: str, repeats: int, boxes_per_frame: int = BOXES_PER_FRAME,
                                 steps: int = STEPS, points: int = CLOUD_POINTS):
    """The same for the full-scale PointPillars car config: a random cloud over KITTI's range."""
    from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
    wrapper = load_model('configs/pointpillars_hv_secfpn_ebm-nce_kitti-3d-car.py', device=device, lidar=True)
    head = wrapper.ebm_head
    cfg = RefineConfig(num_steps=steps)
    g = torch.Generator().manual_seed(0)
    lo, hi = torch.tensor(KITTI_RANGE[0]), torch.tensor(KITTI_RANGE[1])
    rows = []
    for batch in (1, 2):
        clouds = [(lo + (hi - lo) * torch.rand(points, 4, generator=g)).to(device) for _ in range(batch)]
        samples = [Det3DDataSample(metainfo=dict(box_type_3d=LiDARInstance3DBoxes, sample_idx=i)) for i in range(batch)]
        data = dict(inputs=dict(points=clouds), data_samples=samples)

        def detect():  # the wrapper holds the detector's data preprocessor (voxelisation): part of its inference
            pre = wrapper.data_preprocessor(data, False)
            return wrapper.detect(pre['inputs'], pre['data_samples'], refine=False)

        with torch.no_grad():
            t_det = median_seconds(detect, repeats)
            _, feats = detect()
        n = batch * boxes_per_frame
        boxes = random_lidar_boxes(n, g, device)
        bidx = torch.arange(batch, device=device).repeat_interleave(boxes_per_frame)
        labels = torch.zeros(n, dtype=torch.long, device=device)
        with torch.no_grad():
            t_ref = median_seconds(lambda: refine_boxes(head, feats, boxes, bidx, labels, cfg), repeats)
            bev = head.prepare_features(feats)
            t_fwd = median_seconds(lambda: head.score(bev, boxes, bidx, labels), repeats)
        rows.append(_row('pointpillars_kitti-3d-car', batch, n, steps, t_det, t_ref, t_fwd))
    return rows


def bench_train_overhead(device: str, repeats: int):
    wrapper = load_model('configs/faster-rcnn_r50_fpn_ebm-nceplus_1x_coco.py', device=device)
    det = wrapper.detector
    inputs, samples = fake_batch(2, device)
    det.train()
    det.requires_grad_(True)  # the wrapper froze it; a plain detector step trains everything

    def det_step():
        losses = det.loss(inputs, samples)
        det.parse_losses(losses)[0].backward()

    t_det = median_seconds(det_step, repeats)
    det.zero_grad()
    det.requires_grad_(False)
    wrapper.train()

    def ebm_step():
        wrapper.parse_losses(wrapper.loss(inputs, samples))[0].backward()

    t_ebm = median_seconds(ebm_step, repeats)
    with torch.no_grad():  # the frozen detector's share of the EBM step
        t_feat = median_seconds(lambda: det.extract_feat(inputs), repeats)
    row = dict(detector_train_step_s=t_det, ebm_train_step_s=t_ebm, ratio=t_ebm / t_det, frozen_features_s=t_feat,
               head_ratio=(t_ebm - t_feat) / t_det)
    print(row, flush=True)
    return row


def _memory_child(n: int, chunk: int, device: str) -> None:
    """Run in a subprocess: print the peak extra memory (MB) of refining n boxes: CUDA's peak
    allocation, or on CPU the peak resident set sampled every 2 ms by a thread."""
    import threading
    from ebm_det.models import EBMBoxHead
    head = EBMBoxHead(num_classes=NUM_CLASSES, in_channels=256).to(device)
    h, w = IMAGE_SIZE
    feats = [torch.randn(1, 256, h // 4 // s, w // 4 // s, device=device) for s in (1, 2, 4, 8)]  # P2-P5
    boxes, bidx, labels = random_boxes(1, n, h, w, device)
    shapes = torch.tensor([[h, w]], device=device)
    cfg = RefineConfig(num_steps=MEMORY_STEPS, chunk_size=chunk or None)
    base, peak, done = rss_mb(), [0.0], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(MEMORY_POLL_S)

    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        threading.Thread(target=poll, daemon=True).start()
    with torch.no_grad():
        refine_boxes(head, feats, boxes, bidx, labels, cfg, img_shapes=shapes)
    done.set()
    used = torch.cuda.max_memory_allocated() / 2**20 - base if device == 'cuda' else max(peak[0], rss_mb()) - base
    print(json.dumps(dict(boxes=n, chunk=chunk, peak_mb=used)))


def bench_memory(device: str, counts=MEMORY_COUNTS, chunk: int = MEMORY_CHUNK):
    """Peak memory of refining each count of boxes, unchunked and in chunks of ``chunk``: one
    subprocess per run (``--memory-child``), so no run sees another's allocations."""
    rows = []
    for c in (0, chunk):
        for n in counts:
            child = ['-m', 'tools.benchmarks.refine_speed', '--memory-child', str(n), str(c), '--device', device]
            out = subprocess.run([sys.executable, *child], capture_output=True, text=True, cwd=ROOT)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith('{')]
            rows.append(json.loads(line[-1]) if line else dict(boxes=n, chunk=c, error=out.stderr[-300:]))
            print(rows[-1], flush=True)
    return rows


def to_markdown(res: dict, device: str, command: str) -> str:
    lines = [f'Device: {device} ({os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}). '
             f'Command: `{command}`', '', '| detector | batch | boxes | detector s | refine s | refine/detector | '
             'box-steps/s | 3T head fwd s | floor/refine |', '|---|---|---|---|---|---|---|---|---|']
    for r in res['refine']:
        lines.append(f"| {r['detector']} | {r['batch']} | {r['boxes']} | {r['det_s']:.3f} | {r['refine_s']:.3f} | "
                     f"{r['ratio']:.2f} | {r['box_steps_per_s']:.0f} | {r['floor_s']:.3f} | {r['floor_ratio']:.2f} |")
    t = res.get('train')
    if t is not None:
        lines += ['', f"Train step: detector {t['detector_train_step_s']:.3f} s, EBM (frozen detector, M=128, "
                  f"10 GT/img, batch 2) {t['ebm_train_step_s']:.3f} s, ratio {t['ratio']:.2f}; of the EBM step, the frozen "
                  f"detector's features take {t['frozen_features_s']:.3f} s and the head "
                  f"{t['head_ratio']:.2f} of a detector step"]
    if res.get('memory'):
        lines += ['', '| boxes | chunk | peak MB |', '|---|---|---|']
    for m in res.get('memory', []):
        lines.append(f"| {m['boxes']} | {m['chunk'] or 'none'} | {m.get('peak_mb', float('nan')):.0f} |")
    return '\n'.join(lines) + '\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per measurement (median, after one warm-up)')
    parser.add_argument('--out', default=None, help='write a markdown table here')
    parser.add_argument('--skip', nargs='*', default=[], choices=['refine', 'pointpillars', 'train', 'memory'],
                        help='sections to leave out: refine (the 2D detectors), pointpillars, train (the training '
                        'overhead), memory')
    parser.add_argument('--autocast', nargs='+', default=['none'], choices=['none', 'bfloat16', 'float16'],
                        help='RefineConfig.autocast settings to time for the 2D detectors (each beside the same '
                        'detector time)')
    parser.add_argument('--fc-channels', type=int, default=1024, help="the 2D EBM head's fc width")
    parser.add_argument('--num-steps', type=int, nargs='+', default=[STEPS],
                        help='refinement steps T to time for the 2D detectors (each with every --autocast)')
    parser.add_argument('--memory-child', nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return _memory_child(*args.memory_child, args.device)
    res = dict(refine=[], memory=[])  # sections skipped with --skip are left out of the table
    if 'refine' not in args.skip:
        for cfg in ('faster-rcnn_r50_fpn_ebm-nceplus_1x_coco.py', 'retinanet_r50_fpn_ebm-nceplus_1x_coco.py'):
            res['refine'] += bench_refine_vs_detector(cfg, args.device, args.repeats, autocasts=[
                None if a == 'none' else a for a in args.autocast], fc_channels=args.fc_channels, steps=args.num_steps)
    if 'pointpillars' not in args.skip:
        res['refine'] += bench_refine_vs_pointpillars(args.device, args.repeats)
    if 'train' not in args.skip:
        res['train'] = bench_train_overhead(args.device, args.repeats)
    if 'memory' not in args.skip:
        res['memory'] = bench_memory(args.device)
    md = to_markdown(res, args.device, command_line('tools.benchmarks.refine_speed'))
    if args.out:
        write_report(md, args.out)
    else:
        print(md)


if __name__ == '__main__':
    main()
