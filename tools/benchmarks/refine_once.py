"""Time one EBMBoxHead.refine call: 100 random boxes, T = 10, on random 256-channel P2-P5 maps of
an 800x1344 image (median of 3 after a warm-up). A quick check of sampler changes:

    python tools/benchmarks/refine_once.py
"""
import time

import torch

import ebm_det  # noqa: F401
from ebm_det.models import EBMBoxHead


def main(n: int = 100) -> None:
    torch.manual_seed(0)
    head = EBMBoxHead(num_classes=80, in_channels=256)
    feats = [torch.randn(1, 256, 200 // s, 336 // s) for s in (1, 2, 4, 8)]
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([1000., 500.])
    boxes = torch.cat([xy, xy + 16 + torch.rand(n, 2, generator=g) * 280], 1)
    idx = torch.zeros(n, dtype=torch.long)
    shapes = torch.tensor([[800, 1344]])
    times = []
    with torch.no_grad():
        head.refine(feats, boxes, idx, idx, shapes, num_steps=2)
        for _ in range(3):
            t = time.perf_counter()
            res = head.refine(feats, boxes, idx, idx, shapes, num_steps=10)
            times.append(time.perf_counter() - t)
    print(f'refine {n} boxes, T=10: median {sorted(times)[1]:.3f} s (checksum {float(res.boxes.sum()):.3f})')


if __name__ == '__main__':
    main()
