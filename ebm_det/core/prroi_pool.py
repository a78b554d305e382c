"""Precise RoI Pooling (Jiang et al., "Acquisition of Localization Confidence for Accurate Object
Detection", ECCV 2018) in plain PyTorch: CPU and CUDA, any float dtype, differentiable twice.

Each output bin is the exact integral of the bilinearly interpolated feature map over the bin,
divided by the bin's area. Unlike RoIAlign's fixed sample points, the pooled value and its
gradient w.r.t. the box coordinates are continuous in the box, which is what gradient ascent on
f(x, y) climbs. mmcv's PrRoIPool computes the same values, but only on CUDA and in float32.

How: the integral is separable. With k(t) = max(0, 1 - |t|), the interpolant is
f(x, y) = sum_{i,j} F[j, i] k(x - i) k(y - j). Summation by parts writes any 1-D integral of it
over [a, b] through the prefix sums P(i) = sum_{i' <= i} g(i') at the few cells around a and b,
with weights polynomial in the fractional parts of a and b; in 2-D the weights are products and
the table is the 2-D prefix sum S[j, i] = sum_{j' <= j, i' <= i} F[j', i']. A bin is then
3 x 3 taps of S at each of its four corners, all gathered at once for every box.

Precision: S of a large map holds large numbers, and a bin's integral is a difference of them.
Each bin's weights are written in local terms (a bin within one cell, over one cell boundary, or
over several), so none is divided by a small width. float64 maps get float64 tables of the map
(an absolute error of a few 1e-16 x |S|: 7e-11 on a 200 x 336 map of values ~N(5, 1)). Other
dtypes get float32 tables of the map minus its per-channel mean, whose share is added back in
closed form (the bin means of the all-ones map): centred prefix sums grow like a random walk, so
the float32 result stays within 6.4e-6 of the float64 one on that map (13 ulp of 5), at half the
memory and gather cost of float64 tables.
"""
from typing import Sequence, Tuple, Union

import torch
from torch import Tensor


