"""Refinement that leaves Python: f's box gradient as forward ops, and a fixed-shape ascent loop.

``refine_by_gradient_ascent`` climbs f with ``torch.autograd.grad``, groups boxes by (level, image)
with Python loops whose sizes depend on the data, and syncs with the host; none of that exports to
ONNX, and it keeps the loop from CUDA graphs and ``torch.compile(fullgraph=True)``. This module
computes the same thing with plain forward ops:

- ``flatten_pyramid``: every level of every image (or frame) in one (sum_l B * H_l * W_l, C)
  tensor; a box finds its map through a base row and its level's H, W, gathered per box;
- ``bilinear_gather`` / ``bilinear_index_grad``: ``F.grid_sample``'s bilinear read (zero padding)
  at any points, from the four corner values of each point, which also give the point's x / y
  derivatives; the two samplers below are this one read at their own points:
- ``roi_grid_features`` / ``roi_grid_box_grad``: ``sampling.roi_grid_sample`` (RoIAlign,
  aligned=True) and the chain rule from the RoI features back to the box corners (2D);
- ``rotated_bev_features`` / ``rotated_bev_box_grad``: ``sampling.rotated_bev_grid_sample`` and the
  chain rule back to (x, y, l, w, yaw) of a LiDAR box (3D);
- ``mlp_score_and_grad`` / ``relu_mlp`` / ``relu_mlp_input_grad``: fc stacks (Linear, ReLU, ...)
  and their input gradients by the transposed weights and the ReLU masks;
- the box space's ``decode_vjp`` (``box_spaces``): from box coordinates into the space the steps
  are taken in;
- ``static_refine_boxes``: ``refine.refine_boxes`` (valid and in the frame, select -> T steps,
  revert and halve -> project -> clip -> moved, validity and gain gate) for any ``BoxCodec``, with
  fixed T, ``torch.where`` for every per-box decision and no host sync or data-dependent shape;
  what differs between box types is the energy passed in and the codec.

Only bilinear sampling is covered: Precise RoI Pooling (``pooling='prroi'``) stays autograd-only.
"""
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .box_codecs import BoxCodec
from .settings import RefineConfig

# energy(boxes (N, D), context_boxes (N, D), need_grad) -> (f (N,), df/dboxes (N, D) or None): f at
# native boxes (2D: pixels x1, y1, x2, y2; LiDAR: x, y, z, l, w, h, yaw); context_boxes fix what is
# held constant during refinement (2D: the FPN level), as ``score_boxes(..., context_boxes=...)`` does.
BoxEnergy = Callable[[Tensor, Tensor, bool], Tuple[Tensor, Optional[Tensor]]]


class FlatPyramid(NamedTuple):
    """Every level of every image of a feature pyramid as rows of one channels-last tensor.

    Pixel (b, y, x) of level l is row ``offsets[l] + (b * heights[l] + y) * widths[l] + x``; the
    last row is zeros, read for a point outside its map.
    """
    flat: Tensor  # (sum_l B * H_l * W_l + 1, C)
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
    rows.append(features[0].new_zeros(1, features[0].shape[1]))  # the zero padding
    # fills, not torch.tensor(list): no host-to-device copy, which a CUDA graph cannot capture
    return FlatPyramid(torch.cat(rows), torch.stack(offsets), torch.stack(heights), torch.stack(widths),
                       torch.stack([torch.full_like(start, float(s), dtype=features[0].dtype) for s in strides]))


def map_fpn_levels(boxes: Tensor, num_levels: int, finest_scale: float = 56.0) -> Tensor:
    """(N, 4) boxes (x1, y1, x2, y2) -> (N,) long FPN level: floor(log2(sqrt(w h) / finest_scale +
    1e-6)) clamped to [0, num_levels - 1], mmdet's ``SingleRoIExtractor.map_roi_levels``."""
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


class BilinearSamples(NamedTuple):
    """``bilinear_gather``'s read, and what ``bilinear_index_grad`` needs again."""
    values: Tensor  # (N, Q, C) the bilinear values
    corners: Tuple[Tensor, ...]  # 4 x (N, Q, C): at (y0, x0), (y0, x1), (y1, x0), (y1, x1); 0 outside the map
    weights: Tensor  # (4, N, Q) wx0, wx1, wy0, wy1 of each point


