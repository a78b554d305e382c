"""The core handles a 3-D regression target with no new code: a head-pose-like synthetic task.

x = a fixed random nonlinear map of (yaw, pitch, roll) plus noise; y = the three angles. A small
f(x, y) is trained by ``NCEPlusLoss`` with a ``GMMNoise`` of (K, 3) sigmas, and
``refine_by_gradient_ascent`` takes predictions from a rough guess (the training mean) to the
learned mode.
"""
import pytest
import torch
from torch import nn

from ebm_det.core import GMMNoise, NCEPlusLoss, RefineConfig, refine_by_gradient_ascent

RANGES = torch.tensor([1.2, 0.8, 0.6])  # yaw, pitch, roll ~ U(-r, r), radians


def _make_pose_data(n, gen, proj):
    w1, b1, w2 = proj
    y = (torch.rand(n, 3, generator=gen) * 2 - 1) * RANGES
    trig = torch.cat([y.sin(), y.cos(), y], -1)  # (n, 9)
    x = torch.tanh(trig @ w1 + b1) @ w2  # (n, 16)
    return x + 0.05 * torch.randn(x.shape, generator=gen), y


class PoseEnergy(nn.Module):
    """f(x, y) = MLP(feature(x) + embed(y)), scores (N, M) for y (N, M, 3)."""

    def __init__(self, x_dim=16, hidden=64):
        super().__init__()
        self.feat = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.emb = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, hidden, bias=False))
        self.head = nn.Sequential(nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def score(self, feat, y):
        return self.head(feat[:, None, :] + self.emb(y)).squeeze(-1)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_pose_3d_nce_plus_and_refinement():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    proj = (torch.randn(9, 32, generator=gen), 0.3 * torch.randn(32, generator=gen),
            torch.randn(32, 16, generator=gen) / 32**0.5)
    x_tr, y_tr = _make_pose_data(3000, gen, proj)
    x_te, y_te = _make_pose_data(300, gen, proj)

    model = PoseEnergy()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    # (K, 3) sigmas: per-angle scales, wider for the wider-ranging yaw
    noise = GMMNoise([[0.03, 0.03, 0.02], [0.15, 0.1, 0.08], [0.8, 0.5, 0.4]])
    for _ in range(500):
        idx = torch.randint(len(x_tr), (64, ), generator=gen)
        feat = model.feat(x_tr[idx])
        loss = NCEPlusLoss(num_samples=64, beta=0.1)(lambda ys: model.score(feat, ys), y_tr[idx], noise,
                                                     generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)

    model.eval()
    with torch.no_grad():
        feat_te = model.feat(x_te)
    init = y_tr.mean(0, keepdim=True).expand(len(x_te), 3).clone()

    def score_fn(b, index):
        return model.score(feat_te[index], b[:, None, :])[:, 0]

    res = refine_by_gradient_ascent(score_fn, init, 0.01, RefineConfig(num_steps=100, decay=0.5))
    init_err = (init - y_te).abs().mean().item()
    ref_err = (res.boxes - y_te).abs().mean().item()
    assert res.boxes.shape == (300, 3)
    assert bool((res.scores >= res.init_scores).all())  # the refiner never lowers a score
    # a rough guess (~0.4 rad mean abs error) is pulled to the learned mode
    assert ref_err < 0.35 * init_err, (init_err, ref_err)
    per_angle = (res.boxes - y_te).abs().mean(0)
    assert bool((per_angle < 0.5 * (init - y_te).abs().mean(0)).all()), per_angle
