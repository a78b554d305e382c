"""Precise RoI pooling: an exact piecewise quadrature reference, closed-form maps, gradcheck (first
and second order), float32 precision on a large map, empty, degenerate and invalid input, tables
reused across box sets, and agreement with dense RoIAlign and with mmcv's PrRoIPool."""
import math

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from ebm_det.core.prroi_pool import PrRoIPoolTables, prroi_pool
from ebm_det.core.sampling import roi_grid_sample

f64 = torch.float64
DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA'))]


def _bilinear(fmap, x, y):
    """The interpolant of ``fmap`` (C, H, W) at feature coordinates ``x``, ``y`` (P,): cell (j, i)
    centred at (i, j), zeros outside the map. Returns (C, P) in float64."""
    fmap = fmap.double()
    c, h, w = fmap.shape
    out = torch.zeros(c, x.numel(), dtype=f64)
    for dy in (0, 1):
        for dx in (0, 1):
            i, j = x.floor() + dx, y.floor() + dy
            weight = (1 - (x - i).abs()) * (1 - (y - j).abs())
            inside = (i >= 0) & (i < w) & (j >= 0) & (j < h)
            vals = fmap[:, j.long().clamp(0, h - 1), i.long().clamp(0, w - 1)]
            out += torch.where(inside, weight, torch.zeros_like(weight)) * vals
    return out


def _gauss_legendre(lo, hi, size):
    """Nodes and weights integrating the interpolant along one axis over [lo, hi] exactly: 2-point
    Gauss-Legendre on every piece between integers inside [-1, size] (the interpolant is zero
    outside, and linear on each piece)."""
    lo, hi = max(lo, -1.0), min(hi, float(size))
    nodes, weights = [], []
    if lo < hi:
        cuts = [lo] + [float(k) for k in range(math.floor(lo) + 1, math.ceil(hi))] + [hi]
        for a, b in zip(cuts[:-1], cuts[1:]):
            mid, half = (a + b) / 2, (b - a) / 2
            nodes += [mid - half / math.sqrt(3), mid + half / math.sqrt(3)]
            weights += [half, half]
    return torch.tensor(nodes, dtype=f64), torch.tensor(weights, dtype=f64)


def _slow_prroi_pool(features, boxes, batch_idx, size, scale, aligned):
    """PrRoIPool by quadrature, bin by bin; bins of positive area only. Returns (N, C, s_h, s_w)."""
    s_h, s_w = size
    feats, boxes = features.detach().double().cpu(), boxes.detach().double().cpu()
    out = torch.zeros(len(boxes), feats.shape[1], s_h, s_w, dtype=f64)
    for n, box in enumerate(boxes.tolist()):
        fmap = feats[int(batch_idx[n])]
        x1, y1, x2, y2 = (v * scale - (0.5 if aligned else 0.0) for v in box)
        bw, bh = (x2 - x1) / s_w, (y2 - y1) / s_h
        assert bw > 0 and bh > 0
        for q in range(s_h):
            lo_y, hi_y = y1 + q * bh, y1 + (q + 1) * bh
            ny, wy = _gauss_legendre(lo_y, hi_y, fmap.shape[1])
            for p in range(s_w):
                lo_x, hi_x = x1 + p * bw, x1 + (p + 1) * bw
                nx, wx = _gauss_legendre(lo_x, hi_x, fmap.shape[2])
                if len(nx) and len(ny):
                    yy, xx = torch.meshgrid(ny, nx, indexing='ij')
                    vals = _bilinear(fmap, xx.flatten(), yy.flatten())
                    # the area of these very limits: for bins 1e-6 wide, bw itself is 1e-8 off
                    out[n, :, q, p] = vals @ (wy[:, None] * wx[None]).flatten() / ((hi_x - lo_x) * (hi_y - lo_y))
    return out


