"""Box spaces: the coordinates in which noise is drawn and gradient steps are taken.

A space maps native boxes to a vector ``y`` relative to a reference box and back. Every space
has the same three methods, so the noise, the losses and the refiner never special-case the
box type:

- ``encode(boxes, ref) -> y``
- ``decode(y, ref) -> boxes``
- ``project(y) -> y``: puts a vector back on the valid set (wraps yaw); a no-op when nothing
  needs it;
- ``decode_vjp(grad_boxes, y, ref) -> grad_y``: the chain rule through ``decode`` written as
  forward ops (df/dy from df/dboxes), for the fixed-shape refinement that runs without autograd
  (``static_refine``).
"""
import math
from typing import Optional, Sequence

import torch
from torch import Tensor


def wrap_angle(angle: Tensor) -> Tensor:
    """Wrap angles to [-pi, pi)."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def check_finite(boxes: Tensor, name: str = 'boxes') -> None:
    """Raise ValueError when any coordinate is NaN or inf (one host sync)."""
    if boxes.numel() and not bool(torch.isfinite(boxes).all()):
        bad = (~torch.isfinite(boxes)).any(-1).nonzero().flatten()[:5].tolist()
        raise ValueError(f'{name} contain NaN or inf (first bad rows: {bad})')


class IdentitySpace:
    """y = box. Used for generic regression targets (1-D toys, head pose, NARX)."""

    dim: Optional[int] = None
    periodic_dims: Sequence[int] = ()

    def encode(self, boxes: Tensor, ref: Optional[Tensor] = None, check: bool = True) -> Tensor:
        return boxes

    def decode(self, y: Tensor, ref: Optional[Tensor] = None) -> Tensor:
        return y

    def project(self, y: Tensor) -> Tensor:
        return y

    def decode_vjp(self, grad_boxes: Tensor, y: Tensor, ref: Optional[Tensor] = None) -> Tensor:
        """(..., D) df/dboxes at boxes = decode(y, ref) -> (..., D) df/dy."""
        return grad_boxes


class RelativeBox2DSpace(IdentitySpace):
    """(x1, y1, x2, y2) <-> (cx / w0, cy / h0, log w, log h), as in the ECCV/BMVC papers.

    ``ref``: Tensor (..., 4) reference boxes (x1, y1, x2, y2) whose width and height (w0, h0)
    normalise the centre: the GT box in training, the initial box at prediction. ``boxes`` and
    ``ref`` broadcast against each other, so (N, M, 4) samples can share (N, 1, 4) references.
    Boxes of zero or negative size have no log-size and raise ValueError.
    """

    dim = 4

    @staticmethod
    def _ref_size(ref: Tensor) -> Tensor:
        return (ref[..., 2:] - ref[..., :2])

    def encode(self, boxes: Tensor, ref: Tensor, check: bool = True) -> Tensor:
        """Boxes (..., 4) -> y (..., 4) relative to ``ref``. ``check``: raise ValueError on a box or
        reference of zero width or height (a host sync; a fixed-shape graph that passes only
        valid boxes sets False)."""
        wh = boxes[..., 2:] - boxes[..., :2]
        ref_wh = self._ref_size(ref)
        if check and wh.numel() and not bool((wh > 0).all() & (ref_wh > 0).all()):
            raise ValueError('RelativeBox2DSpace needs boxes with positive width and height; '
                             'filter zero-area boxes before encoding')
        ctr = (boxes[..., :2] + boxes[..., 2:]) * 0.5
        return torch.cat([ctr / ref_wh, wh.log()], dim=-1)

    def decode(self, y: Tensor, ref: Tensor) -> Tensor:
        ctr = y[..., :2] * self._ref_size(ref)
        half = y[..., 2:].exp() * 0.5
        return torch.cat([ctr - half, ctr + half], dim=-1)

    def decode_vjp(self, grad_boxes: Tensor, y: Tensor, ref: Tensor) -> Tensor:
        """x1, x2 = cx -/+ w / 2 with cx = y0 w0, w = exp(y2), and likewise y."""
        half = y[..., 2:].exp() * 0.5
        g1, g2 = grad_boxes[..., :2], grad_boxes[..., 2:]
        return torch.cat([(g1 + g2) * self._ref_size(ref), (g2 - g1) * half], dim=-1)


class Box3DSpace(IdentitySpace):
    """7-D LiDAR boxes (x, y, z, l, w, h, yaw), the last dimension wrapped to [-pi, pi).

    ``normalized=False`` (the paper's): y is the box itself, in metres and radians; ``project``
    wraps yaw and keeps sizes >= ``min_size``.
    ``normalized=True``: y = ((x - xr) / dr, (y - yr) / dr, (z - zr) / hr, log l, log w, log h,
    yaw) for a reference box r with BEV diagonal dr = sqrt(lr^2 + wr^2), the SECOND residual
    encoding; sizes are positive by construction.
    """

    dim = 7
    periodic_dims = (6, )

    def __init__(self, normalized: bool = False, min_size: float = 0.05) -> None:
        self.normalized = normalized
        self.min_size = min_size

    def encode(self, boxes: Tensor, ref: Optional[Tensor] = None, check: bool = True) -> Tensor:
        """``check``: raise ValueError on a non-positive size when ``normalized`` (a host sync; a
        fixed-shape graph that passes only valid boxes sets False)."""
        yaw = wrap_angle(boxes[..., 6:7])
        if not self.normalized:
            return torch.cat([boxes[..., :6], yaw], dim=-1)
        if check and boxes[..., 3:6].numel() and not bool((boxes[..., 3:6] > 0).all()):
            raise ValueError('Box3DSpace(normalized=True) needs positive box sizes')
        scale = self._scale(ref)
        return torch.cat([(boxes[..., :3] - ref[..., :3]) / scale, boxes[..., 3:6].log(), yaw], -1)

    def decode(self, y: Tensor, ref: Optional[Tensor] = None) -> Tensor:
        if not self.normalized:
            return y
        return torch.cat([y[..., :3] * self._scale(ref) + ref[..., :3], y[..., 3:6].exp(), y[..., 6:]],
                         dim=-1)

    def decode_vjp(self, grad_boxes: Tensor, y: Tensor, ref: Optional[Tensor] = None) -> Tensor:
        """Absolute: df/dy = df/dboxes. Normalized: the centre scales by (dr, dr, hr), sizes by
        exp(y); yaw passes through."""
        if not self.normalized:
            return grad_boxes
        return torch.cat([grad_boxes[..., :3] * self._scale(ref), grad_boxes[..., 3:6] * y[..., 3:6].exp(),
                          grad_boxes[..., 6:]], dim=-1)

    def project(self, y: Tensor) -> Tensor:
        yaw = wrap_angle(y[..., 6:7])
        if self.normalized:
            return torch.cat([y[..., :6], yaw], dim=-1)
        return torch.cat([y[..., :3], y[..., 3:6].clamp(min=self.min_size), yaw], dim=-1)

    @staticmethod
    def _scale(ref: Tensor) -> Tensor:
        diag = torch.sqrt(ref[..., 3:4]**2 + ref[..., 4:5]**2)
        return torch.cat([diag, diag, ref[..., 5:6]], dim=-1)
