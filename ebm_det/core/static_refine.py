"""Refinement that leaves Python: f's box gradient as forward ops, and a fixed-shape ascent loop.

``refine_by_gradient_ascent`` climbs f with ``torch.autograd.grad``, groups boxes by (level, image)
with Python loops whose sizes depend on the data, and syncs with the host; none of that exports to
ONNX, and it keeps the loop from CUDA graphs and ``torch.compile(fullgraph=True)``. This module
computes the same thing with plain forward ops:

- ``flatten_pyramid``: every level of every image in one (sum_l B * H_l * W_l, C) tensor; a box
  finds its map through a base row and its level's H, W and stride, gathered per box;
- ``roi_grid_features`` / ``roi_grid_box_grad``: ``sampling.roi_grid_sample`` (RoIAlign,
  aligned=True, on ``F.grid_sample``'s bilinear rule with zero padding) from the four corner values
  of each sample point, which also give the sample's x / y derivatives, and the chain rule from
  the RoI features back to the box corners;
- ``mlp_score_and_grad``: the fc stack (Linear, ReLU, ..., Linear) and its input gradient by the
  transposed weights and the ReLU masks;
- ``relative_box2d_grad``: from pixel corners to ``RelativeBox2DSpace`` (cx/w0, cy/h0, log w,
  log h);
- ``static_refine_boxes_2d``: ``refine.refine_boxes`` for 2D boxes (valid and in the image, select ->
  T steps, revert and halve -> clip -> moved, validity and gain gate) with fixed T, ``torch.where`` for every per-box
  decision and no host sync or data-dependent shape.

Only bilinear sampling is covered: Precise RoI Pooling (``pooling='prroi'``) stays autograd-only.
"""
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .box_codecs import Box2DCodec
from .settings import RefineConfig

# energy(boxes (N, 4), context_boxes (N, 4), need_grad) -> (f (N,), df/dboxes (N, 4) or None):
# f at pixel boxes (x1, y1, x2, y2); context_boxes fix what is held constant during refinement
# (the FPN level), as ``score_boxes(..., context_boxes=...)`` does.
BoxEnergy = Callable[[Tensor, Tensor, bool], Tuple[Tensor, Optional[Tensor]]]


class FlatPyramid(NamedTuple):
    """Every level of every image of a feature pyramid as rows of one channels-last tensor.

    Pixel (b, y, x) of level l is row ``offsets[l] + (b * heights[l] + y) * widths[l] + x``.
    """
    flat: Tensor  # (sum_l B * H_l * W_l, C)
    offsets: Tensor  # (L,) long: the first row of each level
    heights: Tensor  # (L,) long
    widths: Tensor  # (L,) long
    strides: Tensor  # (L,) the feature stride of each level, in the dtype of ``flat``


def flatten_pyramid(features: Sequence[Tensor], strides: Sequence[float]) -> FlatPyramid:
    """Per level (B, C, H_l, W_l) maps (same B and C) -> a ``FlatPyramid``. Sizes stay symbolic
    under ``torch.export``, so one exported graph takes any number of images and any map size."""
    rows, offsets, heights, widths = [], [], [], []
    start = features[0].new_zeros((), dtype=torch.long)
    for feat in features:
        b, c, h, w = feat.shape
        rows.append(feat.permute(0, 2, 3, 1).reshape(-1, c))
        offsets.append(start)
        heights.append(torch.full_like(start, h))
        widths.append(torch.full_like(start, w))
        start = start + b * h * w
    return FlatPyramid(torch.cat(rows), torch.stack(offsets), torch.stack(heights), torch.stack(widths),
                       torch.tensor([float(s) for s in strides], dtype=features[0].dtype, device=features[0].device))


def map_fpn_levels(boxes: Tensor, num_levels: int, finest_scale: float = 56.0) -> Tensor:
    """(N, 4) boxes (x1, y1, x2, y2) -> (N,) long FPN level: floor(log2(sqrt(w h) / finest_scale +
    1e-6)) clamped to [0, num_levels - 1], mmdet's ``SingleRoIExtractor.map_roi_levels``."""
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