def bilinear_gather(pyramid: FlatPyramid, batch_idx: Tensor, levels: Tensor, ix: Tensor, iy: Tensor) -> BilinearSamples:
    """``F.grid_sample``'s bilinear read (align_corners=False, zeros outside the map) by gathers.

    Args:
        pyramid: ``flatten_pyramid`` of the (B, C, H_l, W_l) maps.
        batch_idx, levels: (N,) long, the map of each row of points.
        ix, iy: (N, Q) ``grid_sample``'s unnormalised indices (pixel centres at integers: the
            point x of a map whose pixel centres sit at integer + 0.5 has index x - 0.5), in the
            dtype of ``pyramid.flat``. A point reads columns floor(ix) and floor(ix) + 1 with
            weights 1 - frac and frac; a column outside [0, W) reads 0.
    Returns:
        ``BilinearSamples``.
    """
    n, q = ix.shape
    flat = pyramid.flat
    channels = flat.shape[1]
    height, width = pyramid.heights[levels][:, None], pyramid.widths[levels][:, None]  # (N, 1)
    x0f, y0f = torch.floor(ix), torch.floor(iy)
    wx1, wy1 = ix - x0f, iy - y0f
    x0, y0 = x0f.long(), y0f.long()
    base = (pyramid.offsets[levels] + batch_idx.long() * pyramid.heights[levels] * pyramid.widths[levels])[:, None]
    zero_row = flat.shape[0] - 1
    corners = []
    for dy in (0, 1):
        yy = y0 + dy
        for dx in (0, 1):
            xx = x0 + dx
            inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
            row = torch.where(inside, base + yy * width + xx, zero_row)
            corners.append(flat.index_select(0, row.reshape(-1)).reshape(n, q, channels))
    # along x, then y, as a + w (b - a): few passes over the (N, Q, C) corner values, and plain ops in
    # ONNX (torch.lerp exports as both of its branches and a Where: onnxruntime took twice as long)
    ax, ay = wx1[..., None], wy1[..., None]
    top = corners[0] + ax * (corners[1] - corners[0])
    bottom = corners[2] + ax * (corners[3] - corners[2])
    vals = top + ay * (bottom - top)
    return BilinearSamples(vals, tuple(corners), torch.stack([1 - wx1, wx1, 1 - wy1, wy1]))


def bilinear_index_grad(samples: BilinearSamples, grad_values: Tensor) -> Tuple[Tensor, Tensor]:
    """(N, Q, C) d(something)/d ``samples.values`` -> (d/d ix, d/d iy), each (N, Q): the value moves
    with ix by wy0 (v01 - v00) + wy1 (v11 - v10) and with iy by wx0 (v10 - v00) + wx1 (v11 - v01),
    the floor held, as ``grid_sample``'s own backward does (at an integer index the derivative is
    the right-hand one)."""
    a00, a01, a10, a11 = ((c * grad_values).sum(-1) for c in samples.corners)  # <gradient, corner value>
    wx0, wx1, wy0, wy1 = samples.weights
    return wy0 * (a01 - a00) + wy1 * (a11 - a10), wx0 * (a10 - a00) + wx1 * (a11 - a01)


def _grid_sample_index(coord: Tensor, size: Tensor, dtype: torch.dtype) -> Tensor:
    """Pixel coordinates (centres at integer + 0.5) -> ``grid_sample``'s index, by the samplers' own
    round trip (normalised grid in the coordinates' dtype, then unnormalised in the map's), so the
    floats are the ones the eager samplers read."""
    grid = (coord * (2.0 / size) - 1.0).to(dtype)
    return ((grid + 1) * size.to(dtype) - 1) / 2


class RoIGridSamples(NamedTuple):
    """What ``roi_grid_features`` computed and ``roi_grid_box_grad`` needs again."""
    features: Tensor  # (N, S, S, C) bin means, channels last
    bilinear: BilinearSamples  # the P x P points of each box (P = S * R), row-major (y, x)
    t: Tensor  # (P,) offsets of the sample points along a unit side
    inv_stride: Tensor  # (N,) 1 / stride of each box's level


