"""Refinement cost against the detector, against its own floor, training overhead and memory.

    python tools/benchmarks/refine_speed.py [--device cpu|cuda] [--repeats 3] [--out docs/figures/refine_speed.md]

1. refine vs detector: Faster R-CNN R50-FPN and RetinaNet R50-FPN (random weights) at 800x1333,
   100 boxes per image, T = 10, batch 1 and 2: detector inference time, refinement time, ratio;
   PointPillars (KITTI car config) on a KITTI-size cloud (120k points), 50 boxes, batch 1 and 2.
2. refine vs floor: box-steps per second, and the time of 3*T head forwards for the same boxes
   over the refinement time (the floor: each step is a forward, a backward ~ 2 forwards).
3. training overhead: an NCE+ EBM train step (frozen detector's features, M = 128 samples per
   GT box, 10 GT boxes per image) against a plain Faster R-CNN train step.
4. memory: peak memory of refining N boxes (100 -> 10,000), unchunked and chunked.
Weights are random: only time and memory are measured.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def timed(fn, repeats: int, device: str) -> float:
    """Median wall time of fn() over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device == 'cuda':
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def build_detector(config: str, device: str, scope: str = 'mmdet'):
    import ebm_det  # noqa: F401
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(str(ROOT / 'configs' / config))
    init_default_scope(scope)
    model = MODELS.build(cfg.model)
    model.init_weights = lambda: None
    return model.to(device).eval()


def fake_batch(batch: int, device: str, h: int = 800, w: int = 1344, gt_per_img: int = 10):
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
                                      labels=torch.randint(80, (gt_per_img, ), generator=g).to(device))
        samples.append(s)
    return torch.randn(batch, 3, h, w, generator=g).to(device), samples


def random_boxes(batch: int, per_img: int, h: int, w: int, device: str):
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(batch * per_img, 2, generator=g) * torch.tensor([w - 300.0, h - 300.0])
    wh = 16 + torch.rand(batch * per_img, 2, generator=g) * 280
    boxes = torch.cat([xy, xy + wh], 1).to(device)
    return boxes, torch.arange(batch, device=device).repeat_interleave(per_img), torch.randint(
        80, (batch * per_img, ), generator=g).to(device)


def _row(detector: str, batch: int, n: int, steps: int, t_det: float, t_ref: float, t_fwd: float) -> dict:
    row = dict(detector=detector, batch=batch, boxes=n, det_s=t_det, refine_s=t_ref, ratio=t_ref / t_det,
               box_steps_per_s=n * steps / t_ref, floor_s=3 * steps * t_fwd, floor_ratio=3 * steps * t_fwd / t_ref)
    print(row, flush=True)
    return row


def bench_refine_vs_detector(config: str, device: str, repeats: int, boxes_per_img: int = 100, steps: int = 10):
    wrapper = build_detector(config, device)
    head = wrapper.ebm_head
    rows = []
    for batch in (1, 2):
        inputs, samples = fake_batch(batch, device)
        with torch.no_grad():
            t_det = timed(lambda: wrapper.detector.predict(inputs, samples), repeats, device)
            feats = wrapper.detector.extract_feat(inputs)
        boxes, bidx, labels = random_boxes(batch, boxes_per_img, inputs.shape[2], inputs.shape[3], device)
        shapes = torch.tensor([[inputs.shape[2], inputs.shape[3]]] * batch, device=device)
        with torch.no_grad():
            t_ref = timed(lambda: head.refine(feats, boxes, bidx, labels, shapes, num_steps=steps), repeats, device)
            fmaps = head.prepare_features(feats)
            levels = head.map_levels(boxes)
            t_fwd = timed(lambda: head.score(fmaps, boxes, bidx, levels, labels), repeats, device)
        rows.append(_row(config.split('_ebm')[0], batch, len(boxes), steps, t_det, t_ref, t_fwd))
    return rows


def bench_refine_vs_pointpillars(device: str, repeats: int, boxes_per_frame: int = 50, steps: int = 10,
                                 points: int = 120000):
    """The same for the full-scale PointPillars car config: a random cloud over KITTI's range."""
    from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
    config = 'pointpillars_hv_secfpn_ebm-nce_kitti-3d-car.py'
    wrapper = build_detector(config, device, scope='mmdet3d')
    head = wrapper.ebm_head
    g = torch.Generator().manual_seed(0)
    lo, hi = torch.tensor([0.0, -39.68, -3.0, 0.0]), torch.tensor([69.12, 39.68, 1.0, 1.0])
    rows = []
    for batch in (1, 2):
        clouds = [(lo + (hi - lo) * torch.rand(points, 4, generator=g)).to(device) for _ in range(batch)]
        samples = [Det3DDataSample(metainfo=dict(box_type_3d=LiDARInstance3DBoxes, sample_idx=i)) for i in range(batch)]
        data = dict(inputs=dict(points=clouds), data_samples=samples)
        # the wrapper holds the detector's data preprocessor (voxelisation): part of its inference
        with torch.no_grad():
            t_det = timed(lambda: wrapper.detector.predict(*wrapper.data_preprocessor(data, False).values()), repeats,
                          device)
            feats = wrapper.detector.extract_feat(wrapper.data_preprocessor(data, False)['inputs'])
        n = batch * boxes_per_frame
        xyz = lo[:3] + (hi[:3] - lo[:3]) * torch.rand(n, 3, generator=g)
        size = torch.tensor([3.9, 1.6, 1.56]) * (0.8 + 0.4 * torch.rand(n, 3, generator=g))
        yaw = (torch.rand(n, 1, generator=g) * 2 - 1) * torch.pi
        boxes = torch.cat([xyz, size, yaw], 1).to(device)
        bidx = torch.arange(batch, device=device).repeat_interleave(boxes_per_frame)
        labels = torch.zeros(n, dtype=torch.long, device=device)
        with torch.no_grad():
            t_ref = timed(lambda: head.refine(feats, boxes, bidx, labels, num_steps=steps), repeats, device)
            bev = head.prepare_features(feats)
            t_fwd = timed(lambda: head.score(bev, boxes, bidx, labels), repeats, device)
        rows.append(_row('pointpillars_kitti-3d-car', batch, n, steps, t_det, t_ref, t_fwd))
    return rows