class RoIGridSamples(NamedTuple):
    """What ``roi_grid_features`` computed and ``roi_grid_box_grad`` needs again."""
    features: Tensor  # (N, S, S, C) bin means, channels last
    corners: Tensor  # (4, N, P, P, C) values at (y0, x0), (y0, x1), (y1, x0), (y1, x1); 0 outside the map
    weights: Tensor  # (4, N, P, P) wx1, wy1 broadcast: [wx0, wx1, wy0, wy1] of each sample point
    t: Tensor  # (P,) offsets of the sample points along a unit side, P = S * R
    inv_stride: Tensor  # (N,) 1 / stride of each box's level


def roi_grid_features(pyramid: FlatPyramid, boxes: Tensor, batch_idx: Tensor, levels: Tensor, out_size: int = 7,
                      sampling_ratio: int = 2) -> RoIGridSamples:
    """``sampling.roi_grid_sample`` (RoIAlign, aligned=True) on a flattened pyramid, by gathers.

    Box corners are in image pixels (x1, y1, x2, y2); on level l the P = S * R sample points of a
    side are at x1 / s_l + (x2 - x1) / s_l * (k + 0.5) / P, k < P, and the map is read with
    ``F.grid_sample``'s rule (bilinear, align_corners=False, zeros outside the map): pixel centres
    at integer + 0.5, so the point x reads columns floor(x - 0.5) and floor(x - 0.5) + 1 with
    weights 1 - frac and frac, and a column outside [0, W) reads 0. Each bin is the mean of its
    R x R points.

    Args:
        pyramid: ``flatten_pyramid`` of the (B, C, H_l, W_l) maps.
        boxes: (N, 4) image-pixel boxes.
        batch_idx, levels: (N,) long, each box's image and level.
    Returns:
        ``RoIGridSamples``; ``.features`` (N, S, S, C) equals ``roi_grid_sample(...)`` (N, C, S, S)
        permuted to channels last.
    """
    s, r = out_size, sampling_ratio
    p = s * r
    n = boxes.shape[0]
    flat = pyramid.flat
    channels = flat.shape[1]
    t = (torch.arange(p, device=boxes.device, dtype=boxes.dtype) + 0.5) / p
    height, width = pyramid.heights[levels], pyramid.widths[levels]  # (N,)
    stride = pyramid.strides.to(boxes.dtype)[levels]
    b = boxes / stride[:, None]  # aligned=True: the pixel-centre convention
    xs = b[:, 0:1] + (b[:, 2:3] - b[:, 0:1]) * t  # (N, P)
    ys = b[:, 1:2] + (b[:, 3:4] - b[:, 1:2]) * t
    # grid_sample's round trip: normalised grid, then back to the pixel index (align_corners=False)
    wf, hf = width.to(boxes.dtype)[:, None], height.to(boxes.dtype)[:, None]
    ix = (((xs * (2.0 / wf) - 1.0).to(flat.dtype) + 1) * wf.to(flat.dtype) - 1) / 2
    iy = (((ys * (2.0 / hf) - 1.0).to(flat.dtype) + 1) * hf.to(flat.dtype) - 1) / 2
    x0f, y0f = torch.floor(ix), torch.floor(iy)
    wx1, wy1 = ix - x0f, iy - y0f  # (N, P)
    x0, y0 = x0f.long(), y0f.long()
    base = pyramid.offsets[levels] + batch_idx.long() * height * width  # (N,)
    corners = []
    for dy in (0, 1):
        yy = (y0 + dy)[:, :, None]  # (N, P rows, 1)
        for dx in (0, 1):
            xx = (x0 + dx)[:, None, :]  # (N, 1, P cols)
            inside = (yy >= 0) & (yy < height[:, None, None]) & (xx >= 0) & (xx < width[:, None, None])
            row = base[:, None, None] + yy * width[:, None, None] + xx
            row = torch.where(inside, row, torch.zeros_like(row))  # any row inside the pyramid; masked below
            vals = flat.index_select(0, row.reshape(-1)).reshape(n, p, p, channels)
            corners.append(vals * inside[..., None].to(flat.dtype))
    c = torch.stack(corners)  # (4, N, P, P, C)
    wx1b, wy1b = wx1[:, None, :].expand(n, p, p), wy1[:, :, None].expand(n, p, p)
    weights = torch.stack([1 - wx1b, wx1b, 1 - wy1b, wy1b])
    wx0, wx1, wy0, wy1 = (w[..., None] for w in weights)
    vals = wy0 * (wx0 * c[0] + wx1 * c[1]) + wy1 * (wx0 * c[2] + wx1 * c[3])  # (N, P, P, C)
    feats = vals.reshape(n, s, r, s, r, channels).mean(dim=(2, 4))
    return RoIGridSamples(feats, c, weights, t, 1.0 / stride)