def roi_grid_features(pyramid: FlatPyramid, boxes: Tensor, batch_idx: Tensor, levels: Tensor, out_size: int = 7,
                      sampling_ratio: int = 2) -> RoIGridSamples:
    """``sampling.roi_grid_sample`` (RoIAlign, aligned=True) on a flattened pyramid, by gathers.

    Box corners are in image pixels (x1, y1, x2, y2); on level l the P = S * R sample points of a
    side are at x1 / s_l + (x2 - x1) / s_l * (k + 0.5) / P, k < P, read by ``bilinear_gather``.
    Each bin is the mean of its R x R points.

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
    dtype = pyramid.flat.dtype
    t = (torch.arange(p, device=boxes.device, dtype=boxes.dtype) + 0.5) / p
    stride = pyramid.strides.to(boxes.dtype)[levels]
    b = boxes / stride[:, None]  # aligned=True: the pixel-centre convention
    xs = b[:, 0:1] + (b[:, 2:3] - b[:, 0:1]) * t  # (N, P)
    ys = b[:, 1:2] + (b[:, 3:4] - b[:, 1:2]) * t
    ix = _grid_sample_index(xs, pyramid.widths[levels].to(boxes.dtype)[:, None], dtype)
    iy = _grid_sample_index(ys, pyramid.heights[levels].to(boxes.dtype)[:, None], dtype)
    ix, iy = ix[:, None, :].expand(n, p, p), iy[:, :, None].expand(n, p, p)  # (N, P rows, P cols)
    bil = bilinear_gather(pyramid, batch_idx, levels, ix.reshape(n, p * p), iy.reshape(n, p * p))
    feats = bil.values.reshape(n, s, r, s, r, pyramid.flat.shape[1]).mean(dim=(2, 4))
    return RoIGridSamples(feats, bil, t, 1.0 / stride)


def roi_grid_box_grad(samples: RoIGridSamples, grad_features: Tensor, sampling_ratio: int = 2) -> Tensor:
    """The chain rule from the RoI features to the box corners.

    Args:
        samples: ``roi_grid_features``' output for the boxes.
        grad_features: (N, S, S, C) d(something)/d ``samples.features``.
    Returns:
        (N, 4) d(something)/d (x1, y1, x2, y2), in image pixels: each sample point passes its bin's
        gradient / R^2 on (``bilinear_index_grad`` gives its x / y derivatives); the point's x is
        x1 / s (1 - t) + x2 / s t, and likewise y.
    """
    n, s, _, channels = grad_features.shape
    r = sampling_ratio
    p = s * r
    g = (grad_features / (r * r))[:, :, None, :, None, :].expand(n, s, r, s, r, channels).reshape(n, p * p, channels)
    d_ix, d_iy = bilinear_index_grad(samples.bilinear, g)
    t = samples.t
    gx = d_ix.reshape(n, p, p).sum(1).to(t.dtype)  # (N, P) per column
    gy = d_iy.reshape(n, p, p).sum(2).to(t.dtype)  # per row
    inv = samples.inv_stride[:, None]
    return torch.stack([(gx * (1 - t)).sum(1), (gy * (1 - t)).sum(1), (gx * t).sum(1), (gy * t).sum(1)], 1) * inv


class BEVGridSamples(NamedTuple):
    """What ``rotated_bev_features`` computed and ``rotated_bev_box_grad`` needs again."""
    features: Tensor  # (N, n_w, n_l, C) channels last
    bilinear: BilinearSamples  # the n_w x n_l points of each box, row-major (width, length)
    rel_x: Tensor  # (N, n_w, n_l) each point's offset from the box centre, metres
    rel_y: Tensor
    u: Tensor  # (n_l,) the points' offsets along a unit length
    v: Tensor  # (n_w,) across a unit width
    cos: Tensor  # (N, 1, 1) of the yaw
    sin: Tensor
    scale: Tensor  # (2,) map pixels per metre along x and y


def rotated_bev_features(pyramid: FlatPyramid, boxes: Tensor, batch_idx: Tensor, bev_range: Sequence[float],
                         grid_size: Sequence[int] = (4, 7)) -> BEVGridSamples:
    """``sampling.rotated_bev_grid_sample`` on a flattened BEV map (level 0 of ``pyramid``), by gathers.

    Point (i, j) of box (x, y, l, w, yaw) is the centre + l u_j (cos, sin) + w v_i (-sin, cos),
    u_j = (j + 0.5) / n_l - 0.5, v_i = (i + 0.5) / n_w - 0.5, in metres; the map covers
    ``bev_range`` (x_min, y_min, x_max, y_max), W along x and H along y, pixel centres at
    integer + 0.5, read by ``bilinear_gather``.

    Args:
        pyramid: ``flatten_pyramid([bev], ...)`` of the (B, C, H, W) BEV map.
        boxes: (N, >= 7) LiDAR boxes (x, y, z, l, w, h, yaw).
        batch_idx: (N,) long, each box's frame.
        grid_size: (n_w, n_l).
    Returns:
        ``BEVGridSamples``; ``.features`` (N, n_w, n_l, C) equals ``rotated_bev_grid_sample(...)``
        (N, C, n_w, n_l) permuted to channels last.
    """
    n_w, n_l = grid_size
    n, dt = boxes.shape[0], boxes.dtype
    u = (torch.arange(n_l, device=boxes.device, dtype=dt) + 0.5) / n_l - 0.5
    v = (torch.arange(n_w, device=boxes.device, dtype=dt) + 0.5) / n_w - 0.5
    lu = boxes[:, 3:4, None] * u  # (N, 1, n_l)
    wv = boxes[:, 4:5, None] * v[:, None]  # (N, n_w, 1)
    cos, sin = boxes[:, 6:7, None].cos(), boxes[:, 6:7, None].sin()
    rel_x, rel_y = lu * cos - wv * sin, lu * sin + wv * cos  # (N, n_w, n_l)
    x0, y0, x1, y1 = (float(c) for c in bev_range)
    width, height = pyramid.widths[0].to(dt), pyramid.heights[0].to(dt)
    # (W / (x1 - x0)) rounded once to the boxes' dtype, as the eager sampler's Python float is
    scale = torch.stack([pyramid.widths[0].double() / (x1 - x0), pyramid.heights[0].double() / (y1 - y0)]).to(dt)
    # the eager sampler's order of operations, so float32 rounds alike
    px = (boxes[:, 0:1, None] + lu * cos - wv * sin - x0) * scale[0]
    py = (boxes[:, 1:2, None] + lu * sin + wv * cos - y0) * scale[1]
    levels = torch.zeros_like(batch_idx)
    dtype = pyramid.flat.dtype
    bil = bilinear_gather(pyramid, batch_idx, levels, _grid_sample_index(px, width, dtype).reshape(n, n_w * n_l),
                          _grid_sample_index(py, height, dtype).reshape(n, n_w * n_l))
    features = bil.values.reshape(n, n_w, n_l, pyramid.flat.shape[1])
    return BEVGridSamples(features, bil, rel_x, rel_y, u, v, cos, sin, scale)


def rotated_bev_box_grad(samples: BEVGridSamples, grad_features: Tensor) -> Tensor:
    """The chain rule from the BEV grid features to the box.

    Args:
        samples: ``rotated_bev_features``' output for the boxes.
        grad_features: (N, n_w, n_l, C) d(something)/d ``samples.features``.
    Returns:
        (N, 7) d(something)/d (x, y, z, l, w, h, yaw); z and h do not move the grid (0). With
        (gx, gy) a point's gradient in metres: x, y take the sum of gx, gy; l the sum of u (gx cos +
        gy sin); w the sum of v (gy cos - gx sin); yaw the sum of gy rel_x - gx rel_y.
    """
    n, n_w, n_l, channels = grad_features.shape
    d_ix, d_iy = bilinear_index_grad(samples.bilinear, grad_features.reshape(n, n_w * n_l, channels))
    dt = samples.rel_x.dtype
    gx = d_ix.reshape(n, n_w, n_l).to(dt) * samples.scale[0]
    gy = d_iy.reshape(n, n_w, n_l).to(dt) * samples.scale[1]
    cos, sin = samples.cos, samples.sin
    d_l = ((gx * cos + gy * sin) * samples.u).sum((1, 2))
    d_w = ((gy * cos - gx * sin) * samples.v[:, None]).sum((1, 2))
    d_yaw = (gy * samples.rel_x - gx * samples.rel_y).sum((1, 2))
    zero = torch.zeros_like(d_l)
    return torch.stack([gx.sum((1, 2)), gy.sum((1, 2)), zero, d_l, d_w, zero, d_yaw], 1)


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
    h, hidden = relu_mlp(MLPWeights(mlp.weights[:-1], mlp.biases[:-1]), x) if len(mlp.weights) > 1 else (x, ())
    w_out, b_out = mlp.weights[-1], mlp.biases[-1]
    out = h @ w_out.t() + b_out  # (N, K): every class, as the module computes it
    if labels is None or w_out.shape[0] == 1:
        f, rows = out[:, 0], w_out[0].expand(x.shape[0], -1)
    else:
        f, rows = out.gather(1, labels.long()[:, None])[:, 0], w_out[labels.long()]
    if not need_grad:
        return f, None
    return f, _relu_backprop(mlp.weights[:-1], hidden, rows)


def _relu_backprop(weights: Sequence[Tensor], hidden: Sequence[Tensor], g: Tensor) -> Tensor:
    """g (N, out of the last of ``weights``) back through ReLU(h @ w.t() + b) layers whose outputs
    were ``hidden``: the ReLU masks (h > 0), autograd's rule, then the transposed weights."""
    for w, h in zip(reversed(weights), reversed(hidden)):
        g = (g * (h > 0).to(g.dtype)) @ w
    return g


