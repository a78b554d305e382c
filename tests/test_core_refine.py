"""refine_by_gradient_ascent: convergence, monotonicity, batching, dtypes, spaces and edge cases."""
import math

import pytest
import torch
from torch import nn

from ebm_det.core.box_spaces import Box3DSpace, RelativeBox2DSpace, wrap_angle
from ebm_det.core.refine import RefineResult, refine_by_gradient_ascent
from ebm_det.core.settings import RefineConfig

devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
f64 = torch.float64


def _quadratic(targets, scales):
    """Concave f(b, i) = -sum_d ((b_d - t_id) / s_d)^2 / 2, argmax t_i, looked up through index."""

    def f(b, index):
        return -(((b - targets[index].to(b.dtype)) / scales.to(b.dtype))**2).sum(-1) / 2

    return f


def _nasty(b, index):
    """Non-concave, many local maxima, per-box offsets through the index."""
    off = index.to(b.dtype)[:, None] * 0.37
    return (torch.sin(5 * b + off) + 0.3 * torch.cos(13 * b * b.roll(1, -1)) - 0.05 * b**2).sum(-1)


def _problem(n=6, d=4, device='cpu', dtype=f64, seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = (torch.randn(n, d, generator=g, dtype=f64) * 3).to(device)
    boxes = (targets.cpu() + torch.randn(n, d, generator=g, dtype=f64)).to(device, dtype)
    scales = torch.tensor([1.0, 2.0, 0.5, 1.5][:d], dtype=f64, device=device)
    return targets, boxes, scales


@pytest.mark.parametrize('device', devices)
@pytest.mark.parametrize('dtype', [torch.float32, f64])
def test_quadratic_reaches_argmax(dtype, device):
    targets, boxes, scales = _problem(device=device, dtype=dtype)
    f = _quadratic(targets, scales)
    res = refine_by_gradient_ascent(f, boxes, (0.5 * scales**2).tolist(), RefineConfig(num_steps=100))
    assert isinstance(res, RefineResult)
    assert res.boxes.dtype == dtype and res.boxes.device.type == device and res.boxes.shape == boxes.shape
    assert res.steps == 100
    tol = 1e-9 if dtype == f64 else 1e-4
    torch.testing.assert_close(res.boxes, targets.to(dtype), rtol=0, atol=tol)
    assert bool((res.scores >= res.init_scores).all())
    torch.testing.assert_close(res.init_scores.double(), f(boxes, torch.arange(6, device=device)).double())
    torch.testing.assert_close(res.scores.double(), torch.zeros(6, dtype=f64, device=device), rtol=0, atol=1e-6)


def test_too_large_step_is_decayed():
    """lambda = 3 s^2 makes plain gradient ascent diverge on a quadratic; the decay rescues it."""
    targets, boxes, scales = _problem()
    f = _quadratic(targets, scales)
    res = refine_by_gradient_ascent(f, boxes, (3 * scales**2).tolist(), RefineConfig(num_steps=100, decay=0.5))
    torch.testing.assert_close(res.boxes, targets, rtol=0, atol=1e-6)
    # without decay (eta = 1) every step is rejected and the boxes stay put
    res1 = refine_by_gradient_ascent(f, boxes, (3 * scales**2).tolist(), RefineConfig(num_steps=20, decay=1.0))
    torch.testing.assert_close(res1.boxes, boxes)


def test_step_size_shapes():
    targets, boxes, scales = _problem()
    f = _quadratic(targets, scales)
    lam = (0.5 * scales**2)
    a = refine_by_gradient_ascent(f, boxes, lam.tolist(), RefineConfig(num_steps=5))
    b = refine_by_gradient_ascent(f, boxes, lam, RefineConfig(num_steps=5))
    c = refine_by_gradient_ascent(f, boxes, lam.expand(6, 4).clone(), RefineConfig(num_steps=5))
    torch.testing.assert_close(a.boxes, b.boxes)
    torch.testing.assert_close(a.boxes, c.boxes)
    # a scalar step and a (N, D) step with a zero row: that box never moves
    lam_nd = torch.full((6, 4), 0.1, dtype=f64)
    lam_nd[2] = 0
    d = refine_by_gradient_ascent(f, boxes, lam_nd, RefineConfig(num_steps=5))
    e = refine_by_gradient_ascent(f, boxes, 0.1, RefineConfig(num_steps=5))
    torch.testing.assert_close(d.boxes[2], boxes[2])
    keep = [0, 1, 3, 4, 5]
    torch.testing.assert_close(d.boxes[keep], e.boxes[keep])
    assert not torch.allclose(e.boxes[2], boxes[2])


@pytest.mark.parametrize('device', devices)
def test_never_lowers_a_score(device):
    g = torch.Generator().manual_seed(1)
    boxes = (torch.randn(16, 3, generator=g, dtype=f64) * 2).to(device)
    res = refine_by_gradient_ascent(_nasty, boxes, 0.7, RefineConfig(num_steps=30, decay=0.5))
    idx = torch.arange(16, device=device)
    f0, f1 = _nasty(boxes, idx), _nasty(res.boxes, idx)
    assert bool((res.scores >= res.init_scores).all())
    assert bool((f1 >= f0).all()), (f1 - f0).min()  # recomputed, in float64
    torch.testing.assert_close(res.scores.double(), f1)
    assert float((f1 - f0).max()) > 0.1  # it did move
    # float32 boxes as well
    res32 = refine_by_gradient_ascent(_nasty, boxes.float(), 0.7, RefineConfig(num_steps=30))
    assert bool((_nasty(res32.boxes, idx) >= _nasty(boxes.float(), idx)).all())


@pytest.mark.parametrize('device', devices)
def test_batch_equals_box_by_box(device):
    g = torch.Generator().manual_seed(2)
    boxes = (torch.randn(5, 3, generator=g, dtype=f64) * 2).to(device)
    res = refine_by_gradient_ascent(_nasty, boxes, [0.3, 0.1, 0.2], RefineConfig(num_steps=15))
    for i in range(5):
        one = refine_by_gradient_ascent(lambda b, idx, i=i: _nasty(b, idx + i), boxes[i:i + 1], [0.3, 0.1, 0.2],
                                        RefineConfig(num_steps=15))
        torch.testing.assert_close(one.boxes[0], res.boxes[i], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(one.scores[0], res.scores[i])
        torch.testing.assert_close(one.init_scores[0], res.init_scores[i])


def test_input_not_modified():
    targets, boxes, scales = _problem()
    before = boxes.clone()
    res = refine_by_gradient_ascent(_quadratic(targets, scales), boxes, 0.2, RefineConfig(num_steps=5))
    assert torch.equal(boxes, before)
    assert not torch.equal(res.boxes, before)
    ref = boxes.clone()
    refine_by_gradient_ascent(_quadratic(targets, scales), boxes, 0.2, RefineConfig(num_steps=5), ref=ref)
    assert torch.equal(ref, before) and torch.equal(boxes, before)


class _MLPScore(nn.Module):

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.emb = nn.Embedding(8, 4)  # per-box context, looked up with the index

    def forward(self, boxes, index):
        return self.net(boxes + self.emb(index)).squeeze(-1) - 0.1 * (boxes**2).sum(-1)


@pytest.mark.parametrize('device', devices)
def test_no_grad_and_module_params(device):
    torch.manual_seed(0)
    model = _MLPScore().to(device)
    boxes = torch.randn(8, 4, device=device)
    with torch.no_grad():
        res = refine_by_gradient_ascent(model, boxes, 0.1, RefineConfig(num_steps=10))
    assert all(p.grad is None for p in model.parameters())
    assert not res.boxes.requires_grad and not res.scores.requires_grad
    assert bool((res.scores >= res.init_scores).all()) and float((res.scores - res.init_scores).max()) > 0
    res2 = refine_by_gradient_ascent(model, boxes, 0.1, RefineConfig(num_steps=10))
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(res.boxes, res2.boxes)
    torch.testing.assert_close(res.scores, model(res.boxes, torch.arange(8, device=device)).detach())


@pytest.mark.parametrize('device', devices)
def test_empty(device):
    calls = []

    def f(b, i):
        calls.append(1)
        return b.sum(-1)

    for space, d in ((None, 4), (RelativeBox2DSpace(), 4), (Box3DSpace(), 7)):
        boxes = torch.zeros(0, d, device=device)
        res = refine_by_gradient_ascent(f, boxes, 0.1, RefineConfig(num_steps=5), space=space)
        assert res.boxes.shape == (0, d) and res.boxes.dtype == boxes.dtype
        assert res.scores.shape == (0, ) and res.init_scores.shape == (0, )
        assert res.steps == 0
        res = refine_by_gradient_ascent(f, boxes, 0.1, RefineConfig(num_steps=5, tol=1e-3, chunk_size=2), space=space)
        assert res.boxes.shape == (0, d)


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_nonfinite_boxes_raise(bad):
    boxes = torch.ones(4, 4)
    boxes[2, 1] = bad
    with pytest.raises(ValueError):
        refine_by_gradient_ascent(lambda b, i: b.sum(-1), boxes, 0.1, RefineConfig())
    with pytest.raises(ValueError):
        refine_by_gradient_ascent(lambda b, i: b.sum(-1), boxes, 0.1, RefineConfig(chunk_size=2))


def test_nonfinite_score_counts_as_drop():
    # f is -inf beyond b = 1: a step there is refused, the box stays finite
    def f(b, i):
        return torch.where(b[:, 0] < 1.0, b[:, 0], torch.full_like(b[:, 0], float('nan')))

    res = refine_by_gradient_ascent(f, torch.zeros(3, 1, dtype=f64), 0.6, RefineConfig(num_steps=20))
    assert bool(torch.isfinite(res.boxes).all()) and bool(torch.isfinite(res.scores).all())
    assert bool((res.boxes < 1).all()) and bool((res.boxes > 0.9).all())


@pytest.mark.parametrize('device', devices)
def test_tol_stops_early(device):
    targets, boxes, scales = _problem(device=device)
    f = _quadratic(targets, scales)
    lam = (0.5 * scales**2).tolist()
    full = refine_by_gradient_ascent(f, boxes, lam, RefineConfig(num_steps=200))
    early = refine_by_gradient_ascent(f, boxes, lam, RefineConfig(num_steps=200, tol=1e-6))
    assert early.steps < 200 and full.steps == 200
    # converged: the last proposed step is < tol, so the answer is within a few tol of the argmax
    torch.testing.assert_close(early.boxes, full.boxes, rtol=0, atol=1e-5)
    torch.testing.assert_close(early.boxes, targets, rtol=0, atol=1e-5)
    assert bool((early.scores >= early.init_scores).all())


def test_tol_keeps_unconverged_boxes_active():
    """Boxes converge at different speeds; the slow ones keep going after the fast ones stop."""
    targets = torch.tensor([[0.0], [0.0]], dtype=f64)
    boxes = torch.tensor([[1e-3], [50.0]], dtype=f64)
    f = _quadratic(targets, torch.ones(1, dtype=f64))
    res = refine_by_gradient_ascent(f, boxes, 0.3, RefineConfig(num_steps=500, tol=1e-8))
    assert res.steps < 500
    torch.testing.assert_close(res.boxes, targets, rtol=0, atol=1e-7)


@pytest.mark.parametrize('device', devices)
@pytest.mark.parametrize('tol', [0.0, 1e-6])
def test_chunk_size_matches_unchunked(tol, device):
    g = torch.Generator().manual_seed(4)
    boxes = (torch.randn(7, 3, generator=g, dtype=f64) * 2).to(device)
    ref = refine_by_gradient_ascent(_nasty, boxes, [0.3, 0.1, 0.2], RefineConfig(num_steps=12, tol=tol))
    for chunk in (1, 3, 7, 100):
        res = refine_by_gradient_ascent(_nasty, boxes, [0.3, 0.1, 0.2],
                                        RefineConfig(num_steps=12, tol=tol, chunk_size=chunk))
        torch.testing.assert_close(res.boxes, ref.boxes, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(res.scores, ref.scores)
        torch.testing.assert_close(res.init_scores, ref.init_scores)
        assert res.steps == ref.steps


def test_chunk_size_with_per_box_step_sizes():
    g = torch.Generator().manual_seed(8)
    boxes = (torch.randn(5, 3, generator=g, dtype=f64) * 2)
    lam = torch.rand(5, 3, generator=g, dtype=f64) * 0.3
    lam[3] = 0  # box 3 must not move, whichever chunk it lands in
    ref = refine_by_gradient_ascent(_nasty, boxes, lam, RefineConfig(num_steps=10))
    torch.testing.assert_close(ref.boxes[3], boxes[3])
    for chunk in (1, 2, 4):
        res = refine_by_gradient_ascent(_nasty, boxes, lam, RefineConfig(num_steps=10, chunk_size=chunk))
        torch.testing.assert_close(res.boxes, ref.boxes, rtol=1e-12, atol=1e-12)
        # a (1, D) step size broadcasts over every chunk
        one = refine_by_gradient_ascent(_nasty, boxes, lam[:1], RefineConfig(num_steps=10, chunk_size=chunk))
        whole = refine_by_gradient_ascent(_nasty, boxes, lam[0], RefineConfig(num_steps=10))
        torch.testing.assert_close(one.boxes, whole.boxes)


def test_chunk_size_with_space_and_ref():
    sp = Box3DSpace(normalized=True)
    boxes = _boxes3d(5)
    target = boxes.clone()
    target[:, :3] += 0.2
    f = _box3d_score(target)
    a = refine_by_gradient_ascent(f, boxes, 0.05, RefineConfig(num_steps=10), space=sp, ref=target)
    b = refine_by_gradient_ascent(f, boxes, 0.05, RefineConfig(num_steps=10, chunk_size=2), space=sp, ref=target)
    torch.testing.assert_close(a.boxes, b.boxes)


@pytest.mark.parametrize('device', devices)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_boxes(dtype, device):
    targets, boxes, scales = _problem(device=device)
    seen = []

    def f(b, i):
        seen.append(b.dtype)
        return _quadratic(targets, scales)(b, i)

    res = refine_by_gradient_ascent(f, boxes.to(dtype), (0.5 * scales**2).tolist(), RefineConfig(num_steps=60))
    assert res.boxes.dtype == dtype
    assert set(seen) == {torch.float32}  # refined in float32
    assert res.scores.dtype == torch.float32
    atol = 0.02 if dtype == torch.float16 else 0.1  # the dtype's resolution at |t| ~ 10
    torch.testing.assert_close(res.boxes.double(), targets, rtol=0, atol=atol)


def _iou(a, b):
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(-1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.mark.parametrize('device', devices)
def test_relative_box2d_space_improves_iou(device):
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(10, 2, generator=g, dtype=f64) * 200
    wh = torch.rand(10, 2, generator=g, dtype=f64) * 80 + 20
    gt = torch.cat([xy, xy + wh], -1).to(device)
    noise = torch.randn(10, 4, generator=g, dtype=f64).to(device) * torch.cat([wh, wh], -1).to(device) * 0.1
    boxes = gt + noise
    boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)], -1)
    f = lambda b, i: _iou(b, gt[i])  # noqa: E731
    res = refine_by_gradient_ascent(f, boxes, [0.05, 0.05, 0.1, 0.1], RefineConfig(num_steps=50),
                                    space=RelativeBox2DSpace())
    iou0, iou1 = _iou(boxes, gt), _iou(res.boxes, gt)
    assert bool((iou1 >= iou0).all()) and float(iou1.mean()) > float(iou0.mean()) + 0.05
    assert float(iou1.min()) > 0.95
    assert bool((res.boxes[:, 2:] > res.boxes[:, :2]).all())
    torch.testing.assert_close(res.scores.double(), iou1)


def _boxes3d(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([
        torch.randn(n, 3, generator=g, dtype=f64) * 10,
        torch.rand(n, 3, generator=g, dtype=f64) * 3 + 1,
        (torch.rand(n, 1, generator=g, dtype=f64) * 2 - 1) * math.pi
    ], -1)


def _box3d_score(target):
    """Concave near the target, periodic in yaw: -|centre - t|^2 - |size - t|^2 + 2 cos(yaw - t)."""

    def f(b, i):
        t = target[i].to(b.dtype)
        return -((b[:, :6] - t[:, :6])**2).sum(-1) + 2 * torch.cos(b[:, 6] - t[:, 6])

    return f


@pytest.mark.parametrize('device', devices)
@pytest.mark.parametrize('normalized', [False, True])
def test_box3d_yaw_across_the_wrap(normalized, device):
    boxes = _boxes3d(3).to(device)
    boxes[:, 6] = torch.tensor([math.pi - 0.05, math.pi - 1e-3, -math.pi + 0.02], dtype=f64, device=device)
    target = boxes.clone()
    target[:, :3] += 0.3
    target[:, 3:6] *= 1.1
    target[:, 6] = torch.tensor([-math.pi + 0.05, -math.pi + 0.1, math.pi - 0.1], dtype=f64, device=device)
    seen = []
    f0 = _box3d_score(target)

    def f(b, i):
        seen.append(b[:, 6].detach().clone())
        return f0(b, i)

    lam = [0.2] * 6 + [0.2]
    if normalized:  # y is (offset / diagonal, log size): scale the step sizes accordingly
        lam = [0.02, 0.02, 0.05, 0.05, 0.05, 0.05, 0.2]
    res = refine_by_gradient_ascent(f, boxes, lam, RefineConfig(num_steps=100), space=Box3DSpace(normalized=normalized))
    yaw = res.boxes[:, 6]
    assert bool(((yaw >= -math.pi) & (yaw < math.pi)).all())
    assert float(wrap_angle(yaw - target[:, 6]).abs().max()) < 1e-4
    torch.testing.assert_close(res.boxes[:, :6], target[:, :6], rtol=0, atol=1e-3)
    # it went the short way: every yaw ever scored is within 0.25 rad of the wrap at +-pi
    seen = torch.cat(seen)
    assert float(wrap_angle(seen - math.pi).abs().max()) < 0.25
    assert bool((res.scores >= res.init_scores).all())


def test_float64_scores_are_compared_in_float64():
    """Score differences below float32 resolution must still never lower a float64 score."""
    boxes = torch.linspace(0, 1, 50, dtype=f64)[:, None]
    amp = 1e-6
    f = lambda b, i: 100 + amp * torch.sin(50 * b[:, 0])  # noqa: E731
    res = refine_by_gradient_ascent(f, boxes, 0.5 / amp / 50, RefineConfig(num_steps=20))
    assert res.scores.dtype == f64
    assert bool((f(res.boxes, None) >= f(boxes, None)).all())
    torch.testing.assert_close(res.scores, f(res.boxes, None), rtol=0, atol=0)


def test_half_precision_scores_are_promoted():
    targets, boxes, scales = _problem(dtype=torch.float32)
    f = _quadratic(targets, scales)
    res = refine_by_gradient_ascent(lambda b, i: f(b, i).half(), boxes, (0.5 * scales**2).tolist(),
                                    RefineConfig(num_steps=30))
    assert res.scores.dtype == torch.float32 and res.boxes.dtype == torch.float32
    assert bool((res.scores >= res.init_scores).all())
    torch.testing.assert_close(res.boxes.double(), targets, rtol=0, atol=0.05)
