"""Box spaces: exact round trips, wrapping and input validation."""
import math

import pytest
import torch

from ebm_det.core.box_spaces import (Box3DSpace, IdentitySpace, RelativeBox2DSpace, check_finite,
                                     wrap_angle)

devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def _boxes2d(n, dtype=torch.float64, device='cpu', seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * 100
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 50 + 0.5
    return torch.cat([xy, xy + wh], -1).to(device)


def _boxes3d(n, dtype=torch.float64, device='cpu', seed=0):
    g = torch.Generator().manual_seed(seed)
    xyz = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * 80
    lwh = torch.rand(n, 3, generator=g, dtype=dtype) * 4 + 0.3
    yaw = (torch.rand(n, 1, generator=g, dtype=dtype) * 2 - 1) * math.pi
    # yaws right at the wrap on both sides, and exactly -pi (inside [-pi, pi))
    yaw[:4, 0] = torch.tensor([math.pi - 1e-7, -math.pi + 1e-7, -math.pi, 0.0], dtype=dtype)
    return torch.cat([xyz, lwh, yaw], -1).to(device)


def _angle_err(a, b):
    return wrap_angle(a - b).abs()


@pytest.mark.parametrize('device', devices)
def test_identity_space(device):
    y = torch.randn(5, 3, device=device)
    sp = IdentitySpace()
    assert torch.equal(sp.encode(y), y)
    assert torch.equal(sp.decode(y), y)
    assert torch.equal(sp.project(y), y)


@pytest.mark.parametrize('device', devices)
def test_relative_box2d_round_trip(device):
    sp = RelativeBox2DSpace()
    boxes = _boxes2d(20, device=device)
    ref = _boxes2d(20, device=device, seed=1)
    y = sp.encode(boxes, ref)
    assert y.shape == (20, 4)
    torch.testing.assert_close(sp.decode(y, ref), boxes, rtol=0, atol=1e-6)
    # the encoding itself, written out
    ref_wh = ref[:, 2:] - ref[:, :2]
    torch.testing.assert_close(y[:, :2], (boxes[:, :2] + boxes[:, 2:]) / 2 / ref_wh)
    torch.testing.assert_close(y[:, 2:], (boxes[:, 2:] - boxes[:, :2]).log())
    # ref = the boxes themselves: centres / own size
    torch.testing.assert_close(sp.decode(sp.encode(boxes, boxes), boxes), boxes, rtol=0, atol=1e-6)


def test_relative_box2d_broadcast():
    sp = RelativeBox2DSpace()
    ref = _boxes2d(3)
    samples = _boxes2d(3 * 5, seed=2).reshape(3, 5, 4)
    y = sp.encode(samples, ref[:, None])
    assert y.shape == (3, 5, 4)
    torch.testing.assert_close(sp.decode(y, ref[:, None]), samples, rtol=0, atol=1e-6)
    for i in range(3):
        torch.testing.assert_close(y[i], sp.encode(samples[i], ref[i].expand(5, 4)))


@pytest.mark.parametrize('bad', [
    [10., 10., 10., 20.],  # zero width
    [10., 10., 20., 10.],  # zero height
    [10., 10., 5., 20.],  # negative width
    [10., 10., 20., 0.],  # negative height
])
def test_relative_box2d_rejects_degenerate(bad):
    sp = RelativeBox2DSpace()
    good = torch.tensor([[0., 0., 4., 4.]])
    bad = torch.tensor([bad])
    with pytest.raises(ValueError):
        sp.encode(bad, good)
    with pytest.raises(ValueError):  # a degenerate reference is just as bad
        sp.encode(good, bad)
    # an empty batch is fine
    assert sp.encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)


@pytest.mark.parametrize('device', devices)
@pytest.mark.parametrize('normalized', [False, True])
def test_box3d_round_trip(normalized, device):
    sp = Box3DSpace(normalized=normalized)
    boxes = _boxes3d(30, device=device)
    ref = _boxes3d(30, device=device, seed=3)
    y = sp.encode(boxes, ref)
    assert y.shape == (30, 7)
    assert bool(((y[:, 6] >= -math.pi) & (y[:, 6] < math.pi)).all())
    out = sp.decode(y, ref)
    torch.testing.assert_close(out[:, :6], boxes[:, :6], rtol=0, atol=1e-6)
    assert float(_angle_err(out[:, 6], boxes[:, 6]).max()) < 1e-6
    # a yaw in [-pi, pi) comes back (numerically) unchanged, also right at the wrap
    inside = (boxes[:, 6] >= -math.pi) & (boxes[:, 6] < math.pi)
    torch.testing.assert_close(out[inside, 6], boxes[inside, 6], rtol=0, atol=1e-6)
    # project is idempotent and keeps a valid y unchanged (up to yaw wrapping)
    p = sp.project(y)
    torch.testing.assert_close(sp.project(p), p)
    torch.testing.assert_close(p[:, :6], y[:, :6])


