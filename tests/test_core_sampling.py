"""Box-differentiable feature samplers: gradcheck, a slow RoIAlign reference, mmcv equality and the
geometry of the rotated BEV grid."""
import math

import pytest
import torch
from torch.autograd import gradcheck

from ebm_det.core.sampling import roi_grid_sample, rotated_bev_grid_sample, sampling_layout, sort_by_group

devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
f64 = torch.float64


def _slow_bilinear(fmap, x, y):
    """fmap (C, H, W); (x, y) in pixel units with pixel centres at integer + 0.5; zeros outside
    (grid_sample's padding_mode='zeros', align_corners=False)."""
    c, h, w = fmap.shape
    xc, yc = x - 0.5, y - 0.5
    x0, y0 = math.floor(xc), math.floor(yc)
    out = [0.0] * c
    for yy, wy in ((y0, 1 - (yc - y0)), (y0 + 1, yc - y0)):
        for xx, wx in ((x0, 1 - (xc - x0)), (x0 + 1, xc - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                for k in range(c):
                    out[k] += wy * wx * float(fmap[k, yy, xx])
    return out


def _slow_roi_align(features, boxes, batch_idx, levels, strides, out_size, ratio):
    """RoIAlign(aligned=True, avg) with explicit loops: bin (ph, pw) averages ratio^2 points."""
    n = boxes.shape[0]
    c = features[0].shape[1]
    out = torch.zeros(n, c, out_size, out_size, dtype=f64)
    for i in range(n):
        fmap = features[int(levels[i])][int(batch_idx[i])].double().cpu()
        x1, y1, x2, y2 = (float(v) / strides[int(levels[i])] for v in boxes[i])
        bw, bh = (x2 - x1) / out_size, (y2 - y1) / out_size
        for ph in range(out_size):
            for pw in range(out_size):
                acc = [0.0] * c
                for iy in range(ratio):
                    for ix in range(ratio):
                        y = y1 + ph * bh + (iy + 0.5) * bh / ratio
                        x = x1 + pw * bw + (ix + 0.5) * bw / ratio
                        v = _slow_bilinear(fmap, x, y)
                        acc = [a + b / ratio**2 for a, b in zip(acc, v)]
                for k in range(c):
                    out[i, k, ph, pw] = acc[k]
    return out


def _pyramid(device, dtype=f64, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(2, 2, 8, 10, generator=g, dtype=f64), torch.randn(2, 2, 4, 5, generator=g, dtype=f64)]
    return [f.to(device, dtype) for f in feats], (4, 8)  # images 32 x 40 pixels


def _boxes_partly_outside(device, seed=1):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(6, 2, generator=g, dtype=f64) * torch.tensor([40., 32.], dtype=f64) - 6
    wh = torch.rand(6, 2, generator=g, dtype=f64) * 14 + 3
    boxes = torch.cat([xy, xy + wh], -1)
    boxes[0] = torch.tensor([-5.3, -3.1, 7.7, 9.2])  # over the top-left corner
    boxes[1] = torch.tensor([33.1, 20.4, 46.3, 37.9])  # over the bottom-right corner
    batch_idx = torch.tensor([0, 1, 1, 0, 1, 0])
    levels = torch.tensor([0, 1, 0, 1, 0, 1])
    return boxes.to(device), batch_idx.to(device), levels.to(device)


@pytest.mark.parametrize('device', devices)
@pytest.mark.parametrize('dtype', [torch.float32, f64])
def test_roi_grid_sample_matches_slow_reference(dtype, device):
    feats, strides = _pyramid(device, dtype)
    boxes, batch_idx, levels = _boxes_partly_outside(device)
    out = roi_grid_sample(feats, boxes.to(dtype), batch_idx, levels, strides, out_size=3, sampling_ratio=2)
    assert out.shape == (6, 2, 3, 3) and out.dtype == dtype and out.device.type == device
    ref = _slow_roi_align(feats, boxes.cpu(), batch_idx, levels, strides, 3, 2)
    tol = 1e-10 if dtype == f64 else 1e-5
    torch.testing.assert_close(out.double().cpu(), ref, rtol=tol, atol=tol)
    # the layout the heads sample in (channels-last on CPU) gives the same values
    cl = [sampling_layout(f) for f in feats]
    if device == 'cpu':
        assert all(f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous() for f in cl)
    torch.testing.assert_close(roi_grid_sample(cl, boxes.to(dtype), batch_idx, levels, strides, 3, 2), out,
                               rtol=tol, atol=tol)
    # boxes given already grouped by (level, image) take the path without sort and gather
    order, inverse = sort_by_group(levels, batch_idx, 2)
    assert not torch.equal(order, torch.arange(6, device=device))
    grouped = roi_grid_sample(feats, boxes[order].to(dtype), batch_idx[order], levels[order], strides, 3, 2)
    torch.testing.assert_close(grouped, out[order], rtol=0, atol=0)
    torch.testing.assert_close(grouped[inverse], out, rtol=0, atol=0)
    # a box entirely outside the map samples zeros; an empty batch gives an empty output
    far = torch.tensor([[100., 100., 120., 130.]], dtype=dtype, device=device)
    zero = roi_grid_sample(feats, far, batch_idx[:1], levels[:1], strides, out_size=3)
    assert bool((zero == 0).all())
    empty = roi_grid_sample(feats, boxes[:0].to(dtype), batch_idx[:0], levels[:0], strides, out_size=3)
    assert empty.shape == (0, 2, 3, 3)


def test_roi_grid_sample_default_size_and_ratio():
    feats, strides = _pyramid('cpu')
    boxes, batch_idx, levels = _boxes_partly_outside('cpu')
    out = roi_grid_sample(feats, boxes[:2], batch_idx[:2], levels[:2], strides)
    assert out.shape == (2, 2, 7, 7)
    torch.testing.assert_close(out, _slow_roi_align(feats, boxes[:2], batch_idx[:2], levels[:2], strides, 7, 2))
    out1 = roi_grid_sample(feats, boxes[:2], batch_idx[:2], levels[:2], strides, out_size=2, sampling_ratio=1)
    torch.testing.assert_close(out1, _slow_roi_align(feats, boxes[:2], batch_idx[:2], levels[:2], strides, 2, 1))


@pytest.mark.parametrize('device', devices)
def test_roi_grid_sample_gradcheck(device):
    feats, strides = _pyramid(device)
    boxes, batch_idx, levels = _boxes_partly_outside(device)
    ones = [torch.ones_like(f) for f in feats]
    cover = roi_grid_sample(ones, boxes, batch_idx, levels, strides, out_size=2)
    assert bool((cover[:2] < 1).any()) and bool((cover[:2] > 0).all())  # partly outside
    boxes = boxes.clone().requires_grad_(True)
    feats = [f.clone().requires_grad_(True) for f in feats]

    def fn(b, f0, f1):
        return roi_grid_sample([f0, f1], b, batch_idx, levels, strides, out_size=2, sampling_ratio=2)

    assert gradcheck(fn, (boxes, *feats), eps=1e-6, atol=1e-5)
    cl = [sampling_layout(f.detach()).requires_grad_(True) for f in feats]
    assert gradcheck(fn, (boxes, *cl), eps=1e-6, atol=1e-5)  # channels-last maps
    order, _ = sort_by_group(levels, batch_idx, 2)  # the grouped path (no sort, no gather)
    assert gradcheck(lambda b, f0, f1: roi_grid_sample([f0, f1], b, batch_idx[order], levels[order], strides, 2, 2),
                     (boxes.detach()[order].requires_grad_(True), *feats), eps=1e-6, atol=1e-5)
    # every box coordinate gets a gradient (also the boxes partly outside)
    fn(boxes, *feats).pow(2).sum().backward()
    assert bool((boxes.grad.abs() > 0).all())


def _inside_boxes(device):
    """Boxes inside the 32 x 40 image with a margin of half a feature pixel at the coarsest level
    (stride 8: [4, 36] x [4, 28]). RoIAlign clamps points within half a pixel of the border, where
    grid_sample fades to zero, so only inside such a margin do the two agree."""
    g = torch.Generator().manual_seed(4)
    xy = torch.rand(8, 2, generator=g) * torch.tensor([12., 8.]) + 6
    wh = torch.rand(8, 2, generator=g) * 10 + 2
    boxes = torch.cat([xy, xy + wh], -1).to(device)
    assert float(boxes[:, :2].min()) >= 4 and float(boxes[:, 2].max()) <= 36 and float(boxes[:, 3].max()) <= 28
    batch_idx = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1], device=device)
    levels = torch.tensor([0, 0, 1, 1, 0, 1, 0, 1], device=device)
    return boxes, batch_idx, levels