def _pair(size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    try:
        pair = (size, size) if isinstance(size, int) else tuple(size)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ValueError(f'output_size must be a positive int or a pair of them, got {size!r}')
    return pair


def _quadratic_weights(t: Tensor) -> Tensor:
    """(..., 3) weights of the prefix sums at cells m - 1, m, m + 1 that give the integral of the
    1-D interpolant up to x = m + t (t in [0, 1)): the quadratic B-spline weights."""
    return torch.stack([(1 - t) ** 2 / 2, 0.5 + t - t * t, t * t / 2], -1)


def _axis_operator(lo: Tensor, hi: Tensor, bins: int, size: int) -> Tuple[Tensor, Tensor]:
    """The mean over each bin along one axis, as weights on the prefix table at the bin corners.

    Args:
        lo, hi: (n,) box ends in feature coordinates (cell i centred at i), hi >= lo, float64.
        bins: number of equal bins between lo and hi.
        size: number of map cells along the axis.
    Returns:
        weights: (n, bins, 3 * (bins + 1)); the mean of the interpolant over bin p (the other axis
            summed by the table) is ``weights[:, p]`` applied to the table rows ``taps``.
        taps: (n, 3 * (bins + 1)) long: the padded table index of cells m - 1, m, m + 1 of each
            corner, m = floor(corner); corner b's taps are entries 3b .. 3b + 2.
    """
    frac = torch.arange(bins + 1, dtype=lo.dtype, device=lo.device) / bins
    corners = lo[:, None] + (hi - lo)[:, None] * frac  # (n, bins + 1)
    # The interpolant is zero left of -1 and right of size, so clamping the corners to [-1, size]
    # changes no integral and no derivative; it keeps the taps within two cells of padding.
    clamped = corners.clamp(-1.0, float(size))
    cell = clamped.detach().floor()
    t = clamped - cell  # in [0, 1), carries the gradient
    taps = (cell.long()[..., None] + torch.arange(1, 4, device=lo.device)).flatten(1)  # m - 1 + 2 (padding)

    width = corners[:, 1:] - corners[:, :-1]  # the bin's true width: its mean divides by it
    covered = clamped[:, 1:] - clamped[:, :-1]  # the part inside [-1, size]
    positive = width > 0
    safe = torch.where(positive, width, torch.ones_like(width))[..., None]
    steps = (cell[:, 1:] - cell[:, :-1])[..., None]  # cell boundaries crossed by the (clamped) bin
    t1, t2 = t[:, :-1, None], t[:, 1:, None]

    # Within one cell the interpolant is linear: its mean is its value at the bin's midpoint,
    # times the covered fraction. This also gives the limit for a zero-width bin (no division).
    mid = (t1 + t2) / 2
    ratio = torch.where(positive, covered / safe[..., 0], torch.ones_like(covered))[..., None]
    within = torch.cat([mid - 1, 1 - 2 * mid, mid], -1) * ratio
    # Over one cell boundary: the partial cell [t1, 1] left of it plus [0, t2] right of it. Both are
    # at most the width long, so the weights stay bounded for narrow bins.
    rest = 1 - t1
    across_left = torch.cat([-rest * rest / 2, rest * rest - rest, rest - rest * rest / 2], -1) / safe
    across_right = torch.cat([t2 * t2 / 2 - t2, t2 - t2 * t2, t2 * t2 / 2], -1) / safe
    # Over several boundaries the width is at least one cell: the plain difference of the integrals.
    far_left = -_quadratic_weights(t1[..., 0]) / safe
    far_right = _quadratic_weights(t2[..., 0]) / safe

    left = torch.where(steps == 0, within, torch.where(steps == 1, across_left, far_left))
    right = torch.where(steps == 0, torch.zeros_like(within), torch.where(steps == 1, across_right, far_right))
    eye = torch.eye(bins + 1, dtype=lo.dtype, device=lo.device)[..., None]  # bin p reads corners p, p + 1
    weights = left[:, :, None] * eye[:-1] + right[:, :, None] * eye[1:]  # (n, bins, bins + 1, 3)
    return weights.flatten(2), taps


def _ones_mean(weights: Tensor, taps: Tensor, size: int) -> Tensor:
    """(n, bins) mean over each bin of the interpolant of an all-ones axis of ``size`` cells (1
    inside, fading to 0 over the outer cell ring): the axis operator on the ones' prefix sums."""
    prefix = (taps - 1).clamp(0, size).to(weights.dtype)  # padded index k is cell k - 2: sum = k - 1
    return torch.bmm(weights, prefix[..., None])[..., 0]


class PrRoIPoolTables:
    """The integral table of a feature map: build it once, pool many box sets on it.

    Refinement evaluates f at the same feature maps T times; the table depends on the features
    only. It is the 2-D prefix sum of the zero-padded map, channels last: B x (H + 4) x (W + 4) x C
    values, float64 for a float64 map, else float32 of the map minus its per-channel mean (70 MB
    for 256 x 200 x 336, the P2 map of an 800 x 1344 image). When ``features`` require grad the
    table keeps their graph, so gradients of every pooling reach the features.

    Cost on 2 CPU threads, 256-channel P2-P5 maps of an 800 x 1344 image, 100 boxes refined for
    T = 10 steps by an ``EBMBoxHead`` (``python -m tools.benchmarks.refine_once --pooling prroi``):
    1.45-1.48 s against 1.05-1.09 s with ``roi_grid_sample`` (alternating runs). The backward to
    the features, through the prefix sums, is slow (0.7 s for those maps with float64 tables);
    a frozen detector never needs it.

    Args:
        features: (B, C, H, W) floating feature maps (any memory layout; float16 and bfloat16 are
            pooled like float32 and returned in their own dtype).
    """

    def __init__(self, features: Tensor):
        if not isinstance(features, Tensor) or features.dim() != 4:
            raise ValueError(f'features must be a (B, C, H, W) tensor, got '
                             f'{tuple(features.shape) if isinstance(features, Tensor) else type(features)}')
        if not features.is_floating_point():
            raise ValueError(f'features must be floating point, got {features.dtype}')
        num_imgs, channels, height, width = features.shape
        self.shape = (num_imgs, channels, height, width)
        self.dtype = features.dtype
        self.device = features.device
        exact = features.dtype == torch.float64
        # float64 maps: float64 tables of the map itself (exact to a few 1e-16 |S|). Other dtypes:
        # float32 tables of the map minus its per-channel mean (the mean's share is added back in
        # closed form in ``pool``): centred prefix sums grow like a random walk, not like the cell
        # count, so float32 keeps ~1e-5 of the map's spread, at half the memory and gather cost.
        self.mean = None if exact else features.mean((2, 3), dtype=torch.float64)  # (B, C)
        centred = features.double() if exact else features.double() - self.mean[:, :, None, None]
        # Two zero cells on each side: the corners are clamped to [-1, size] and read the cells
        # from m - 1 >= -2 to m + 1 <= size + 1. The sums run in place along the rows and columns of
        # each channel plane (256 x 200 x 336 on 2 CPU threads: 50 ms; in channels-last order
        # 450 ms), then one transpose makes the C values of a cell contiguous for the gather.
        table = centred.new_zeros((num_imgs, channels, height + 4, width + 4))
        table[:, :, 2:height + 2, 2:width + 2] = centred
        table = table.cumsum_(3).cumsum_(2)
        table = table.permute(0, 2, 3, 1).reshape(-1, channels)  # (B * (H + 4) * (W + 4), C)
        self.table = table if exact else table.float()

    def pool(self, boxes: Tensor, batch_idx: Tensor, output_size: Union[int, Tuple[int, int]],
             spatial_scale: float, aligned: bool = True) -> Tensor:
        """Precise RoI pooling of ``boxes`` on the tables; see :func:`prroi_pool` for the conventions.

        Args:
            boxes: (N, 4) floating (x1, y1, x2, y2) in input pixels, x2 >= x1 and y2 >= y1.
            batch_idx: (N,) integer image index of each box, in [0, B).
            output_size: s or (s_h, s_w) bins.
            spatial_scale: feature cells per input pixel (1 / stride).
            aligned: True: feature coordinate = pixel * spatial_scale - 0.5; False: no shift.
        Returns:
            Tensor (N, C, s_h, s_w) in the features' dtype.

        Memory: the gather holds N x (3 s_h + 3) x (3 s_w + 3) x C table values (59 MB in float32
        for 100 boxes, 7 x 7 bins, 256 channels), linear in the number of boxes.
        """
        out_h, out_w = _pair(output_size)
        _, channels, height, width = self.shape
        self._check(boxes, batch_idx, spatial_scale)
        n = boxes.shape[0]
        feat = boxes.to(torch.float64) * spatial_scale
        if aligned:
            feat = feat - 0.5  # pixel centres (integer + 0.5) onto cell centres
        weights_x, taps_x = _axis_operator(feat[:, 0], feat[:, 2], out_w, width)
        weights_y, taps_y = _axis_operator(feat[:, 1], feat[:, 3], out_h, height)
        rows = batch_idx.long()[:, None] * (height + 4) + taps_y  # (n, Ty)
        index = rows[:, :, None] * (width + 4) + taps_x[:, None, :]  # (n, Ty, Tx)
        values = self.table.index_select(0, index.flatten()).view(n, taps_y.shape[1], taps_x.shape[1] * channels)
        # two batched matmuls on contiguous operands (einsum's own order permutes the gather: 3x slower)
        rows_pooled = torch.bmm(weights_y.to(values.dtype), values).view(n, out_h, taps_x.shape[1], channels)
        out = torch.matmul(weights_x[:, None].to(values.dtype), rows_pooled)  # (n, s_h, s_w, C)
        if self.mean is not None:  # the per-channel mean's share: the bin means of the all-ones map
            ones_y, ones_x = _ones_mean(weights_y, taps_y, height), _ones_mean(weights_x, taps_x, width)
            share = (ones_y[:, :, None, None] * ones_x[:, None, :, None]) * self.mean[batch_idx.long(), None, None]
            out = out + share.to(out.dtype)
        return out.permute(0, 3, 1, 2).to(self.dtype).contiguous()

    def _check(self, boxes: Tensor, batch_idx: Tensor, spatial_scale: float) -> None:
        """ValueError for bad shapes, dtypes or devices, and (one host sync) for non-finite boxes,
        x2 < x1 or y2 < y1, or an image index outside [0, B)."""
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f'boxes must be an (N, 4) tensor, got '
                             f'{tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes)}')
        if not boxes.is_floating_point():
            raise ValueError(f'boxes must be floating point, got {boxes.dtype}')
        if not isinstance(batch_idx, Tensor):
            raise ValueError(f'batch_idx must be a tensor, got {type(batch_idx)}')
        integer = not (batch_idx.is_floating_point() or batch_idx.is_complex() or batch_idx.dtype == torch.bool)
        if batch_idx.shape != boxes.shape[:1] or not integer:
            raise ValueError(f'batch_idx must be an integer tensor of shape ({boxes.shape[0]},), got '
                             f'{batch_idx.dtype} {tuple(batch_idx.shape)}')
        if boxes.device != self.device or batch_idx.device != self.device:
            raise ValueError(f'features ({self.device}), boxes ({boxes.device}) and batch_idx ({batch_idx.device}) '
                             'must be on one device')
        if not float(spatial_scale) > 0 or spatial_scale == float('inf'):
            raise ValueError(f'spatial_scale must be positive and finite, got {spatial_scale}')
        if boxes.shape[0] == 0:
            return
        finite, ordered, in_range = torch.stack([
            torch.isfinite(boxes).all(), (boxes[:, 2:] >= boxes[:, :2]).all(),
            ((batch_idx >= 0) & (batch_idx < self.shape[0])).all()
        ]).tolist()
        if not finite:
            raise ValueError('boxes contain NaN or inf')
        if not ordered:
            raise ValueError('boxes must have x2 >= x1 and y2 >= y1 (x1, y1, x2, y2); swap the corners first')
        if not in_range:
            raise ValueError(f'batch_idx must lie in [0, {self.shape[0]}) for {self.shape[0]} feature maps')


