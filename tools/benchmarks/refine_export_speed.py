"""One 2D refinement, four ways, timed side by side in one run (issue 23):

- ``autograd``: today's path, ``ebm_det.core.refine_boxes`` (autograd for f's gradient, boxes grouped
  by level and image in Python, a host sync per call);
- ``static``: ``ebm_det.deploy.StaticBoxRefiner`` in eager mode (the gradient as forward ops, a
  fixed-shape loop);
- ``compile``: the same module under ``torch.compile(fullgraph=True)`` (inductor; the compile time
  is reported apart);
- ``onnxruntime``: the module exported to ONNX (``ebm_det.deploy.export_onnx``) and run by
  onnxruntime (CPU provider; CUDA provider with ``--device cuda`` when onnxruntime has it).

    python -m tools.benchmarks.refine_export_speed [--device cpu|cuda] [--images 1 2] [--boxes 100]
        [--num-steps 5] [--image-size 800 1344] [--channels 256] [--fc-channels 1024]
        [--paths autograd static compile onnxruntime] [--repeats 5] [--out docs/figures/refine_export_speed.md]

The setting of ``refine_speed.py`` without the detector: an ``EBMBoxHead`` (80 classes, 256-channel
P2-P5 of an 800x1344 input, fc 1024, random weights) refining ``--boxes`` random boxes per image for
T = ``--num-steps`` steps. Only time is measured (the weights are random), with
``tools.benchmarks.common.median_seconds`` (``torch.utils.benchmark.Timer``, this process's threads;
onnxruntime uses every core too): the median of ``--repeats`` runs after a warm-up;
each path's largest box difference to ``autograd`` is printed beside its time. On a shared 2-core
CPU run it alone: two torch processes slow each other several-fold.
"""
import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

import ebm_det  # noqa: F401  (registers the modules)
from ebm_det.core import RefineConfig, refine_boxes
from ebm_det.deploy import StaticBoxRefiner, export_onnx
from ebm_det.deploy.refiner import INPUT_NAMES
from ebm_det.models import EBMBoxHead
from tools.benchmarks.common import median_seconds

PATHS = ('autograd', 'static', 'compile', 'onnxruntime')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', help="'cpu' or 'cuda'")
    p.add_argument('--images', type=int, nargs='+', default=[1, 2], help='batch sizes to time')
    p.add_argument('--boxes', type=int, default=100, help='boxes per image')
    p.add_argument('--num-steps', type=int, default=5, help='T')
    p.add_argument('--image-size', type=int, nargs=2, default=[800, 1344], help='network input (h, w)')
    p.add_argument('--channels', type=int, default=256, help="the neck's channels")
    p.add_argument('--fc-channels', type=int, default=1024, help="width of the head's two hidden fc layers")
    p.add_argument('--paths', nargs='+', choices=PATHS, default=list(PATHS), help='which paths to time')
    p.add_argument('--repeats', type=int, default=5, help='timed runs per path and batch (the median is reported)')
    p.add_argument('--out', help='also write the table (markdown) here')
    args = p.parse_args(argv)
    if min(args.images) < 1 or args.boxes < 1 or args.num_steps < 0:
        p.error('--images and --boxes must be >= 1, --num-steps >= 0')
    return args


def make_inputs(num_images: int, boxes_per_image: int, image_size, channels: int, strides, num_classes: int,
                device: str, seed: int = 0) -> tuple:
    """Random neck features (B, C, H / s, W / s) and boxes inside the image, 16 px to 300 px (at most
    half the image) a side."""
    g = torch.Generator().manual_seed(seed)
    h, w = image_size
    feats = tuple(torch.randn(num_images, channels, h // s, w // s, generator=g) for s in strides)
    n = num_images * boxes_per_image
    span = min(284.0, w / 2 - 16, h / 2 - 16)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 16 - span, h - 16 - span])
    boxes = torch.cat([xy, xy + 16 + torch.rand(n, 2, generator=g) * span], 1)
    scores = torch.rand(n, generator=g)
    labels = torch.randint(0, num_classes, (n, ), generator=g)
    batch_idx = torch.arange(num_images).repeat_interleave(boxes_per_image)
    img_shapes = torch.tensor([[h, w]] * num_images)
    return tuple(f.to(device) for f in feats), boxes.to(device), scores.to(device), labels.to(device), \
        batch_idx.to(device), img_shapes.to(device)


