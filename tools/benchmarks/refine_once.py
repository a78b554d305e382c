"""Time one refinement (``ebm_det.core.refine_boxes`` on an ``EBMBoxHead``): 100 random boxes,
T = 10, on random 256-channel P2-P5 maps of an 800x1344 image (median of 3 after a warm-up). A quick
check of head and sampler levers:

    python -m tools.benchmarks.refine_once [--pooling prroi] [--reduced-channels 64] [--fc-channels 512]
        [--compile] [--amp bfloat16] [--profile]
"""
import argparse

import torch

import ebm_det  # noqa: F401
from ebm_det.core import RefineConfig, refine_boxes
from ebm_det.models import EBMBoxHead
from tools.benchmarks.common import median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--boxes', type=int, default=100, help='random boxes refined')
    parser.add_argument('--reduced-channels', type=int, default=None,
                        help='EBMBoxHead.reduced_channels: a 1x1 conv to this many channels before sampling '
                        '(default: none)')
    parser.add_argument('--fc-channels', type=int, default=1024, help="width of the head's two hidden fc layers")
    parser.add_argument('--pooling', choices=['grid_sample', 'prroi'], default='grid_sample',
                        help='EBMBoxHead.pooling: RoIAlign by grid_sample, or Precise RoI Pooling')
    parser.add_argument('--compile', action='store_true', help='torch.compile the fc layers')
    parser.add_argument('--profile', action='store_true', help='print the top ops of one call')
    parser.add_argument('--amp', choices=['bfloat16', 'float16'], help='test_cfg.autocast: the head under autocast')
    args = parser.parse_args()
    n = args.boxes
    torch.manual_seed(0)
    head = EBMBoxHead(num_classes=80, in_channels=256, reduced_channels=args.reduced_channels,
                      fc_channels=args.fc_channels, pooling=args.pooling).eval()
    if args.compile:
        head.fcs = torch.compile(head.fcs)
    feats = [torch.randn(1, 256, 200 // s, 336 // s) for s in (1, 2, 4, 8)]
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([1000., 500.])
    boxes = torch.cat([xy, xy + 16 + torch.rand(n, 2, generator=g) * 280], 1)
    idx = torch.zeros(n, dtype=torch.long)
    shapes = torch.tensor([[800, 1344]])
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    head, boxes, idx, shapes = (t.to(device) for t in (head, boxes, idx, shapes))
    feats = [f.to(device) for f in feats]

    def run(num_steps):  # --amp: the product's RefineConfig.autocast
        return refine_boxes(head, feats, boxes, idx, idx, RefineConfig(num_steps=num_steps, autocast=args.amp),
                            img_shapes=shapes)

    with torch.no_grad():
        res = run(10)  # the checksum's
        seconds = median_seconds(lambda: run(10), repeats=3)
        if args.profile:
            with torch.profiler.profile() as prof:
                run(10)
            print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=15))
    print(f'refine {n} boxes, T=10, {vars(args)}: median {seconds:.3f} s '
          f'(checksum {float(res.boxes.sum()):.3f})')


if __name__ == '__main__':
    main()