@pytest.mark.parametrize('device', devices)
def test_roi_align_equals_torchvision(device):
    tv_ops = pytest.importorskip('torchvision.ops')
    feats, strides = _pyramid(device, torch.float32, seed=3)
    boxes, batch_idx, levels = _inside_boxes(device)
    ours = roi_grid_sample(feats, boxes, batch_idx, levels, strides, out_size=7, sampling_ratio=2)
    for lvl, stride in enumerate(strides):
        rows = (levels == lvl).nonzero().flatten()
        rois = torch.cat([batch_idx[rows, None].float(), boxes[rows]], -1)
        theirs = tv_ops.roi_align(feats[lvl], rois, (7, 7), spatial_scale=1.0 / stride, sampling_ratio=2,
                                  aligned=True)
        torch.testing.assert_close(ours[rows], theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('device', devices)
def test_roi_align_equals_mmcv(device):
    ops = pytest.importorskip('mmcv.ops')
    feats, strides = _pyramid(device, torch.float32, seed=3)
    boxes, batch_idx, levels = _inside_boxes(device)
    ours = roi_grid_sample(feats, boxes, batch_idx, levels, strides, out_size=7, sampling_ratio=2)
    for lvl, stride in enumerate(strides):
        rows = (levels == lvl).nonzero().flatten()
        rois = torch.cat([batch_idx[rows, None].float(), boxes[rows]], -1)
        theirs = ops.roi_align(feats[lvl], rois, (7, 7), 1.0 / stride, 2, 'avg', True)
        torch.testing.assert_close(ours[rows], theirs, rtol=1e-4, atol=1e-5)
        layer = ops.RoIAlign((7, 7), spatial_scale=1.0 / stride, sampling_ratio=2, pool_mode='avg', aligned=True)
        torch.testing.assert_close(ours[rows], layer(feats[lvl], rois), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- rotated BEV grid
BEV_RANGE = (-8.0, -8.0, 8.0, 8.0)  # 16 m square, 16 x 16 cells of 1 m


def _boxes7(device):
    return torch.tensor([
        [0.3, -1.2, 0.5, 4.1, 1.9, 1.6, 0.4],
        [-2.0, 2.5, -1.0, 3.3, 1.7, 1.5, -2.3],
        [7.6, 7.0, 0.0, 4.0, 2.2, 1.5, 2.9],  # partly outside the map
        [-8.2, 0.7, 0.2, 5.2, 2.0, 1.8, math.pi / 2 + 0.1],  # centre outside the map
    ], dtype=f64, device=device)


@pytest.mark.parametrize('device', devices)
def test_rotated_bev_gradcheck(device):
    g = torch.Generator().manual_seed(5)
    bev = torch.randn(2, 2, 16, 16, generator=g, dtype=f64).to(device).requires_grad_(True)
    boxes = _boxes7(device).requires_grad_(True)
    batch_idx = torch.tensor([0, 1, 1, 0], device=device)

    def fn(b, m):
        return rotated_bev_grid_sample(m, b, batch_idx, BEV_RANGE, grid_size=(2, 3))

    assert fn(boxes, bev).shape == (4, 2, 2, 3)
    # the last two boxes really are partly outside: some of their grid points read zero padding
    ones = torch.ones(2, 1, 16, 16, dtype=f64, device=device)
    cover = rotated_bev_grid_sample(ones, boxes.detach(), batch_idx, BEV_RANGE, grid_size=(2, 3))
    assert bool((cover[:2] == 1).all()) and bool((cover[2:] < 1).any(-1).any(-1).all())
    assert bool((cover[2:] > 0).any(-1).any(-1).all())
    assert gradcheck(fn, (boxes, bev), eps=1e-6, atol=1e-5)
    bev_cl = sampling_layout(bev.detach()).requires_grad_(True)  # the 3D head's layout on CPU
    torch.testing.assert_close(fn(boxes, bev_cl), fn(boxes, bev), rtol=1e-12, atol=1e-12)
    assert gradcheck(fn, (boxes, bev_cl), eps=1e-6, atol=1e-5)
    fn(boxes, bev).pow(2).sum().backward()
    # z and h do not move the BEV footprint: exactly zero gradient; x, y, l, w, yaw do
    assert bool((boxes.grad[:, [2, 5]] == 0).all())
    assert bool((boxes.grad[:, [0, 1, 3, 4, 6]].abs() > 0).all())


def _linear_bev(a, b, c, h=16, w=16, device='cpu'):
    """Channel k: a_k * px + b_k * py + c_k at pixel centres (px, py) = (j + 0.5, i + 0.5)."""
    px = (torch.arange(w, dtype=f64) + 0.5)[None, :].expand(h, w)
    py = (torch.arange(h, dtype=f64) + 0.5)[:, None].expand(h, w)
    return torch.stack([ak * px + bk * py + ck for ak, bk, ck in zip(a, b, c)])[None].to(device)


def _world_to_value(x, y, a, b, c, h=16, w=16):
    px = (x - BEV_RANGE[0]) * w / (BEV_RANGE[2] - BEV_RANGE[0])
    py = (y - BEV_RANGE[1]) * h / (BEV_RANGE[3] - BEV_RANGE[1])
    return [ak * px + bk * py + ck for ak, bk, ck in zip(a, b, c)]


@pytest.mark.parametrize('device', devices)
def test_rotated_bev_exact_points(device):
    """Bilinear sampling of a linear map is exact inside the map: the output must equal the map's
    value at hand-placed world points."""
    a, b, c = (1.0, 0.0), (0.0, 1.0), (0.25, -3.0)  # channel 0 reads px, channel 1 reads py
    bev = _linear_bev(a, b, c, device=device)
    cx, cy, length, width = 0.7, -0.4, 6.0, 3.0
    n_w, n_l = 3, 4
    us = [(k + 0.5) / n_l - 0.5 for k in range(n_l)]  # along the length: -3/8, -1/8, 1/8, 3/8
    vs = [(k + 0.5) / n_w - 0.5 for k in range(n_w)]  # across the width: -1/3, 0, 1/3
    # yaw -> world point of grid cell (v, u), written out for the axis-aligned cases
    cases = {
        0.0: lambda v, u: (cx + length * u, cy + width * v),
        math.pi / 2: lambda v, u: (cx - width * v, cy + length * u),
        math.pi: lambda v, u: (cx - length * u, cy - width * v),
        -math.pi / 2: lambda v, u: (cx + width * v, cy - length * u),
    }
    for yaw, point in cases.items():
        box = torch.tensor([[cx, cy, 9.0, length, width, 7.0, yaw]], dtype=f64, device=device)
        out = rotated_bev_grid_sample(bev, box, torch.zeros(1, dtype=torch.long, device=device), BEV_RANGE,
                                      grid_size=(n_w, n_l))
        assert out.shape == (1, 2, n_w, n_l)
        expect = torch.tensor([[_world_to_value(*point(v, u), a, b, c) for u in us] for v in vs], dtype=f64)
        torch.testing.assert_close(out[0].permute(1, 2, 0).cpu(), expect, rtol=0, atol=1e-10)
    # a general yaw: the footprint is the box rotated counter-clockwise by yaw
    yaw = 0.7
    box = torch.tensor([[cx, cy, 0.0, length, width, 1.0, yaw]], dtype=f64, device=device)
    out = rotated_bev_grid_sample(bev, box, torch.zeros(1, dtype=torch.long, device=device), BEV_RANGE,
                                  grid_size=(n_w, n_l))
    cs, sn = math.cos(yaw), math.sin(yaw)
    expect = torch.tensor([[
        _world_to_value(cx + cs * length * u - sn * width * v, cy + sn * length * u + cs * width * v, a, b, c)
        for u in us
    ] for v in vs], dtype=f64)
    torch.testing.assert_close(out[0].permute(1, 2, 0).cpu(), expect, rtol=0, atol=1e-10)


@pytest.mark.parametrize('device', devices)
def test_rotated_bev_quarter_turn_is_transpose(device):
    """yaw = pi/2 samples M at (cx - w v, cy + l u); yaw = 0 on the transposed map M'(x, y) = M(y, x)
    with the centre swapped samples M(cx + w v, cy + l u): the same grid with the width axis reversed."""
    g = torch.Generator().manual_seed(6)
    bev = torch.randn(1, 3, 16, 16, generator=g, dtype=f64).to(device)
    idx = torch.zeros(1, dtype=torch.long, device=device)
    box = torch.tensor([[1.3, -2.1, 0.0, 5.0, 2.4, 1.0, math.pi / 2]], dtype=f64, device=device)
    swapped = torch.tensor([[-2.1, 1.3, 0.0, 5.0, 2.4, 1.0, 0.0]], dtype=f64, device=device)
    rot = rotated_bev_grid_sample(bev, box, idx, BEV_RANGE, grid_size=(4, 7))
    ref = rotated_bev_grid_sample(bev.transpose(-1, -2), swapped, idx, BEV_RANGE, grid_size=(4, 7))
    torch.testing.assert_close(rot, ref.flip(-2), rtol=1e-10, atol=1e-10)
    # and yaw + pi reverses both grid axes
    box_pi = box.clone()
    box_pi[0, 6] = -math.pi / 2
    flipped = rotated_bev_grid_sample(bev, box_pi, idx, BEV_RANGE, grid_size=(4, 7))
    torch.testing.assert_close(flipped, rot.flip(-1, -2), rtol=1e-10, atol=1e-10)


def test_rotated_bev_batch_index_and_extra_columns():
    g = torch.Generator().manual_seed(7)
    bev = torch.randn(2, 2, 16, 16, generator=g, dtype=f64)
    boxes = _boxes7('cpu')
    batch_idx = torch.tensor([0, 1, 1, 0])
    out = rotated_bev_grid_sample(bev, boxes, batch_idx, BEV_RANGE, grid_size=(2, 3))
    for i in range(4):
        one = rotated_bev_grid_sample(bev[int(batch_idx[i])][None], boxes[i:i + 1], torch.zeros(1, dtype=torch.long),
                                      BEV_RANGE, grid_size=(2, 3))
        torch.testing.assert_close(out[i], one[0])
    # extra columns (e.g. velocities) are ignored
    wide = torch.cat([boxes, torch.randn(4, 2, generator=g, dtype=f64)], -1)
    torch.testing.assert_close(rotated_bev_grid_sample(bev, wide, batch_idx, BEV_RANGE, grid_size=(2, 3)), out)
