"""Refinement built from the core alone (torch + torchvision, no OpenMMLab), against torchvision's
Faster R-CNN R50-FPN inference at the same size: the GPU check's benchmark (issue 15).

    python -m tools.benchmarks.gpu_core [--device cuda] [--batches 1 8] [--boxes 100] [--steps 10]
        [--size 800 1333] [--repeats 5] [--levers] [--out docs/figures/gpu_core.md]

The paper's head as plain torch modules (``PaperHead``: RoIAlign 7x7 of 256 channels by
``ebm_det.core.roi_grid_sample`` on P2-P5, fc 1024, fc 1024, one score per class), random weights,
on random 256-channel P2-P5 maps of an H x W input (strides 4-32), ``--boxes`` random boxes per
image, T steps of ``ebm_det.core.refine_by_gradient_ascent`` in the relative box space with the
paper's step sizes. Reports per batch size: refinement time, torchvision's
``fasterrcnn_resnet50_fpn`` (random weights, ``min_size``/``max_size`` = the input, eval) time on
the same batch, their ratio, box-steps per second, and the fraction of the device's bf16 peak the
head's fc layers reach (2 x forward multiply-adds per box-step: the forward and the backward to
the RoI features). With ``--levers``: bf16 autocast (scores compared in float32), early exit
(``tol``), and ``torch.compile`` of the head. Runs on CPU too (for a smoke run: small sizes).
"""
import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn as nn

from ebm_det.core import RefineConfig, RelativeBox2DSpace, refine_by_gradient_ascent, roi_grid_sample, sampling_layout
from tools.benchmarks.common import median_seconds  # torch and ebm_det.core only at import

STRIDES = (4, 8, 16, 32)
PAPER_STEPS = (8e-4, 8e-4, 3.2e-3, 3.2e-3)  # ECCV 2020, NCE+, (cx/w0, cy/h0, log w, log h)
BF16_PEAK_TFLOPS = {'H200': 989.0, 'H100': 989.0, 'A100': 312.0, 'L40S': 362.0, 'A10': 125.0}  # dense


class PaperHead(nn.Module):
    """f(x, y) of Gustafsson et al. (ECCV 2020) on an FPN, as plain torch modules: (N, 4) boxes in
    input pixels (x1, y1, x2, y2) -> (N,) score of each box's class."""

    def __init__(self, channels: int = 256, fc: int = 1024, num_classes: int = 80, roi: int = 7) -> None:
        super().__init__()
        self.roi = roi
        self.fcs = nn.Sequential(nn.Linear(channels * roi * roi, fc), nn.ReLU(inplace=True), nn.Linear(fc, fc),
                                 nn.ReLU(inplace=True), nn.Linear(fc, num_classes))

    def forward(self, prepared, boxes, batch_idx, labels, levels):
        rois = roi_grid_sample(prepared, boxes, batch_idx, levels, STRIDES, self.roi, 2)
        return self.fcs(rois.flatten(1)).gather(1, labels[:, None])[:, 0]

    def macs_per_box(self) -> int:
        return sum(m.in_features * m.out_features for m in self.fcs if isinstance(m, nn.Linear))


def fpn_levels(boxes: torch.Tensor) -> torch.Tensor:
    """mmdet's SingleRoIExtractor rule (finest_scale 56): floor(log2(sqrt(wh) / 56)), in [0, 3]."""
    scale = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6).sqrt()
    return torch.floor(torch.log2(scale / 56 + 1e-6)).clamp(0, 3).long()


def inputs(batch: int, boxes_per_img: int, size, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    feats = [torch.randn(batch, 256, math.ceil(h / s), math.ceil(w / s), generator=g).to(device) for s in STRIDES]
    n = batch * boxes_per_img
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w / 2, h / 2]) + 16
    xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
    boxes = torch.cat([xy, xy + wh], 1).to(device)
    batch_idx = torch.arange(batch).repeat_interleave(boxes_per_img).to(device)
    labels = torch.randint(0, 80, (n, ), generator=g).to(device)
    return feats, boxes, batch_idx, labels