def prroi_pool(features: Tensor, boxes: Tensor, batch_idx: Tensor, output_size: Union[int, Tuple[int, int]],
               spatial_scale: float, aligned: bool = True) -> Tensor:
    """Precise RoI Pooling: the mean of the bilinearly interpolated map over each bin.

    Conventions:
        - The interpolant is f(x, y) = sum_{i,j} F[j, i] k(x - i) k(y - j), k(t) = max(0, 1 - |t|):
          cell (j, i) is centred at feature coordinates (x, y) = (i, j), and the map is zero-padded,
          so f fades to zero over the outer cell ring [-1, 0] and [W - 1, W].
        - A box's feature coordinates are x_f = x * spatial_scale - 0.5 when ``aligned`` (the
          pixel-centre convention of RoIAlign(aligned=True) and of
          :func:`ebm_det.core.sampling.roi_grid_sample`), x_f = x * spatial_scale otherwise (the
          convention of mmcv's and vacancy's PrRoIPool); the same for y.
        - The box is split into s_h x s_w equal bins; bin (q, p) is the integral of f over it
          divided by its area, so a bin fully outside the map gives 0 and one partly outside
          averages in the zero padding.
        - A bin of zero width (x2 == x1) gives the limit as the width goes to 0: the mean of f
          along the bin's vertical segment; likewise for zero height; both zero: f at the point.
          (mmcv returns 0 there.) Never NaN.
        - x2 < x1 or y2 < y1, non-finite boxes, an image index outside [0, B), wrong shapes or
          non-float features raise ValueError (checked with one host sync per call).

    The result is differentiable (twice) in ``features`` and ``boxes``; the gradient w.r.t. the
    boxes is continuous. Box geometry is computed in float64; the tables are float64 for float64
    maps and mean-centred float32 otherwise (see the module docstring); the result has the
    features' dtype (float16 and bfloat16 included) and the box gradient the boxes' dtype. To pool several box sets on the
    same maps, build :class:`PrRoIPoolTables` once and call its ``pool``.

    Args:
        features: (B, C, H, W) floating.
        boxes: (N, 4) floating (x1, y1, x2, y2) in input pixels.
        batch_idx: (N,) integer image index of each box.
        output_size: s or (s_h, s_w) bins per box.
        spatial_scale: feature cells per input pixel (1 / stride).
        aligned: the pixel-centre convention (see above).
    Returns:
        Tensor (N, C, s_h, s_w).
    """
    return PrRoIPoolTables(features).pool(boxes, batch_idx, output_size, spatial_scale, aligned)


