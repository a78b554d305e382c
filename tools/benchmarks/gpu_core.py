"""Refinement on the package's own head, loop and static refiner, without OpenMMLab, against
torchvision's Faster R-CNN R50-FPN inference at the same size: the GPU check's benchmark (issues 15,
23, 24).

    python -m tools.benchmarks.gpu_core [--device cuda] [--batches 1 8] [--boxes 100] [--steps 10]
        [--size 800 1333] [--repeats 5] [--levers] [--out docs/figures/gpu_core.md]

The head is ``EBMBoxHead`` as its defaults configure it (the ECCV 2020 head: RoIAlign 7x7,
``pooling='grid_sample'``, ratio 2, of 256 channels on P2-P5, fc 1024, fc 1024, one score per
class; 80 classes), random weights, on random 256-channel P2-P5 maps of an H x W input and
``--boxes`` random boxes per image. ``EBMBoxHead`` itself needs mmdet and mmengine, which the GPU
machine does not have, so ``core_box_head`` builds the same layers under the same names from
``ebm_det.core`` alone (``CoreBoxHead``): its FPN level is ``map_fpn_levels`` (mmdet's
``SingleRoIExtractor`` rule, tested equal to it in tests/test_core_static_refine.py), its box type
``Box2DCodec``, whose default step sizes apply (``RefineConfig(step_sizes=None)``).

One table, each row timed by ``torch.utils.benchmark.Timer`` (``common.median_seconds``), per
batch size:

- ``autograd loop``: ``ebm_det.core.refine_boxes``, the eager path of ``EBMRefineDetector.refine``;
  with ``--levers`` also its bf16 autocast (scores compared in float32) and early exit (``tol``);
- ``static loop, eager``: ``ebm_det.deploy.StaticBoxRefiner`` (forward ops only, all T steps);
- ``static loop, torch.compile``: the same under ``torch.compile(fullgraph=True)`` (the label gives
  the first call, compilation included);
- ``static loop, CUDA graph``: ``StaticBoxRefiner`` captured once by ``torch.cuda.CUDAGraph`` on
  these fixed-shape inputs and replayed (on the CPU the row says why it is skipped).

Columns: refinement time, the detector's time on the same batch, their ratio, box-steps per second,
the fraction of the device's bf16 peak the fc layers reach (2 x forward multiply-adds per box-step:
the forward and the backward to the RoI features) and the largest box difference to the autograd
loop (network-input pixels). Runs on the CPU too (a smoke run at small sizes:
``bash tools/benchmarks/gpu_check.sh --device cpu``).
"""
import argparse
import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ebm_det.core import (Box2DCodec, RefineConfig, map_fpn_levels, refine_boxes, roi_grid_sample, sampling_layout,
                          sort_by_group)
from ebm_det.deploy import StaticBoxRefiner
from tools.benchmarks.common import median_seconds, timed  # torch and ebm_det.core only at import

BF16_PEAK_TFLOPS = {'H200': 989.0, 'H100': 989.0, 'A100': 312.0, 'L40S': 362.0, 'A10': 125.0}  # dense


class FPNLevelRule:
    """What ``StaticBoxRefiner`` reads of ``EBMBoxHead.level_mapper`` (mmdet's ``SingleRoIExtractor``):
    its ``finest_scale``; ``map_levels`` is the same rule by ``ebm_det.core.map_fpn_levels``."""

    def __init__(self, finest_scale: float, num_levels: int) -> None:
        self.finest_scale, self.num_levels = finest_scale, num_levels

    def map_levels(self, boxes: Tensor) -> Tensor:
        return map_fpn_levels(boxes.detach(), self.num_levels, self.finest_scale)