def refine_fn(head, feats, boxes, batch_idx, labels, steps: int, tol: float = 0.0, bf16: bool = False):
    levels = fpn_levels(boxes)
    device_type = boxes.device.type

    def run():
        prepared = tuple(sampling_layout(f) for f in feats)

        def score_fn(b, idx):
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                s = head(prepared, b, batch_idx[idx], labels[idx], levels[idx])
            return s.float()  # the accept/revert comparison stays float32

        with torch.no_grad():
            cfg = RefineConfig(num_steps=steps, decay=0.5, tol=tol)
            return refine_by_gradient_ascent(score_fn, boxes, PAPER_STEPS, cfg, space=RelativeBox2DSpace())
    return run


def detector_fn(batch: int, size, device):
    import torchvision
    h, w = size
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=h,
                                                                 max_size=w).to(device).eval()
    images = [torch.rand(3, h, w, device=device) for _ in range(batch)]

    def run():
        with torch.no_grad():
            return model(images)
    return run


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                   help='torch device (default: cuda when available, else cpu)')
    p.add_argument('--batches', type=int, nargs='+', default=[1, 8], help='batch sizes (images) to time, each in turn')
    p.add_argument('--boxes', type=int, default=100, help='boxes per image')
    p.add_argument('--steps', type=int, default=10, help='T')
    p.add_argument('--size', type=int, nargs=2, default=[800, 1333], help='input H W')
    p.add_argument('--repeats', type=int, default=5, help='timed runs per measurement (median, after one warm-up)')
    p.add_argument('--levers', action='store_true', help='also bf16 autocast, early exit and torch.compile')
    p.add_argument('--tol', type=float, default=1e-3, help='early exit threshold for the lever')
    p.add_argument('--out', help='write the markdown table here')
    return p.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    torch.manual_seed(0)
    head = PaperHead().to(device).eval()
    rows = []
    for b in args.batches:
        feats, boxes, batch_idx, labels = inputs(b, args.boxes, args.size, device)
        variants = {'float32, T steps': dict()}
        if args.levers:
            variants.update({'bf16 autocast': dict(bf16=True), f'early exit tol={args.tol}': dict(tol=args.tol)})
        det_s = median_seconds(detector_fn(b, args.size, device), args.repeats)
        for label, kw in variants.items():
            fn = refine_fn(head, feats, boxes, batch_idx, labels, args.steps, **kw)
            res = fn()
            s = median_seconds(fn, args.repeats)
            rows.append((b, label, s, det_s, int(res.steps)))
        if args.levers:
            compiled = torch.compile(head)
            fn = refine_fn(compiled, feats, boxes, batch_idx, labels, args.steps)
            t = time.perf_counter()
            fn()
            if device.type == 'cuda':
                torch.cuda.synchronize()
            warm = time.perf_counter() - t
            rows.append((b, f'torch.compile (first call {warm:.1f} s)', median_seconds(fn, args.repeats), det_s,
                         args.steps))
    macs = head.macs_per_box()
    lines = [f'Device: {name}; torch {torch.__version__}; input {args.size[0]}x{args.size[1]}, {args.boxes} boxes '
             f'per image, T = {args.steps}, median of {args.repeats}', '',
             '| batch | refinement | steps run | refine ms | detector ms | ratio | box-steps/s (T steps) | bf16 peak |',
             '|---|---|---|---|---|---|---|---|']
    for b, label, s, det_s, steps in rows:
        rate = b * args.boxes * args.steps / s
        frac = f'{100 * rate * 4 * macs / (peak * 1e12):.2f}%' if peak else 'n/a'
        lines.append(f'| {b} | {label} | {steps} | {1000 * s:.1f} | {1000 * det_s:.1f} | {s / det_s:.3f} | '
                     f'{rate:,.0f} | {frac} |')
    text = '\n'.join(lines) + '\n'
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == '__main__':
    main()