def relu_mlp(mlp: MLPWeights, x: Tensor) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    """A stack Linear -> ReLU -> ... -> Linear -> ReLU (a ReLU after every layer, as the 3D head's
    z / h encoders): (N, D) -> (output, every layer's output, for ``relu_mlp_input_grad``)."""
    hidden = []
    h = x
    for w, b in zip(mlp.weights, mlp.biases):
        h = torch.relu(h @ w.t() + b)
        hidden.append(h)
    return h, tuple(hidden)


def relu_mlp_input_grad(mlp: MLPWeights, hidden: Sequence[Tensor], grad_out: Tensor) -> Tensor:
    """(N, out) d(something)/d ``relu_mlp``'s output -> (N, D) d(something)/d its input."""
    return _relu_backprop(mlp.weights, hidden, grad_out)


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


def _rows_of(values, like: Tensor, dim: int) -> Tensor:
    """(N, dim) rows of the constants ``values`` (a number, or 1 or ``dim`` numbers) in the dtype and
    device of ``like`` (N,), by fills: a tensor built from host data (``torch.tensor``,
    ``new_tensor``) is a host-to-device copy, which a CUDA graph cannot capture."""
    values = (values, ) if isinstance(values, (int, float)) else tuple(values)
    cols = [torch.full_like(like, float(v)) for v in values]
    return torch.stack(cols * dim if len(cols) == 1 else cols, 1)