def bench_train_overhead(device: str, repeats: int):
    wrapper = build_detector('faster-rcnn_r50_fpn_ebm-nceplus_1x_coco.py', device)
    det = wrapper.detector
    inputs, samples = fake_batch(2, device)
    det.train()
    det.requires_grad_(True)  # the wrapper froze it; a plain detector step trains everything

    def det_step():
        losses = det.loss(inputs, samples)
        det.parse_losses(losses)[0].backward()

    t_det = timed(det_step, repeats, device)
    det.zero_grad()
    det.requires_grad_(False)
    wrapper.train()

    def ebm_step():
        wrapper.parse_losses(wrapper.loss(inputs, samples))[0].backward()

    t_ebm = timed(ebm_step, repeats, device)
    with torch.no_grad():  # the frozen detector's share of the EBM step
        t_feat = timed(lambda: det.extract_feat(inputs), repeats, device)
    row = dict(detector_train_step_s=t_det, ebm_train_step_s=t_ebm, ratio=t_ebm / t_det, frozen_features_s=t_feat,
               head_ratio=(t_ebm - t_feat) / t_det)
    print(row, flush=True)
    return row


def _rss_mb() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def _memory_child(n: int, chunk: int, device: str) -> None:
    """Run in a subprocess: print the peak extra memory (MB) of refining n boxes: CUDA's peak
    allocation, or on CPU the peak resident set sampled every 2 ms by a thread."""
    import threading
    from ebm_det.models import EBMBoxHead
    head = EBMBoxHead(num_classes=80, in_channels=256).to(device)
    feats = [torch.randn(1, 256, 200 // s, 336 // s, device=device) for s in (1, 2, 4, 8)]
    boxes, bidx, labels = random_boxes(1, n, 800, 1344, device)
    shapes = torch.tensor([[800, 1344]], device=device)
    base, peak, done = _rss_mb(), [0.0], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)

    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        threading.Thread(target=poll, daemon=True).start()
    with torch.no_grad():
        head.refine(feats, boxes, bidx, labels, shapes, num_steps=2, chunk_size=chunk or None)
    done.set()
    used = torch.cuda.max_memory_allocated() / 2**20 - base if device == 'cuda' else max(peak[0], _rss_mb()) - base
    print(json.dumps(dict(boxes=n, chunk=chunk, peak_mb=used)))


def bench_memory(device: str, counts=(100, 1000, 3000, 10000), chunk: int = 1000):
    rows = []
    for c in (0, chunk):
        for n in counts:
            out = subprocess.run([sys.executable, __file__, '--memory-child', str(n), str(c), '--device', device],
                                 capture_output=True, text=True, cwd=ROOT)
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
    t = res['train']
    lines += ['', f"Train step: detector {t['detector_train_step_s']:.3f} s, EBM (frozen detector, M=128, 10 GT/img, "
              f"batch 2) {t['ebm_train_step_s']:.3f} s, ratio {t['ratio']:.2f}; of the EBM step, the frozen "
              f"detector's features take {t['frozen_features_s']:.3f} s and the head "
              f"{t['head_ratio']:.2f} of a detector step", '',
              '| boxes | chunk | peak MB |', '|---|---|---|']
    for m in res['memory']:
        lines.append(f"| {m['boxes']} | {m['chunk'] or 'none'} | {m.get('peak_mb', float('nan')):.0f} |")
    return '\n'.join(lines) + '\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--out', default=None, help='write a markdown table here')
    parser.add_argument('--skip', nargs='*', default=[], choices=['refine', 'pointpillars', 'train', 'memory'])
    parser.add_argument('--memory-child', nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return _memory_child(*args.memory_child, args.device)
    res = dict(refine=[], memory=[],
               train=dict(detector_train_step_s=0, ebm_train_step_s=0, ratio=0, frozen_features_s=0, head_ratio=0))
    if 'refine' not in args.skip:
        for cfg in ('faster-rcnn_r50_fpn_ebm-nceplus_1x_coco.py', 'retinanet_r50_fpn_ebm-nceplus_1x_coco.py'):
            res['refine'] += bench_refine_vs_detector(cfg, args.device, args.repeats)
    if 'pointpillars' not in args.skip:
        res['refine'] += bench_refine_vs_pointpillars(args.device, args.repeats)
    if 'train' not in args.skip:
        res['train'] = bench_train_overhead(args.device, args.repeats)
    if 'memory' not in args.skip:
        res['memory'] = bench_memory(args.device)
    md = to_markdown(res, args.device, 'python ' + ' '.join(sys.argv))
    print(md)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(md)


if __name__ == '__main__':
    main()
