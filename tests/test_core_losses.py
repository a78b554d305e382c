"""The six EBM objectives against slow loop implementations, stability, and a few properties."""
import math

import pytest
import torch
from torch import nn

from ebm_det.core import losses as L
from ebm_det.core.noise import GMMNoise

devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
f64 = torch.float64


def _rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=f64) * scale


# ---------------------------------------------------------------- slow references
def _slow_log_mean_exp(values):
    return math.log(sum(math.exp(v) for v in values) / len(values))


def _slow_nce(scores, log_q):
    n, m = scores.shape
    total = 0.0
    for i in range(n):
        a = [float(scores[i, j] - log_q[i, j]) for j in range(m)]
        total += -(a[0] - math.log(sum(math.exp(v) for v in a)))
    return total / n


def _slow_ml_is(gt, scores, log_q):
    n, m = scores.shape
    total = 0.0
    for i in range(n):
        total += _slow_log_mean_exp([float(scores[i, j] - log_q[i, j]) for j in range(m)]) - float(gt[i])
    return total / n


def _slow_kld_is(scores, log_q, log_p):
    n, m = scores.shape
    total = 0.0
    for i in range(n):
        lz = _slow_log_mean_exp([float(scores[i, j] - log_q[i, j]) for j in range(m)])
        cross = sum(float(scores[i, j]) * math.exp(float(log_p[i, j] - log_q[i, j])) for j in range(m)) / m
        total += lz - cross
    return total / n


def _slow_ml_mcmc(gt, sample_scores):
    n, m = sample_scores.shape
    return sum(sum(float(sample_scores[i, j]) for j in range(m)) / m - float(gt[i]) for i in range(n)) / n


# a smooth score with a hand-written gradient: f(y) = sum_d a_d sin(y_d) - b y_d^2
A = [0.7, -1.3, 0.4]
B = 0.25


def _f(y):
    a = y.new_tensor(A)
    return (a * y.sin()).sum(-1) - B * (y**2).sum(-1)


def _slow_grad_f(y_vec):
    return [A[d] * math.cos(y_vec[d]) - 2 * B * y_vec[d] for d in range(len(y_vec))]


def _slow_dsm(centers, samples, sigma):
    n, m, d = samples.shape
    total = 0.0
    for i in range(n):
        for j in range(m):
            yv = [float(samples[i, j, e]) for e in range(d)]
            g = _slow_grad_f(yv)
            sq = sum((g[e] + (yv[e] - float(centers[i, e])) / sigma**2)**2 for e in range(d))
            total += 0.5 * sigma**2 * sq
    return total / (n * m)