def roi_grid_box_grad(samples: RoIGridSamples, grad_features: Tensor, sampling_ratio: int = 2) -> Tensor:
    """The chain rule from the RoI features to the box corners.

    Args:
        samples: ``roi_grid_features``' output for the boxes.
        grad_features: (N, S, S, C) d(something)/d ``samples.features``.
    Returns:
        (N, 4) d(something)/d (x1, y1, x2, y2), in image pixels: each sample point passes its bin's
        gradient / R^2 on; its value moves with its x (resp. y) index by wy0 (v01 - v00) + wy1 (v11
        - v10) (resp. wx0 (v10 - v00) + wx1 (v11 - v01)), with the floor held, as ``grid_sample``'s
        own backward does (at an integer index the derivative is the right-hand one); the point's x
        is x1 / s (1 - t) + x2 / s t, and likewise y.
    """
    n, s, _, channels = grad_features.shape
    r = sampling_ratio
    p = s * r
    g = (grad_features / (r * r))[:, :, None, :, None, :].expand(n, s, r, s, r, channels).reshape(n, p, p, channels)
    a00, a01, a10, a11 = (samples.corners * g).sum(-1)  # (N, P, P) each: <gradient, corner value>
    wx0, wx1, wy0, wy1 = samples.weights
    d_ix = wy0 * (a01 - a00) + wy1 * (a11 - a10)  # (N, P rows, P cols)
    d_iy = wx0 * (a10 - a00) + wx1 * (a11 - a01)
    gx, gy = d_ix.sum(1).to(samples.t.dtype), d_iy.sum(2).to(samples.t.dtype)  # (N, P) per column / row
    t = samples.t
    inv = samples.inv_stride[:, None]
    return torch.stack([(gx * (1 - t)).sum(1), (gy * (1 - t)).sum(1), (gx * t).sum(1), (gy * t).sum(1)], 1) * inv


class MLPWeights(NamedTuple):
    """A stack Linear -> ReLU -> ... -> Linear (no ReLU after the last), as (out, in) weights and
    (out,) biases. The first layer's columns are in the order of the input it is given."""
    weights: Tuple[Tensor, ...]
    biases: Tuple[Tensor, ...]


def mlp_score_and_grad(mlp: MLPWeights, x: Tensor, labels: Optional[Tensor],
                       need_grad: bool = True) -> Tuple[Tensor, Optional[Tensor]]:
    """f = the ``labels`` column of the stack's output, and df/dx by the transposed weights.

    Args:
        mlp: the stack.
        x: (N, D) inputs.
        labels: (N,) long, the output read for each row; None reads column 0 (one output).
    Returns:
        (f (N,), df/dx (N, D) or None). The ReLU masks are (h > 0), autograd's rule for ReLU.
    """
    hidden = []
    h = x
    for w, b in zip(mlp.weights[:-1], mlp.biases[:-1]):
        h = torch.relu(h @ w.t() + b)
        hidden.append(h)
    w_out, b_out = mlp.weights[-1], mlp.biases[-1]
    out = h @ w_out.t() + b_out  # (N, K): every class, as the module computes it
    if labels is None or w_out.shape[0] == 1:
        f, rows = out[:, 0], w_out[0].expand(x.shape[0], -1)
    else:
        f, rows = out.gather(1, labels.long()[:, None])[:, 0], w_out[labels.long()]
    if not need_grad:
        return f, None
    g = rows
    for w, h in zip(reversed(mlp.weights[:-1]), reversed(hidden)):
        g = (g * (h > 0).to(g.dtype)) @ w
    return f, g