def build_paths(args, head: EBMBoxHead, cfg: RefineConfig, inputs: tuple, onnx_path: str) -> Dict[str, Callable]:
    """name -> a call that refines ``inputs`` and returns the refined boxes (a CPU tensor)."""
    refiner = StaticBoxRefiner(head, cfg).eval()
    feats, boxes, scores, labels, batch_idx, img_shapes = inputs
    calls: Dict[str, Callable] = {}
    if 'autograd' in args.paths:
        calls['autograd'] = lambda: refine_boxes(head, feats, boxes, batch_idx, labels, cfg, scores=scores,
                                                 img_shapes=img_shapes, num_images=len(img_shapes)).boxes
    if 'static' in args.paths:
        calls['static'] = lambda: refiner(*inputs)[0]
    if 'compile' in args.paths:
        compiled = torch.compile(refiner, fullgraph=True, dynamic=False)
        calls['compile'] = lambda: compiled(*inputs)[0]
    if 'onnxruntime' in args.paths:
        import onnxruntime as ort
        providers = ['CPUExecutionProvider']
        if args.device == 'cuda' and 'CUDAExecutionProvider' in ort.get_available_providers():
            providers.insert(0, 'CUDAExecutionProvider')
        session = ort.InferenceSession(onnx_path, providers=providers)
        feed = {f'feat_{i}': f.cpu().numpy() for i, f in enumerate(feats)}
        feed.update({name: t.cpu().numpy() for name, t in zip(INPUT_NAMES, inputs[1:])})
        calls['onnxruntime'] = lambda: torch.from_numpy(session.run(['refined_boxes'], feed)[0])
    return calls


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    torch.manual_seed(0)
    head = EBMBoxHead(num_classes=80, in_channels=args.channels, fc_channels=args.fc_channels).to(args.device).eval()
    cfg = RefineConfig(num_steps=args.num_steps)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        onnx_path = os.path.join(tmp, 'refine.onnx')
        # a cold compile: inductor's on-disk cache (/tmp/torchinductor_<user>) would make the first
        # call of a later run seconds instead of a minute
        os.environ['TORCHINDUCTOR_CACHE_DIR'] = os.path.join(tmp, 'inductor')
        if 'onnxruntime' in args.paths:
            t = time.perf_counter()
            small = make_inputs(2, 3, args.image_size, args.channels, head.featmap_strides, 80, args.device, seed=1)
            export_onnx(StaticBoxRefiner(head, cfg).eval(), onnx_path, inputs=small)
            print(f'[refine_export_speed] ONNX export: {time.perf_counter() - t:.1f} s')
        for num_images in args.images:
            inputs = make_inputs(num_images, args.boxes, args.image_size, args.channels, head.featmap_strides, 80,
                                 args.device)
            calls = build_paths(args, head, cfg, inputs, onnx_path)
            reference = calls['autograd']().cpu() if 'autograd' in calls else None
            for name, call in calls.items():
                t = time.perf_counter()
                boxes = call().cpu()  # the first call (compile: the compilation, cold)
                first = time.perf_counter() - t
                seconds = median_seconds(call, args.repeats)
                gap = (boxes - reference).abs().amax(1) if reference is not None else torch.full((1, ), float('nan'))
                diff, far = float(gap.max()), int((gap > 0.01).sum())
                rows.append(dict(path=name, images=num_images, ms=seconds * 1e3, first_call_s=first, max_diff_px=diff,
                                 far=far))
                print(f'[refine_export_speed] batch {num_images}, {name:11s}: {seconds * 1e3:8.1f} ms '
                      f'(first call {first:.1f} s), max |box - autograd| {diff:.2e} px', flush=True)
    table = ['| path | images | boxes / image | T | ms per refinement | first call (s) | max box diff to autograd '
             '(px) | boxes > 0.01 px from autograd |',
             '|---|---|---|---|---|---|---|---|']
    table += [f"| {r['path']} | {r['images']} | {args.boxes} | {args.num_steps} | {r['ms']:.1f} | "
              f"{r['first_call_s']:.1f} | {r['max_diff_px']:.1e} | {r['far']} |" for r in rows]
    device = torch.cuda.get_device_name() if args.device == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    text = '\n'.join([f'Refinement only ({device}, torch {torch.__version__}); '
                      f'`python -m tools.benchmarks.refine_export_speed {" ".join(argv or [])}`'.rstrip(), ''] + table)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + '\n')
    return rows


if __name__ == '__main__':
    import sys
    main(sys.argv[1:])