# ---------------------------------------------------------------- equality with the slow versions
@pytest.mark.parametrize('device', devices)
def test_nce_plus_and_nce(device):
    scores, log_q = _rand(3, 5, seed=1, scale=2).to(device), _rand(3, 5, seed=2).to(device)
    expect = _slow_nce(scores.cpu(), log_q.cpu())
    assert float(L.nce_plus_loss(scores, log_q)) == pytest.approx(expect, rel=1e-12)
    assert float(L.nce_loss(scores, log_q)) == pytest.approx(expect, rel=1e-12)
    out = L.nce_plus_loss(scores, log_q)
    assert out.dim() == 0 and out.dtype == f64 and out.device.type == device
    # the positive is column 0: swapping it with another column changes the loss
    perm = [1, 0, 2, 3, 4]
    assert float(L.nce_plus_loss(scores[:, perm], log_q[:, perm])) != pytest.approx(expect)
    # the loss is the cross entropy of a softmax, so it is >= 0 and 0 only for a dominant positive
    assert expect > 0
    dominant = scores.clone()
    dominant[:, 0] = 1e3
    assert float(L.nce_plus_loss(dominant, log_q)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize('device', devices)
def test_ml_is(device):
    gt, scores, log_q = _rand(3, seed=3), _rand(3, 6, seed=4), _rand(3, 6, seed=5)
    got = L.ml_is_loss(gt.to(device), scores.to(device), log_q.to(device))
    assert float(got) == pytest.approx(_slow_ml_is(gt, scores, log_q), rel=1e-12)
    lz = L._log_mean_exp_ratio(scores.to(device), log_q.to(device)).cpu()
    for i in range(3):
        assert float(lz[i]) == pytest.approx(_slow_log_mean_exp((scores[i] - log_q[i]).tolist()), rel=1e-12)


@pytest.mark.parametrize('device', devices)
def test_kld_is(device):
    scores, log_q, log_p = _rand(3, 6, seed=6), _rand(3, 6, seed=7), _rand(3, 6, seed=8)
    got = L.kld_is_loss(scores.to(device), log_q.to(device), log_p.to(device))
    assert float(got) == pytest.approx(_slow_kld_is(scores, log_q, log_p), rel=1e-12)


@pytest.mark.parametrize('device', devices)
def test_ml_mcmc(device):
    gt, ss = _rand(4, seed=9), _rand(4, 5, seed=10)
    assert float(L.ml_mcmc_loss(gt.to(device), ss.to(device))) == pytest.approx(_slow_ml_mcmc(gt, ss), rel=1e-12)


@pytest.mark.parametrize('device', devices)
def test_dsm(device):
    sigma = 0.3
    centers = _rand(2, 3, seed=11)
    samples = centers[:, None] + sigma * _rand(2, 4, 3, seed=12)
    got = L.dsm_loss(_f, centers.to(device), samples.to(device), sigma)
    assert float(got.detach()) == pytest.approx(_slow_dsm(centers, samples, sigma), rel=1e-10)
    # works when the caller is under no_grad (the y-gradient is taken inside enable_grad)
    with torch.no_grad():
        assert float(L.dsm_loss(_f, centers.to(device), samples.to(device), sigma)) == pytest.approx(float(got))


@pytest.mark.parametrize('device', devices)
def test_langevin_samples(device):
    step, steps = 1e-2, 3
    init = _rand(2, 3, 3, seed=13).to(device)
    g = torch.Generator(device=device).manual_seed(5)
    out = L.langevin_samples(_f, init, num_steps=steps, step_size=step, generator=g)
    assert out.shape == init.shape and not out.requires_grad
    # the same noise, drawn in the same order, then a loop with the hand-written gradient
    g = torch.Generator(device=device).manual_seed(5)
    eps = [torch.randn(init.shape, dtype=f64, device=device, generator=g).cpu() for _ in range(steps)]
    y = init.cpu().clone()
    for t in range(steps):
        for i in range(y.shape[0]):
            for j in range(y.shape[1]):
                gr = _slow_grad_f(y[i, j].tolist())
                for e in range(y.shape[2]):
                    y[i, j, e] = float(y[i, j, e]) + 0.5 * step * gr[e] + math.sqrt(step) * float(eps[t][i, j, e])
    torch.testing.assert_close(out.cpu(), y, rtol=1e-10, atol=1e-10)
    assert not torch.equal(out, init)
    # zero steps: the input, detached
    torch.testing.assert_close(L.langevin_samples(_f, init, num_steps=0), init)


def test_gaussian_label_log_prob():
    if not hasattr(L, 'GaussianLogProb'):
        pytest.skip('losses.GaussianLogProb not present')
    centers, samples = _rand(3, 2, seed=14), _rand(3, 4, 2, seed=15)
    expect = torch.distributions.Normal(centers[:, None], 0.0225).log_prob(samples).sum(-1)
    torch.testing.assert_close(L.GaussianLogProb(0.0225)(samples, centers), expect)


# ---------------------------------------------------------------- numerical stability
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_huge_scores_are_stable(dtype):
    scores = (1e4 + _rand(2, 5, seed=16)).to(dtype)
    log_q = _rand(2, 5, seed=17).to(dtype)
    gt = scores[:, 0] + 1.0
    log_p = _rand(2, 5, seed=18).to(dtype) - 3
    small = (scores - 1e4).double()
    # shift invariance, computed on the shifted (small) scores by the slow versions
    nce = L.nce_plus_loss(scores, log_q)
    mlis = L.ml_is_loss(gt, scores, log_q)
    kld = L.kld_is_loss(scores, log_q, log_p)
    for v in (nce, mlis, kld):
        assert bool(torch.isfinite(v))
    tol = 1e-9 if dtype == f64 else 2e-3
    assert float(nce) == pytest.approx(_slow_nce(small, log_q.double()), abs=tol)
    assert float(mlis) == pytest.approx(_slow_ml_is(gt.double() - 1e4, small, log_q.double()), abs=tol)
    # and the other sign: huge negative scores
    assert bool(torch.isfinite(L.nce_plus_loss(-scores, log_q)))
    assert bool(torch.isfinite(L.ml_is_loss(-gt, -scores, log_q)))
    assert bool(torch.isfinite(L.kld_is_loss(-scores, log_q, log_p)))


def test_huge_scores_gradients_finite():
    scores = (1e4 * torch.ones(2, 5, dtype=f64) + _rand(2, 5, seed=19)).requires_grad_(True)
    log_q = _rand(2, 5, seed=20)
    (L.nce_plus_loss(scores, log_q) + L.ml_is_loss(scores[:, 0], scores, log_q)).backward()
    assert bool(torch.isfinite(scores.grad).all())


# ---------------------------------------------------------------- properties
@pytest.mark.parametrize('dim', [1, 2])
def test_ml_is_log_partition_converges(dim):
    """For f(y) = -sum (y - mu)^2 / (2 s^2), Z = (sqrt(2 pi) s)^D; IS with a wider GMM finds it."""
    s = torch.tensor([0.3, 0.7][:dim], dtype=f64)
    mu = torch.tensor([[1.5, -2.0][:dim]], dtype=f64)
    noise = GMMNoise([0.5, 1.0, 2.0])
    y = noise.sample(mu, 40000, generator=torch.Generator().manual_seed(0))
    f = -(((y - mu[:, None]) / s)**2).sum(-1) / 2
    log_q = noise.log_prob(y, mu)
    log_z = float(torch.log(math.sqrt(2 * math.pi) * s).sum())
    est = float(L._log_mean_exp_ratio(f, log_q)[0])
    assert est == pytest.approx(log_z, abs=0.02)
    # the same through ml_is_loss: -log p(mu) = log Z - f(mu) = log Z
    assert float(L.ml_is_loss(torch.zeros(1, dtype=f64), f, log_q)) == pytest.approx(log_z, abs=0.02)
    # with few samples the estimate is noisy but not wildly off; with many it is good
    assert abs(float(L._log_mean_exp_ratio(f[:, :100], log_q[:, :100])[0]) - log_z) < 0.5


def test_dsm_true_score_is_best():
    """Data y_i ~ N(mu, tau^2); the sigma-perturbed density has score -(y - mu) / (tau^2 + sigma^2),
    which minimises the DSM objective over quadratic scores f_c(y) = -c (y - mu)^2 / 2."""
    tau, sigma = 1.0, 0.5
    g = torch.Generator().manual_seed(3)
    mu = torch.tensor([0.5, -1.0], dtype=f64)
    centers = mu + tau * torch.randn(400, 2, generator=g, dtype=f64)
    samples = centers[:, None] + sigma * torch.randn(400, 10, 2, generator=g, dtype=f64)
    c_true = 1 / (tau**2 + sigma**2)

    def loss(c, shift=0.0):
        return float(L.dsm_loss(lambda y: -c * ((y - mu - shift)**2).sum(-1) / 2, centers, samples, sigma))

    best = loss(c_true)
    for c in (0.5 * c_true, 0.8 * c_true, 1 / tau**2, 2 * c_true):
        assert loss(c) > best
    assert loss(c_true, shift=0.3) > best
    # a delta data distribution: the score of N(y_i, sigma^2) matches every target, loss 0
    exact = L.dsm_loss(lambda y: -((y - centers[:, None])**2).sum(-1) / (2 * sigma**2), centers, samples,
                       sigma)
    assert float(exact) == pytest.approx(0.0, abs=1e-20)


class _TinyF(nn.Module):

    def __init__(self, d=2):
        super().__init__()
        self.l1 = nn.Linear(d, 8)
        self.l2 = nn.Linear(8, 1)

    def forward(self, y):
        return self.l2(torch.tanh(self.l1(y))).squeeze(-1)


@pytest.mark.parametrize('method', ['nce_plus', 'nce', 'ml_is', 'kld_is', 'dsm', 'ml_mcmc'])
def test_gradients_flow(method):
    torch.manual_seed(0)
    f = _TinyF().double()
    noise = GMMNoise([0.1, 0.3])
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(3, 2, generator=g, dtype=f64)
    y = noise.sample(centers, 6, generator=g)
    if method in ('nce_plus', 'nce'):
        pos = centers[:, None] if method == 'nce' else noise.sample(centers, 1, scale=0.1, generator=g)
        yy = torch.cat([pos, y], 1)
        loss = getattr(L, method + '_loss')(f(yy), noise.log_prob(yy, centers))
    elif method == 'ml_is':
        loss = L.ml_is_loss(f(centers), f(y), noise.log_prob(y, centers))
    elif method == 'kld_is':
        log_p = torch.distributions.Normal(centers[:, None], 0.05).log_prob(y).sum(-1)
        loss = L.kld_is_loss(f(y), noise.log_prob(y, centers), log_p)
    elif method == 'dsm':
        loss = L.dsm_loss(f, centers, centers[:, None] + 0.1 * torch.randn(3, 6, 2, generator=g, dtype=f64), 0.1)
    else:
        neg = L.langevin_samples(f, y, num_steps=2, step_size=1e-3, generator=g)
        assert not neg.requires_grad
        loss = L.ml_mcmc_loss(f(centers), f(neg))
    assert loss.dim() == 0 and bool(torch.isfinite(loss))
    loss.backward()
    grads = [p.grad for p in f.parameters() if p.grad is not None]
    assert f.l1.weight.grad is not None  # the first layer always gets a gradient (dsm: 2nd order)
    assert all(bool(torch.isfinite(gr).all()) for gr in grads)
    assert float(f.l1.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize('name', sorted(L.LOSSES))
def test_loss_classes_draw_their_samples_and_train(name):
    torch.manual_seed(0)
    f = _TinyF().double()
    centers = torch.randn(3, 2, dtype=f64)
    loss_fn = L.build_loss(dict(type=name, num_samples=8, loss_weight=2.0))
    loss = loss_fn(f, centers, GMMNoise([0.1, 0.3]), generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and bool(torch.isfinite(loss))
    loss.backward()
    assert float(f.l1.weight.grad.abs().sum()) > 0
    # loss_weight scales the loss exactly (same draws)
    half = L.build_loss(dict(type=name, num_samples=8, loss_weight=1.0))(
        f, centers, GMMNoise([0.1, 0.3]), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss.detach(), 2 * half.detach())


def test_nce_plus_class_equals_the_functional_loss_on_the_same_draws():
    f = _TinyF().double()
    centers = torch.randn(4, 2, dtype=f64, generator=torch.Generator().manual_seed(3))
    noise = GMMNoise([0.1, 0.3])
    got = L.NCEPlusLoss(num_samples=6, beta=0.1)(f, centers, noise, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    y = torch.cat([noise.sample(centers, 1, scale=0.1, generator=g), noise.sample(centers, 5, generator=g)], 1)
    torch.testing.assert_close(got, L.nce_plus_loss(f(y), noise.log_prob(y, centers)))


def test_unknown_loss_type_or_argument_is_a_value_error():
    with pytest.raises(ValueError, match='unknown EBM loss type'):
        L.build_loss(dict(type='bogus'))
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['bet'\]; valid: .*'beta'"):
        L.build_loss(dict(type='NCEPlusLoss', bet=0.1))
    with pytest.raises(ValueError, match='no longer supported'):
        L.build_loss(dict(method='nce_plus'))
    with pytest.raises(ValueError, match='num_samples'):
        L.NCEPlusLoss(num_samples=1)
    with pytest.raises(ValueError, match='beta = 0'):
        L.NCELoss(beta=0.1)