# A 2 x 3 x 6 x 8 map at stride 2 (a 16 x 12 pixel image), the boxes in pixels.
BOXES = [
    [3.1, 2.7, 12.4, 9.9],  # inside
    [-5.3, -3.2, 6.6, 7.1],  # over the top-left corner
    [10.2, 8.3, 23.7, 17.9],  # over the bottom-right corner
    [30.0, 2.0, 40.0, 8.0],  # right of the map
    [-20.0, -20.0, -4.0, -3.5],  # above-left of the map
    [7.3, 5.1, 7.9, 5.4],  # tiny: 0.3 x 0.15 cells
    [6.98, 4.97, 7.03, 5.02],  # tiny, over cell boundaries in both conventions
    [-14.0, -11.0, 33.0, 25.0],  # larger than the map
    [1.0, 1.0, 9.0, 5.0],  # edges on cell centres (aligned) or on cell boundaries (not)
]
OUTSIDE = [3, 4]


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('aligned', [True, False])
def test_matches_exact_quadrature(aligned, device):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 6, 8, generator=g, dtype=f64).to(device)
    boxes = torch.tensor(BOXES, dtype=f64, device=device)
    batch_idx = torch.tensor([0, 1, 1, 0, 1, 0, 1, 0, 1], device=device)
    out = prroi_pool(features, boxes, batch_idx, (3, 4), 0.5, aligned)
    assert out.shape == (9, 3, 3, 4) and out.dtype == f64 and out.device.type == device
    ref = _slow_prroi_pool(features, boxes, batch_idx, (3, 4), 0.5, aligned)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-10, atol=1e-10)
    assert bool((out[OUTSIDE] == 0).all())  # exactly zero outside the map
    assert bool((ref.abs().flatten(1).amax(1) > 0.1)[[0, 1, 2, 5, 6, 7, 8]].all())  # the others read the map
    # square output size given as an int; each box pooled alone gives the same
    torch.testing.assert_close(prroi_pool(features, boxes, batch_idx, 2, 0.5, aligned).cpu(),
                               _slow_prroi_pool(features, boxes, batch_idx, (2, 2), 0.5, aligned), rtol=1e-10,
                               atol=1e-10)
    for n in (1, 6):
        torch.testing.assert_close(prroi_pool(features, boxes[n:n + 1], batch_idx[n:n + 1], (3, 4), 0.5, aligned),
                                   out[n:n + 1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('aligned', [True, False])
def test_constant_map(aligned, device):
    """f = C between the cell centres [0, W - 1] x [0, H - 1] and a linear ramp to 0 over the outer
    ring of half-cells: bins fully inside read C, bins on the ramp known fractions of it."""
    const, scale = 3.5, 0.5
    features = torch.full((1, 2, 6, 8), const, dtype=f64, device=device)

    def pool(feature_box, size):  # the box given in feature coordinates
        shift = 0.5 if aligned else 0.0
        box = torch.tensor([[(v + shift) / scale for v in feature_box]], dtype=f64, device=device)
        return prroi_pool(features, box, torch.zeros(1, dtype=torch.long, device=device), size, scale, aligned)[0, 0]

    def expect(rows):
        return torch.tensor(rows, dtype=f64, device=device) * const

    torch.testing.assert_close(pool([0.2, 0.0, 6.9, 4.6], 3), expect([[1.0] * 3] * 3))
    torch.testing.assert_close(pool([-1.0, -1.0, 1.0, 1.0], 2), expect([[1 / 4, 1 / 2], [1 / 2, 1]]))
    torch.testing.assert_close(pool([6.0, 4.0, 8.0, 6.0], 2), expect([[1, 1 / 2], [1 / 2, 1 / 4]]))
    torch.testing.assert_close(pool([-2.0, 1.0, 2.0, 3.0], (1, 4)), expect([[0, 1 / 2, 1, 1]]))
    # the ramp's integral over [-1, -0.5] is 1/8, in a bin one cell wide
    torch.testing.assert_close(pool([-1.5, 1.0, -0.5, 3.0], 1), expect([[1 / 8]]))
    # over the whole map: (1/2 + 7 + 1/2) x (1/2 + 5 + 1/2) in a 13 x 12 bin
    torch.testing.assert_close(pool([-3.0, -3.0, 10.0, 9.0], 1), expect([[8 * 6 / (13 * 12)]]))


@pytest.mark.parametrize('device', DEVICES)
def test_linear_and_bilinear_maps_give_the_bin_centre(device):
    """Inside [0, W - 1] x [0, H - 1] the interpolant of a*i + b*j + c is a*x + b*y + c, and of i*j
    is x*y: a bin's mean is the value at its centre."""
    h, w = 9, 12
    jj, ii = torch.meshgrid(torch.arange(h, dtype=f64), torch.arange(w, dtype=f64), indexing='ij')
    features = torch.stack([0.7 * ii - 0.3 * jj + 2, ii * jj])[None].to(device)
    g = torch.Generator().manual_seed(1)
    lo = torch.rand(20, 2, generator=g, dtype=f64) * torch.tensor([5.0, 4.0], dtype=f64)
    hi = lo + torch.rand(20, 2, generator=g, dtype=f64) * torch.tensor([w - 1.0, h - 1.0], dtype=f64).sub(lo)
    feature_boxes = torch.cat([lo, hi], -1)  # inside [0, 11] x [0, 8], some smaller than a cell
    boxes = ((feature_boxes + 0.5) * 4).to(device)  # stride 4, aligned
    out = prroi_pool(features, boxes, torch.zeros(20, dtype=torch.long, device=device), (2, 3), 0.25)
    frac_x = (torch.arange(3, dtype=f64) + 0.5) / 3
    frac_y = (torch.arange(2, dtype=f64) + 0.5) / 2
    cx = (feature_boxes[:, 0:1] + (feature_boxes[:, 2:3] - feature_boxes[:, 0:1]) * frac_x)[:, None, :]
    cy = (feature_boxes[:, 1:2] + (feature_boxes[:, 3:4] - feature_boxes[:, 1:2]) * frac_y)[:, :, None]
    torch.testing.assert_close(out[:, 0].cpu(), 0.7 * cx - 0.3 * cy + 2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[:, 1].cpu(), cx * cy, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('device', DEVICES)
def test_zero_width_and_height_give_the_limit(device):
    g = torch.Generator().manual_seed(2)
    features = torch.randn(1, 2, 6, 8, generator=g, dtype=f64).to(device)
    idx = torch.zeros(1, dtype=torch.long, device=device)
    x, y1, y2 = 5.3, 1.7, 9.9  # pixels, aligned, stride 1
    line = torch.tensor([[x, y1, x, y2]], dtype=f64, device=device, requires_grad=True)
    out = prroi_pool(features, line, idx, 3, 1.0)
    assert out.shape == (1, 2, 3, 3)
    # the mean of f along each bin's vertical segment, by exact 1-D quadrature
    for q in range(3):
        lo, hi = y1 - 0.5 + q * (y2 - y1) / 3, y1 - 0.5 + (q + 1) * (y2 - y1) / 3
        nodes, weights = _gauss_legendre(lo, hi, 6)
        expect = _bilinear(features[0].cpu(), torch.full_like(nodes, x - 0.5), nodes) @ weights / (hi - lo)
        for p in range(3):
            torch.testing.assert_close(out[0, :, q, p].cpu(), expect, rtol=1e-12, atol=1e-12)
    # continuous at width 0: a box 1e-9 wide reads the same up to O(width)
    thin = torch.tensor([[x, y1, x + 1e-9, y2]], dtype=f64, device=device)
    torch.testing.assert_close(prroi_pool(features, thin, idx, 3, 1.0), out, rtol=0, atol=1e-8)
    # a point: every bin is f there; zero outside the map; gradients finite
    point = torch.tensor([[x, y1, x, y1], [-3.0, 2.0, -3.0, 2.0]], dtype=f64, device=device, requires_grad=True)
    at_point = prroi_pool(features, point, idx.repeat(2), 2, 1.0)
    value = _bilinear(features[0].cpu(), torch.tensor([x - 0.5], dtype=f64), torch.tensor([y1 - 0.5], dtype=f64))
    torch.testing.assert_close(at_point[0].cpu(), value[:, :, None].expand(2, 2, 2), rtol=1e-12, atol=1e-12)
    assert bool((at_point[1] == 0).all())
    (out.square().sum() + at_point.square().sum()).backward()
    assert bool(torch.isfinite(line.grad).all() and torch.isfinite(point.grad).all())
    assert bool((line.grad[0, [0, 1, 3]] != 0).all())


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('aligned', [True, False])
def test_gradcheck(aligned, device):
    g = torch.Generator().manual_seed(3)
    features = torch.randn(2, 2, 5, 7, generator=g, dtype=f64).to(device).requires_grad_(True)
    boxes = torch.tensor([
        [-3.3, -2.1, 6.2, 5.7],  # over the top-left corner
        [4.1, 3.3, 4.6, 3.55],  # tiny
        [-9.5, -8.2, 21.1, 17.3],  # larger than the map
        [5.55, 4.3, 5.7, 4.47],  # tiny, over cell boundaries
        [7.2, 1.3, 11.6, 9.4],  # over the bottom-right edges
    ], dtype=f64, device=device, requires_grad=True)
    batch_idx = torch.tensor([0, 1, 1, 0, 1], device=device)

    def fn(f, b):
        return prroi_pool(f, b, batch_idx, (2, 3), 0.8, aligned)

    assert gradcheck(fn, (features, boxes), eps=1e-6, atol=1e-6)
    # twice differentiable (DSM trains through the box gradient), away from the integer kinks;
    # the full check in the boxes costs 3 s, so with the features it runs in fast mode
    assert gradgradcheck(fn, (features, boxes), eps=1e-6, atol=1e-5, fast_mode=True)
    if aligned:
        assert gradgradcheck(lambda b: fn(features.detach(), b), (boxes,), eps=1e-6, atol=1e-5)
    fn(features, boxes).square().sum().backward()
    assert bool((boxes.grad != 0).all())


def test_box_gradient_is_continuous():
    """Sliding x1 over several cell boundaries, the gradient w.r.t. x1 changes by O(step): a 4x
    finer step gives about 4x smaller jumps (RoIAlign's gradient would jump by O(1))."""
    g = torch.Generator().manual_seed(4)
    features = torch.randn(1, 3, 6, 8, generator=g, dtype=f64)

    def max_jump(steps):
        x1 = torch.linspace(0.3, 3.7, steps, dtype=f64)
        boxes = torch.stack([x1, torch.full_like(x1, 1.2), torch.full_like(x1, 6.4), torch.full_like(x1, 4.9)], -1)
        boxes.requires_grad_(True)
        out = prroi_pool(features, boxes, torch.zeros(steps, dtype=torch.long), 2, 1.0)
        grad = torch.autograd.grad(out.sum(), boxes)[0][:, 0]
        return float(grad.diff().abs().max()), float(grad.abs().max())

    coarse, scale = max_jump(171)
    fine, _ = max_jump(681)
    assert coarse < 0.1 * scale and fine < 0.4 * coarse


@pytest.mark.parametrize('device', DEVICES)
def test_float32_precision_on_a_large_map(device):
    """A 4 x 200 x 336 map of values ~N(5, 1) (the P2 map of an 800 x 1344 image): its 2-D prefix
    sums reach 3.4e5, which float32 holds to about 0.03. float32 maps are pooled on float32
    tables of the map minus its mean (prefix sums of a few hundred): the result stays within
    2e-5 of the float64 one (measured 6.4e-6, about 13 ulp of 5), also in the far corner."""
    g = torch.Generator().manual_seed(5)
    features = (5 + torch.randn(1, 4, 200, 336, generator=g)).to(device)
    boxes = torch.tensor([
        [1330.5, 790.2, 1343.9, 799.6],  # in the far corner
        [1300.0, 770.0, 1346.0, 802.0],  # over the far corner
        [1341.1, 797.3, 1341.4, 797.5],  # tiny, in the far corner
        [0.0, 0.0, 1344.0, 800.0],  # the whole map
    ], device=device, requires_grad=True)
    idx = torch.zeros(4, dtype=torch.long, device=device)
    out32 = prroi_pool(features, boxes, idx, 7, 0.25)
    boxes64 = boxes.detach().double().requires_grad_(True)
    out64 = prroi_pool(features.double(), boxes64, idx, 7, 0.25)
    assert out32.dtype == torch.float32
    assert float((out32.double() - out64).abs().max()) <= 2e-5
    ref = _slow_prroi_pool(features, boxes[:3], idx[:3], (7, 7), 0.25, True)
    assert float((out32[:3].double().cpu() - ref).abs().max()) <= 2e-5
    # the box gradient too
    grad_out = torch.randn(out64.shape, generator=g, dtype=f64).to(device)
    (out32 * grad_out.float()).sum().backward()
    (out64 * grad_out).sum().backward()
    torch.testing.assert_close(boxes.grad.double(), boxes64.grad, rtol=1e-4, atol=1e-4)
    # bins 2e-6 cells wide, over cell boundaries: their weights are written without 1 / width, so
    # they keep the float64 precision (a plain difference of corner integrals is off by 4e-6)
    narrow = torch.tensor([[1341.9999, 797.9999, 1342.0001, 798.0001]], dtype=f64, device=device)
    torch.testing.assert_close(prroi_pool(features.double(), narrow, idx[:1], 7, 0.25).cpu(),
                               _slow_prroi_pool(features, narrow, idx[:1], (7, 7), 0.25, True), rtol=0, atol=1e-8)
    # why not plain float32 tables: a float32 prefix-sum difference loses the far-corner cell badly
    table32 = features[0, 0].cumsum(0).cumsum(1)
    corner32 = table32[-1, -1] - table32[-2, -1] - table32[-1, -2] + table32[-2, -2]
    assert float((corner32 - features[0, 0, -1, -1]).abs()) > 1e-4


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, f64])
def test_empty_input(dtype, device):
    features = torch.randn(2, 3, 5, 6, dtype=dtype, device=device, requires_grad=True)
    boxes = torch.zeros(0, 4, dtype=dtype, device=device, requires_grad=True)
    out = prroi_pool(features, boxes, torch.zeros(0, dtype=torch.long, device=device), 7, 0.5)
    assert out.shape == (0, 3, 7, 7) and out.dtype == dtype and out.device.type == device
    out.sum().backward()
    assert boxes.grad.shape == (0, 4)
    assert features.grad is None or bool((features.grad == 0).all())


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_inputs_are_pooled_in_float64(dtype, device):
    g = torch.Generator().manual_seed(6)
    features = torch.randn(2, 3, 6, 8, generator=g).to(device, dtype)
    boxes = torch.tensor(BOXES, device=device).to(dtype).requires_grad_(True)
    idx = torch.tensor([0, 1, 1, 0, 1, 0, 1, 0, 1], device=device)
    out = prroi_pool(features, boxes, idx, 3, 0.5)
    assert out.dtype == dtype
    expect = prroi_pool(features.double(), boxes.detach().double(), idx, 3, 0.5)
    torch.testing.assert_close(out.double(), expect, rtol=1e-2, atol=1e-2)
    out.float().sum().backward()
    assert boxes.grad.dtype == dtype


def test_invalid_input_raises():
    features = torch.randn(2, 3, 5, 6)
    boxes = torch.tensor([[1.0, 1.0, 4.0, 4.0]])
    idx = torch.tensor([0])
    cases = [
        ((features[0], boxes, idx), r'\(B, C, H, W\)'),
        ((features.long(), boxes, idx), 'floating point'),
        ((features, boxes[:, :3], idx), r'\(N, 4\)'),
        ((features, boxes.long(), idx), 'floating point'),
        ((features, boxes, idx.float()), 'integer'),
        ((features, boxes, torch.tensor([0, 1])), 'integer tensor of shape'),
        ((features, boxes, [0]), 'tensor'),
        ((features, boxes, torch.tensor([2])), r'\[0, 2\)'),
        ((features, boxes, torch.tensor([-1])), r'\[0, 2\)'),
        ((features, torch.tensor([[4.0, 1.0, 1.0, 4.0]]), idx), 'x2 >= x1'),
        ((features, torch.tensor([[1.0, 4.0, 4.0, 1.0]]), idx), 'y2 >= y1'),
        ((features, torch.tensor([[1.0, float('nan'), 4.0, 4.0]]), idx), 'NaN'),
        ((features, torch.tensor([[1.0, 1.0, float('inf'), 4.0]]), idx), 'NaN or inf'),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            prroi_pool(*args, 7, 0.5)
    for size in (0, (2, 0), 2.5, (1, 2, 3)):
        with pytest.raises(ValueError, match='output_size'):
            prroi_pool(features, boxes, idx, size, 0.5)
    for scale in (0.0, -1.0, float('nan'), float('inf')):
        with pytest.raises(ValueError, match='spatial_scale'):
            prroi_pool(features, boxes, idx, 7, scale)


@pytest.mark.parametrize('device', DEVICES)
def test_tables_pool_many_box_sets(device):
    g = torch.Generator().manual_seed(7)
    features = torch.randn(2, 3, 9, 11, generator=g, dtype=f64).to(device).requires_grad_(True)
    boxes_a = torch.tensor([[1.0, 2.0, 15.0, 11.0], [-3.0, 4.0, 8.0, 19.0]], dtype=f64, device=device)
    boxes_b = torch.tensor([[5.5, 0.5, 9.0, 7.5], [12.0, 3.0, 26.0, 14.0], [0.0, 0.0, 22.0, 18.0]], dtype=f64,
                           device=device)
    idx_a, idx_b = torch.tensor([1, 0], device=device), torch.tensor([0, 1, 1], device=device)
    tables = PrRoIPoolTables(features)
    out_a = tables.pool(boxes_a, idx_a, 7, 0.5)
    out_b = tables.pool(boxes_b, idx_b, (2, 5), 0.5, aligned=False)
    torch.testing.assert_close(out_a, prroi_pool(features, boxes_a, idx_a, 7, 0.5), rtol=0, atol=0)
    torch.testing.assert_close(out_b, prroi_pool(features, boxes_b, idx_b, (2, 5), 0.5, False), rtol=0, atol=0)
    # gradients of both poolings reach the features through the one table
    (out_a.sum() + 2 * out_b.sum()).backward()
    grad_a, = torch.autograd.grad(prroi_pool(features, boxes_a, idx_a, 7, 0.5).sum(), features)
    grad_b, = torch.autograd.grad(prroi_pool(features, boxes_b, idx_b, (2, 5), 0.5, False).sum(), features)
    torch.testing.assert_close(features.grad, grad_a + 2 * grad_b, rtol=1e-10, atol=1e-10)
    # the refinement pattern: frozen features, one table, a box gradient at every step
    frozen = PrRoIPoolTables(features.detach())
    y = boxes_a
    for _ in range(3):
        y = y.detach().requires_grad_(True)
        grad, = torch.autograd.grad(frozen.pool(y, idx_a, 7, 0.5).square().mean(), y)
        assert bool(torch.isfinite(grad).all() and (grad != 0).any())
        y = y + 0.5 * grad
    # channels-last maps (the heads' CPU layout) give the same table
    cl = PrRoIPoolTables(features.detach().contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl.pool(boxes_b, idx_b, 3, 0.5), frozen.pool(boxes_b, idx_b, 3, 0.5), rtol=0, atol=0)


def test_agrees_with_dense_roi_align_on_a_smooth_map():
    """RoIAlign(aligned=True) with 16 x 16 samples per bin is a fine midpoint rule for the same
    integral: on a smooth map the two agree closely (same pixel-centre convention)."""
    jj, ii = torch.meshgrid(torch.arange(20, dtype=f64), torch.arange(24, dtype=f64), indexing='ij')
    features = torch.stack([torch.sin(0.3 * ii + 0.2 * jj), torch.cos(0.25 * ii - 0.15 * jj) * jj / 20])[None]
    boxes = torch.tensor([[10.3, 12.1, 70.6, 66.2], [30.2, 8.8, 90.1, 40.4]], dtype=f64)  # stride 4
    idx = torch.zeros(2, dtype=torch.long)
    ours = prroi_pool(features, boxes, idx, 7, 0.25, aligned=True)
    dense = roi_grid_sample([features], boxes, idx, torch.zeros(2, dtype=torch.long), [4], out_size=7,
                            sampling_ratio=16)
    torch.testing.assert_close(ours, dense, rtol=0, atol=5e-4)  # measured 1.2e-4, and 1e-5 at 64 x 64
    assert float((ours - prroi_pool(features, boxes, idx, 7, 0.25, aligned=False)).abs().max()) > 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mmcv's PrRoIPool is CUDA-only")
def test_equals_mmcv_prroi_pool():
    ops = pytest.importorskip('mmcv.ops')
    g = torch.Generator().manual_seed(8)
    features = torch.randn(2, 4, 12, 15, generator=g).cuda().requires_grad_(True)
    boxes = torch.tensor([
        [8.3, 6.1, 41.7, 30.2],  # inside
        [-10.2, -6.3, 20.4, 17.9],  # over the top-left corner
        [40.3, 30.1, 70.8, 55.2],  # over the bottom-right corner
        [-30.0, -20.0, 90.0, 75.0],  # larger than the map
        [22.1, 14.3, 23.4, 15.1],  # smaller than a cell
    ]).cuda()
    batch_idx = torch.tensor([0, 1, 1, 0, 1]).cuda()
    rois = torch.cat([batch_idx[:, None].float(), boxes], 1).requires_grad_(True)
    theirs = ops.PrRoIPool(7, spatial_scale=0.25)(features, rois)
    boxes.requires_grad_(True)
    ours = prroi_pool(features, boxes, batch_idx, 7, 0.25, aligned=False)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    grad_out = torch.randn(ours.shape, generator=g).cuda()
    grad_f_theirs, grad_rois = torch.autograd.grad(theirs, (features, rois), grad_out)
    grad_f_ours, grad_boxes = torch.autograd.grad(ours, (features, boxes), grad_out)
    torch.testing.assert_close(grad_f_ours, grad_f_theirs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_boxes, grad_rois[:, 1:], rtol=1e-3, atol=1e-4)