def test_box3d_yaw_outside_range_wraps():
    boxes = _boxes3d(4)
    boxes[:, 6] = torch.tensor([math.pi + 0.1, -math.pi - 0.1, 3 * math.pi - 0.2, 7.0], dtype=boxes.dtype)
    expect = torch.tensor([-math.pi + 0.1, math.pi - 0.1, math.pi - 0.2, 7.0 - 2 * math.pi], dtype=boxes.dtype)
    for normalized in (False, True):
        sp = Box3DSpace(normalized=normalized)
        y = sp.encode(boxes, boxes)
        torch.testing.assert_close(y[:, 6], expect, rtol=0, atol=1e-9)
        torch.testing.assert_close(sp.decode(y, boxes)[:, 6], expect, rtol=0, atol=1e-9)


def test_box3d_normalized_encoding_formula():
    sp = Box3DSpace(normalized=True)
    box = torch.tensor([[3., 4., 1., 2., 1., 1.5, 0.3]], dtype=torch.float64)
    ref = torch.tensor([[1., 2., 0.5, 3., 4., 2., 0.]], dtype=torch.float64)  # diag 5
    y = sp.encode(box, ref)
    expect = torch.tensor([[2 / 5, 2 / 5, 0.5 / 2, math.log(2), 0., math.log(1.5), 0.3]], dtype=torch.float64)
    torch.testing.assert_close(y, expect)
    # y = 0 (up to the sizes) is the reference box itself
    torch.testing.assert_close(sp.encode(ref, ref)[:, :3], torch.zeros(1, 3, dtype=torch.float64))


def test_box3d_normalized_rejects_nonpositive_sizes():
    sp = Box3DSpace(normalized=True)
    ref = _boxes3d(4)
    bad = ref.clone()
    bad[1, 4] = 0.0
    with pytest.raises(ValueError):
        sp.encode(bad, ref)


def test_box3d_project_clamps_sizes():
    sp = Box3DSpace(normalized=False, min_size=0.05)
    y = torch.tensor([[0., 0., 0., -1., 0.01, 2., 4.]])
    p = sp.project(y)
    torch.testing.assert_close(p[0, 3:6], torch.tensor([0.05, 0.05, 2.]))
    torch.testing.assert_close(p[0, 6], torch.tensor(4. - 2 * math.pi))
    # normalized: log sizes may be negative, only the yaw is wrapped
    y2 = torch.tensor([[0., 0., 0., -1., -3., 2., 4.]])
    p2 = Box3DSpace(normalized=True).project(y2)
    torch.testing.assert_close(p2[0, :6], y2[0, :6])


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_wrap_angle_range(dtype):
    a = torch.linspace(-20, 20, 4001, dtype=dtype)
    a = torch.cat([a, torch.tensor([math.pi, -math.pi, 3 * math.pi, -3 * math.pi, 0.], dtype=dtype)])
    w = wrap_angle(a)
    assert bool((w >= -math.pi).all()) and bool((w < math.pi).all())
    # differs from the input by a whole number of turns
    turns = (a - w) / (2 * math.pi)
    torch.testing.assert_close(turns, turns.round(), rtol=0, atol=1e-4 if dtype == torch.float32 else 1e-9)
    # identity inside the range
    inside = torch.tensor([-math.pi, -1., 0., 1., math.pi - 1e-3], dtype=dtype)
    torch.testing.assert_close(wrap_angle(inside), inside)
    # pi itself maps to -pi (half-open interval)
    assert float(wrap_angle(torch.tensor(math.pi, dtype=torch.float64))) == pytest.approx(-math.pi)


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_check_finite(bad):
    boxes = torch.ones(6, 4)
    check_finite(boxes)  # no error
    check_finite(torch.zeros(0, 4))
    boxes[3, 2] = bad
    with pytest.raises(ValueError, match='3'):
        check_finite(boxes)
    with pytest.raises(ValueError, match='rois'):
        check_finite(boxes, name='rois')