class CoreBoxHead(nn.Module):
    """``EBMBoxHead`` with ``pooling='grid_sample'`` and no channel reduction, on ``ebm_det.core``
    only: the same layers under the same names (``fcs``, ``fc_score``), the same attributes that
    ``StaticBoxRefiner`` reads, and the ``RefinableHead`` contract that ``refine_boxes`` calls.
    Arguments as ``EBMBoxHead``'s, with its defaults."""

    pooling = 'grid_sample'
    reduce = None

    def __init__(self, num_classes: int = 80, in_channels: int = 256, roi_size: int = 7, sampling_ratio: int = 2,
                 featmap_strides: Sequence[int] = (4, 8, 16, 32), finest_scale: int = 56,
                 fc_channels: int = 1024) -> None:
        super().__init__()
        self.codec = Box2DCodec()
        self.num_classes, self.roi_size, self.sampling_ratio = num_classes, roi_size, sampling_ratio
        self.featmap_strides = tuple(featmap_strides)
        self.level_mapper = FPNLevelRule(finest_scale, len(self.featmap_strides))
        self.fcs = nn.Sequential(nn.Linear(in_channels * roi_size * roi_size, fc_channels), nn.ReLU(inplace=True),
                                 nn.Linear(fc_channels, fc_channels), nn.ReLU(inplace=True))
        self.fc_score = nn.Linear(fc_channels, num_classes)

    def prepare_features(self, feats: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        dtype = self.fc_score.weight.dtype
        return tuple(sampling_layout(f.to(dtype)) for f in feats[:len(self.featmap_strides)])

    def box_context(self, boxes: Tensor, batch_idx: Tensor) -> Dict[str, Tensor]:
        return dict(levels=self.level_mapper.map_levels(boxes))

    def group_order(self, prepared, batch_idx: Tensor, context: Dict[str, Tensor]) -> Tensor:
        return sort_by_group(context['levels'], batch_idx, prepared[0].shape[0])[0]

    def score(self, prepared, boxes: Tensor, batch_idx: Tensor, labels: Tensor, levels: Tensor) -> Tensor:
        rois = roi_grid_sample(prepared, boxes, batch_idx, levels, self.featmap_strides, self.roi_size,
                               self.sampling_ratio)
        return self.fc_score(self.fcs(rois.flatten(1))).gather(1, labels.long()[:, None])[:, 0]

    def macs_per_box(self) -> int:
        return sum(m.in_features * m.out_features for m in self.modules() if isinstance(m, nn.Linear))


def core_box_head(device) -> CoreBoxHead:
    torch.manual_seed(0)
    return CoreBoxHead().to(device).eval()


def inputs(head: CoreBoxHead, batch: int, boxes_per_img: int, size, device, seed: int = 0) -> tuple:
    """(feats, boxes, scores, labels, batch_idx, img_shapes): ``StaticBoxRefiner``'s inputs, random,
    every box inside its image."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    channels = head.fcs[0].in_features // head.roi_size**2
    feats = tuple(torch.randn(batch, channels, math.ceil(h / s), math.ceil(w / s), generator=g).to(device)
                  for s in head.featmap_strides)
    n = batch * boxes_per_img
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w / 2, h / 2]) + 16
    xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(n, generator=g)
    labels = torch.randint(0, head.num_classes, (n, ), generator=g)
    batch_idx = torch.arange(batch).repeat_interleave(boxes_per_img)
    img_shapes = torch.tensor([[h, w]] * batch)
    return (feats, ) + tuple(t.to(device) for t in (boxes, scores, labels, batch_idx, img_shapes))


def autograd_fn(head: CoreBoxHead, cfg: RefineConfig, args: tuple) -> Callable[[], Tensor]:
    feats, boxes, scores, labels, batch_idx, img_shapes = args

    def run() -> Tensor:
        with torch.no_grad():
            return refine_boxes(head, feats, boxes, batch_idx, labels, cfg, scores=scores, img_shapes=img_shapes).boxes
    return run


def static_fn(refiner: Callable, args: tuple) -> Callable[[], Tensor]:
    def run() -> Tensor:
        with torch.no_grad():
            return refiner(*args)[0]
    return run


def cuda_graph_fn(refiner: StaticBoxRefiner, args: tuple) -> Tuple[Callable[[], None], Tensor]:
    """``refiner`` on ``args`` captured once as a CUDA graph: (replay, its refined-boxes output,
    which every replay rewrites in place). Warm-up on a side stream first, as
    ``torch.cuda.graphs`` asks."""
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                refiner(*args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = refiner(*args)
    return graph.replay, out[0]


def detector_fn(batch: int, size, device) -> Callable:
    import torchvision
    h, w = size
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=h,
                                                                 max_size=w).to(device).eval()
    images = [torch.rand(3, h, w, device=device) for _ in range(batch)]

    def run():
        with torch.no_grad():
            return model(images)
    return run


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                   help='torch device (default: cuda when available, else cpu)')
    p.add_argument('--batches', type=int, nargs='+', default=[1, 8], help='batch sizes (images) to time, each in turn')
    p.add_argument('--boxes', type=int, default=100, help='boxes per image')
    p.add_argument('--steps', type=int, default=10, help='T')
    p.add_argument('--size', type=int, nargs=2, default=[800, 1333], help='input H W')
    p.add_argument('--repeats', type=int, default=5, help='timed runs per measurement (median, after a warm-up)')
    p.add_argument('--levers', action='store_true', help='also the autograd loop with bf16 autocast and early exit')
    p.add_argument('--tol', type=float, default=1e-3, help='early exit threshold for the lever')
    p.add_argument('--out', help='write the markdown table here')
    return p.parse_args(argv)


def time_batch(refiner: StaticBoxRefiner, compiled: Callable, batch: int, args: argparse.Namespace,
               device: torch.device) -> List[tuple]:
    """Rows (label, refine seconds or the reason it was skipped, max box diff to the autograd loop)
    for one batch size; ``compiled``: ``torch.compile`` of ``refiner``."""
    head, cfg = refiner.head, refiner.cfg
    data = inputs(head, batch, args.boxes, args.size, device)
    reference = autograd_fn(head, cfg, data)()
    runs: List[Tuple[str, Optional[Callable], Optional[Tensor]]] = [
        ('autograd loop', autograd_fn(head, cfg, data), None)]
    if args.levers:
        runs += [('autograd, bf16 autocast', autograd_fn(head, cfg.replace(autocast='bfloat16'), data), None),
                 (f'autograd, early exit tol={args.tol}', autograd_fn(head, cfg.replace(tol=args.tol), data), None)]
    runs.append(('static loop, eager', static_fn(refiner, data), None))
    fn = static_fn(compiled, data)
    _, first = timed(fn)
    runs.append((f'static loop, torch.compile (first call {first:.1f} s)', fn, None))
    if device.type == 'cuda':
        replay, out = cuda_graph_fn(refiner, data)
        runs.append(('static loop, CUDA graph', replay, out))
    else:
        runs.append(('static loop, CUDA graph', None, None))
    rows = []
    for label, fn, graph_out in runs:
        if fn is None:
            rows.append((label, f'skipped: torch.cuda.CUDAGraph needs a CUDA device (ran on {device.type})', None))
            continue
        seconds = median_seconds(fn, args.repeats)
        boxes = graph_out if graph_out is not None else fn()  # a replay rewrote graph_out
        rows.append((label, seconds, float((boxes - reference).abs().max()) if len(boxes) else 0.0))
    return rows


def main(argv=None) -> str:
    args = parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    head = core_box_head(device)
    refiner = StaticBoxRefiner(head, RefineConfig(num_steps=args.steps, max_per_img=max(100, args.boxes))).eval()
    compiled = torch.compile(refiner, fullgraph=True)  # a later batch size recompiles it once, shapes dynamic
    macs = head.macs_per_box()
    lines = [f'Device: {name}; torch {torch.__version__}; input {args.size[0]}x{args.size[1]}, {args.boxes} boxes '
             f'per image, T = {args.steps}, median of {args.repeats} (torch.utils.benchmark.Timer)', '',
             '| batch | refinement | refine ms | detector ms | ratio | box-steps/s (T steps) | bf16 peak | '
             'max box diff vs autograd (px) |', '|---|---|---|---|---|---|---|---|']
    for b in args.batches:
        det_s = median_seconds(detector_fn(b, args.size, device), args.repeats)
        for label, s, diff in time_batch(refiner, compiled, b, args, device):
            if isinstance(s, str):
                lines.append(f'| {b} | {label} | {s} | {1000 * det_s:.1f} | - | - | - | - |')
                continue
            rate = b * args.boxes * args.steps / s
            frac = f'{100 * rate * 4 * macs / (peak * 1e12):.2f}%' if peak else 'n/a'
            lines.append(f'| {b} | {label} | {1000 * s:.1f} | {1000 * det_s:.1f} | {s / det_s:.3f} | {rate:,.0f} | '
                         f'{frac} | {diff:.2e} |')
    text = '\n'.join(lines) + '\n'
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return text


if __name__ == '__main__':
    main()