class StaticRefined(NamedTuple):
    boxes: Tensor  # (N, D) the refined box where ``refined``, else the input box
    ebm_scores: Tensor  # (N,) float32 f at the output box; -inf where not refined
    init_scores: Tensor  # (N,) float32 f at the input box; -inf where not selected
    refined: Tensor  # (N,) bool, as ``RefinedBoxes.refined``
    accepted: Tensor  # (N,) long: ascent steps that raised f (0 where not selected)
    attempted: Tensor  # (N,) long: ascent steps each box took part in (0 where not selected)


def static_refine_boxes(energy: BoxEnergy, boxes: Tensor, batch_idx: Tensor, labels: Tensor, cfg: RefineConfig,
                        codec: BoxCodec, scores: Optional[Tensor] = None,
                        img_shapes: Optional[Tensor] = None) -> StaticRefined:
    """``refine.refine_boxes`` as a fixed-shape graph, for any box type: every box goes through all T
    steps, and every per-box decision (selection, accept or revert, halving, convergence, validity,
    gate) is a ``torch.where``. The boxes that are not selected are carried along on the codec's
    stand-in box and dropped at the end, so nothing has a size that depends on the data and
    nothing waits for the host.

    Args:
        energy: f and df/dboxes at native boxes (``BoxEnergy``): ``EBMBoxHead``'s or
            ``EBMBoxHead3D``'s through ``ebm_det.deploy.StaticBoxRefiner`` / ``StaticBoxRefiner3D``;
            it is called with the selected start boxes as context (2D: their FPN level is held
            fixed).
        boxes: (N, D) boxes in the frame of the features (2D: network-input pixels x1, y1, x2, y2;
            LiDAR: x, y, z, l, w, h, yaw in metres and radians), float32 or float64.
        batch_idx, labels: (N,) long.
        cfg: the settings (``num_steps``, ``step_sizes``, ``decay``, ``tol``, ``score_thr``,
            ``max_per_img``, ``min_gain``); ``chunk_size`` is ignored (boxes are independent);
            ``autocast`` is refused (the scores would not be the ones the eager path compares).
        codec: the box space (steps, ``project``, ``decode_vjp``), the validity rule, the clipping,
            the default step sizes and the stand-in box.
        scores: (N,) detection scores for ``score_thr`` / ``max_per_img``; None selects every valid box.
        img_shapes: (B, 2) (h, w) per image, for clipping (a codec that ``clips_to_image``); None:
            no clipping.
    Returns:
        ``StaticRefined``; equal (up to float rounding) to ``refine_boxes`` with ``head.refine``'s
        ``RefineResult.accepted`` / ``attempted`` spread over the input boxes.
    """
    if cfg.autocast is not None:
        raise ValueError('static_refine_boxes runs in the dtype of its inputs; autocast is not supported')
    n = boxes.shape[0]
    shapes = None if img_shapes is None else img_shapes.to(boxes.device)[batch_idx]
    valid = codec.valid(boxes)
    if shapes is not None:  # a box wholly outside its image has no features to climb
        valid = valid & codec.in_frame(boxes, shapes)
    sel = valid if scores is None else select_for_refinement_static(scores, valid, batch_idx, cfg.score_thr,
                                                                    cfg.max_per_img)
    stand_in = _rows_of(codec.stand_in, boxes[:, 0], codec.dim)  # its results are dropped
    start = torch.where(sel[:, None], boxes, stand_in)
    ref = start
    space = codec.space
    y = space.encode(start, ref, check=False)  # every row valid: the selected box or the stand-in
    # RefineConfig checked the values when it was built (and step_sizes_for their number); re-checking
    # them here would be Python control flow on every trace
    lam = _rows_of(codec.default_step_sizes if cfg.step_sizes is None else cfg.step_sizes, y[:, 0], codec.dim)
    def score_and_grad(yy: Tensor) -> Tuple[Tensor, Tensor]:
        f, g = energy(space.decode(yy, ref), start, True)
        f = f.to(torch.promote_types(f.dtype, torch.float32))
        return f, space.decode_vjp(g, yy, ref)

    f, grad = score_and_grad(y)
    init = f
    active = sel
    accepted = torch.zeros(n, dtype=torch.long, device=boxes.device)
    attempted = torch.zeros_like(accepted)
    for _ in range(cfg.num_steps):
        cand = space.project(y + lam * grad)
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
    ascended = space.decode(space.project(y), ref).to(boxes.dtype)
    out_f = f.float()
    out = ascended
    if codec.clips_to_image and shapes is not None:
        out = codec.clip(ascended, shapes, ref=start)
        clipped = (out != ascended).any(-1)
        rescored, _ = energy(out, start, False)  # f where clipping moved the box, at its refinement's level
        out_f = torch.where(clipped, rescored.float(), out_f)
    init = init.float()
    if isinstance(cfg.min_gain, float):
        margin = cfg.min_gain
    else:  # per class
        margin = _rows_of(cfg.min_gain, init, len(cfg.min_gain)).gather(1, labels.long()[:, None])[:, 0]
    # a box no step moved comes back exactly, not round-tripped through the box space
    kept = sel & (accepted > 0) & codec.valid(out) & (out_f >= init + margin)
    neg_inf = torch.full_like(out_f, float('-inf'))
    return StaticRefined(torch.where(kept[:, None], out, boxes), torch.where(kept, out_f, neg_inf),
                         torch.where(sel, init, neg_inf), kept, torch.where(sel, accepted, 0),
                         torch.where(sel, attempted, 0))