def roi_prroi_pool(tables: Sequence[PrRoIPoolTables], boxes: Tensor, batch_idx: Tensor, levels: Tensor,
                   strides: Sequence[int], out_size: int = 7) -> Tensor:
    """Precise RoI Pooling on a feature pyramid, the counterpart of ``roi_grid_sample``: each box is
    pooled (``aligned=True``) on the tables of its level.

    Args:
        tables: per level a ``PrRoIPoolTables`` of that level's (B, C, H_l, W_l) maps.
        boxes: (N, 4) (x1, y1, x2, y2) in input pixels.
        batch_idx: (N,) image of each box.
        levels: (N,) pyramid level of each box (held fixed by the caller during refinement).
        strides: per level.
    Returns:
        Tensor (N, C, out_size, out_size) in the input order (boxes already sorted by level skip
        the sort; one host sync for the per-level counts).
    """
    levels = levels.long()
    stats = torch.cat([torch.bincount(levels, minlength=len(tables)),
                       (levels[1:] >= levels[:-1]).all().long()[None] if len(levels) > 1 else levels.new_ones(1)])
    *counts, grouped = stats.tolist()
    order = None if grouped else torch.argsort(levels, stable=True)
    b, idx = (boxes, batch_idx) if grouped else (boxes[order], batch_idx[order])
    parts, start = [], 0
    for lvl, count in enumerate(counts):
        if count:
            parts.append(tables[lvl].pool(b[start:start + count], idx[start:start + count], out_size,
                                          1.0 / strides[lvl]))
            start += count
    if not parts:
        return boxes.new_zeros(0, tables[0].shape[1], out_size, out_size, dtype=tables[0].dtype)
    out = torch.cat(parts)
    if order is None:
        return out
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return out[inverse]