def relative_box2d_grad(grad_boxes: Tensor, y: Tensor, ref: Tensor) -> Tensor:
    """df/d(x1, y1, x2, y2) (N, 4) -> df/dy for y = (cx/w0, cy/h0, log w, log h) (``RelativeBox2DSpace``,
    boxes = decode(y, ref)): x1, x2 = cx -/+ w / 2 with cx = y0 w0, w = exp(y2), and likewise y."""
    ref_wh = ref[:, 2:] - ref[:, :2]
    half = y[:, 2:].exp() * 0.5
    g1, g2 = grad_boxes[:, :2], grad_boxes[:, 2:]
    return torch.cat([(g1 + g2) * ref_wh, (g2 - g1) * half], dim=1)


def select_for_refinement_static(scores: Tensor, valid: Tensor, batch_idx: Tensor, score_thr: float,
                                 max_per_img: int) -> Tensor:
    """``refine.select_for_refinement`` without ``bincount`` (whose size depends on the data): (N,) bool,
    the valid boxes scoring at least ``score_thr``, at most the ``max_per_img`` best of each image.
    Each box's rank counts the boxes of its image ahead of it in the same (image, not ok, -score)
    order; O(N^2) comparisons, nothing for N in the hundreds. Ties are broken by input position
    (``select_for_refinement`` leaves them to ``argsort``)."""
    ok = valid & (scores >= score_thr)
    key = batch_idx.double() * 4.0 + (~ok).double() * 2.0 - torch.sigmoid(scores.double().nan_to_num(0.0))
    pos = torch.arange(key.shape[0], device=key.device)
    ahead = (key[None, :] < key[:, None]) | ((key[None, :] == key[:, None]) & (pos[None, :] < pos[:, None]))
    same = batch_idx[None, :] == batch_idx[:, None]
    rank = (ahead & same).sum(1)
    return ok & (rank < max_per_img)


class StaticRefined(NamedTuple):
    boxes: Tensor  # (N, 4) the refined box where ``refined``, else the input box
    ebm_scores: Tensor  # (N,) float32 f at the output box; -inf where not refined
    init_scores: Tensor  # (N,) float32 f at the input box; -inf where not selected
    refined: Tensor  # (N,) bool, as ``RefinedBoxes.refined``
    accepted: Tensor  # (N,) long: ascent steps that raised f (0 where not selected)
    attempted: Tensor  # (N,) long: ascent steps each box took part in (0 where not selected)


def static_refine_boxes_2d(energy: BoxEnergy, boxes: Tensor, batch_idx: Tensor, labels: Tensor, cfg: RefineConfig,
                           codec: Box2DCodec, scores: Optional[Tensor] = None,
                           img_shapes: Optional[Tensor] = None) -> StaticRefined:
    """``refine.refine_boxes`` for 2D boxes as a fixed-shape graph: every box goes through all T steps,
    and every per-box decision (selection, accept or revert, halving, convergence, validity, gate)
    is a ``torch.where``. The boxes that are not selected are carried along on a stand-in box and
    dropped at the end, so nothing has a size that depends on the data and nothing waits for the
    host.

    Args:
        energy: f and df/dboxes at pixel boxes (``BoxEnergy``), e.g. ``EBMBoxHead``'s through
            ``ebm_det.deploy.StaticBoxRefiner``; it is called with the selected start boxes as
            context (their FPN level is held fixed).
        boxes: (N, 4) network-input pixels (x1, y1, x2, y2), float32 or float64.
        batch_idx, labels: (N,) long.
        cfg: the settings (``num_steps``, ``step_sizes``, ``decay``, ``tol``, ``score_thr``,
            ``max_per_img``, ``min_gain``); ``chunk_size`` is ignored (boxes are independent);
            ``autocast`` is refused (the scores would not be the ones the eager path compares).
        codec: the validity rule, the clipping and the default step sizes.
        scores: (N,) detection scores for ``score_thr`` / ``max_per_img``; None selects every valid box.
        img_shapes: (B, 2) (h, w) per image, for clipping; None: no clipping.
    Returns:
        ``StaticRefined``; equal (up to float rounding) to ``refine_boxes`` with ``head.refine``'s
        ``RefineResult.accepted`` / ``attempted`` spread over the input boxes.
    """
    if cfg.autocast is not None:
        raise ValueError('static_refine_boxes_2d runs in the dtype of its inputs; autocast is not supported')
    n = boxes.shape[0]
    shapes = None if img_shapes is None else img_shapes.to(boxes.device)[batch_idx]
    valid = codec.valid(boxes)
    if shapes is not None:  # a box wholly outside its image has no features to climb
        valid = valid & codec.in_frame(boxes, shapes)
    sel = valid if scores is None else select_for_refinement_static(scores, valid, batch_idx, cfg.score_thr,
                                                                    cfg.max_per_img)
    stand_in = boxes.new_tensor([0.0, 0.0, 1.0, 1.0]).expand(n, 4)  # any valid box; its results are dropped
    start = torch.where(sel[:, None], boxes, stand_in)
    ref = start
    y = codec.space.encode(start, ref, check=False)  # every row valid: the selected box or the stand-in
    # RefineConfig checked the values when it was built (and step_sizes_for their number); re-checking
    # them here would be Python control flow on every trace
    lam = y.new_tensor(codec.default_step_sizes if cfg.step_sizes is None else cfg.step_sizes).expand(n, codec.dim)
    decode = codec.space.decode

    def score_and_grad(yy: Tensor) -> Tuple[Tensor, Tensor]:
        f, g = energy(decode(yy, ref), start, True)
        f = f.to(torch.promote_types(f.dtype, torch.float32))
        return f, relative_box2d_grad(g, yy, ref)

    f, grad = score_and_grad(y)
    init = f
    active = sel
    accepted = torch.zeros(n, dtype=torch.long, device=boxes.device)
    attempted = torch.zeros_like(accepted)
    for _ in range(cfg.num_steps):
        cand = y + lam * grad
        cand_f, cand_grad = score_and_grad(cand)
        better = (cand_f >= f) & active  # False for NaN
        keep = better[:, None]
        y = torch.where(keep, cand, y)
        f = torch.where(better, cand_f, f)
        grad = torch.where(keep, cand_grad, grad)
        lam = torch.where((active & ~better)[:, None], lam * cfg.decay, lam)
        accepted = accepted + better.long()
        attempted = attempted + active.long()
        if cfg.tol > 0:
            active = active & ((lam * grad).abs().amax(-1) >= cfg.tol)
    ascended = decode(y, ref).to(boxes.dtype)
    out = codec.clip(ascended, shapes, ref=start)
    clipped = (out != ascended).any(-1)
    rescored, _ = energy(out, start, False)  # f where clipping moved the box, at its refinement's level
    out_f = torch.where(clipped, rescored.float(), f.float())
    init = init.float()
    # a box no step moved comes back exactly, not round-tripped through the box space
    kept = sel & (accepted > 0) & codec.valid(out) & (out_f >= init + cfg.gain_margin(labels))
    neg_inf = torch.full_like(out_f, float('-inf'))
    return StaticRefined(torch.where(kept[:, None], out, boxes), torch.where(kept, out_f, neg_inf),
                         torch.where(sel, init, neg_inf), kept, torch.where(sel, accepted, 0),
                         torch.where(sel, attempted, 0))
