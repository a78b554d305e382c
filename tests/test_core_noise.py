"""GMMNoise: the density against a brute-force mixture, periodic dims, and sample moments."""
import math

import pytest
import torch

from ebm_det.core.noise import GMMNoise

devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def _slow_log_prob(samples, centers, sigmas, periodic_dims=()):
    """log (1/K) sum_k prod_d N(x_d; c_d, s_kd), with explicit loops and math only."""
    samples, centers, sigmas = samples.double().cpu(), centers.double().cpu(), sigmas.double().cpu()
    n, m, d = samples.shape
    k = sigmas.shape[0]
    out = torch.empty(n, m, dtype=torch.float64)
    for i in range(n):
        for j in range(m):
            total = 0.0
            for c in range(k):
                dens = 1.0
                for e in range(d):
                    diff = float(samples[i, j, e] - centers[i, e])
                    if e in periodic_dims:
                        diff = (diff + math.pi) % (2 * math.pi) - math.pi
                    s = float(sigmas[c, e] if sigmas.shape[1] > 1 else sigmas[c, 0])
                    dens *= math.exp(-0.5 * (diff / s)**2) / (s * math.sqrt(2 * math.pi))
                total += dens / k
            out[i, j] = math.log(total)
    return out


@pytest.mark.parametrize('device', devices)
@pytest.mark.parametrize('per_dim', [True, False])
def test_log_prob_matches_brute_force(per_dim, device):
    g = torch.Generator().manual_seed(0)
    if per_dim:
        sigmas = torch.rand(3, 4, generator=g, dtype=torch.float64) * 0.5 + 0.1  # (K, D)
    else:
        sigmas = torch.tensor([0.1, 0.3, 0.9], dtype=torch.float64)  # (K,)
    noise = GMMNoise(sigmas)
    assert noise.num_components == 3
    centers = torch.randn(2, 4, generator=g, dtype=torch.float64)
    samples = centers[:, None] + torch.randn(2, 5, 4, generator=g, dtype=torch.float64) * 0.4
    lp = noise.log_prob(samples.to(device), centers.to(device))
    assert lp.shape == (2, 5) and lp.dtype == torch.float64 and lp.device.type == device
    ref = _slow_log_prob(samples, centers, sigmas if per_dim else sigmas[:, None])
    torch.testing.assert_close(lp.cpu(), ref, rtol=1e-10, atol=1e-10)


def test_log_prob_matches_torch_distributions():
    sigmas = torch.tensor([[0.2, 0.5], [1.0, 0.3], [0.7, 2.0]], dtype=torch.float64)
    centers = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    samples = torch.tensor([[[0.4, -1.2], [3.0, 2.0], [0.5, -1.0]]], dtype=torch.float64)
    comp = torch.distributions.Independent(torch.distributions.Normal(centers[0], sigmas), 1)
    mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(torch.ones(3)), comp)
    torch.testing.assert_close(GMMNoise(sigmas).log_prob(samples, centers)[0], mix.log_prob(samples[0]))


def test_log_prob_normalised_1d():
    noise = GMMNoise([0.05, 0.2, 1.0])
    x = torch.linspace(-12, 12, 24001, dtype=torch.float64)
    lp = noise.log_prob(x[None, :, None], torch.tensor([[0.3]], dtype=torch.float64))[0]
    assert float(torch.trapezoid(lp.exp(), x)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize('device', devices)
def test_periodic_dim_wraps_difference(device):
    sigmas = torch.tensor([[0.3, 0.05], [1.0, 0.2]], dtype=torch.float64)
    noise = GMMNoise(sigmas, periodic_dims=(1, ))
    centers = torch.tensor([[0.5, -math.pi + 0.01], [0.5, 0.0]], dtype=torch.float64, device=device)
    samples = torch.tensor([[[0.7, math.pi - 0.01]], [[0.7, 0.02]]], dtype=torch.float64, device=device)
    lp = noise.log_prob(samples, centers)
    # across the wrap the yaw difference is 0.02, not 2 pi - 0.02
    torch.testing.assert_close(lp[0], lp[1], rtol=1e-9, atol=1e-9)
    ref = _slow_log_prob(samples[1:].cpu(), centers[1:].cpu(), sigmas)
    torch.testing.assert_close(lp[1].cpu(), ref[0])
    torch.testing.assert_close(lp.cpu(), _slow_log_prob(samples, centers, sigmas, periodic_dims=(1, )))
    # without the periodic dim the sample across the wrap is (numerically) impossible
    assert float(GMMNoise(sigmas).log_prob(samples, centers)[0, 0]) < float(lp[0, 0]) - 400
    # the input is not modified by the in-place wrapping
    assert float(samples[0, 0, 1]) == math.pi - 0.01


@pytest.mark.parametrize('device', devices)
def test_sample_moments(device):
    sigmas = torch.tensor([[0.1, 0.5, 1.0], [0.4, 0.5, 2.0], [1.0, 0.5, 0.1]])
    noise = GMMNoise(sigmas)
    centers = torch.tensor([[1.0, -2.0, 3.0], [0.0, 10.0, -5.0]], device=device, dtype=torch.float64)
    g = torch.Generator(device=device).manual_seed(1234)
    num = 20000
    s = noise.sample(centers, num, generator=g)
    assert s.shape == (2, num, 3) and s.dtype == torch.float64 and s.device.type == device
    var = (sigmas.double()**2).mean(0).to(device)  # mixture variance per dim
    mean_err = (s.mean(1) - centers).abs()
    assert bool((mean_err < 5 * (var / num).sqrt()).all()), mean_err
    emp_var = s.var(1)
    assert bool(((emp_var / var - 1).abs() < 0.06).all()), emp_var / var
    # a mixture, not a Gaussian of the same variance: the dim with sigmas (0.1, 0.4, 1.0) is
    # heavy-tailed (excess kurtosis > 0); the dim with one sigma 0.5 is Gaussian (kurtosis ~ 3)
    z = (s - s.mean(1, keepdim=True)) / emp_var.sqrt()[:, None]
    kurt = (z**4).mean(1)
    assert bool((kurt[:, 0] > 3.5).all()) and bool(((kurt[:, 1] - 3).abs() < 0.25).all()), kurt


@pytest.mark.parametrize('device', devices)
def test_sample_scale_shrinks_spread(device):
    noise = GMMNoise([0.2, 1.0, 3.0])
    centers = torch.randn(4, 2, dtype=torch.float64, device=device)
    beta = 0.1
    s1 = noise.sample(centers, 3000, generator=torch.Generator(device=device).manual_seed(7))
    sb = noise.sample(centers, 3000, scale=beta, generator=torch.Generator(device=device).manual_seed(7))
    # the same draws, shrunk around the centre by exactly beta
    torch.testing.assert_close(sb - centers[:, None], beta * (s1 - centers[:, None]))
    ratio = sb.std(1) / s1.std(1)
    torch.testing.assert_close(ratio, torch.full_like(ratio, beta))
    # and, on independent draws, the spread is beta times the mixture's
    sb2 = noise.sample(centers, 3000, scale=beta, generator=torch.Generator(device=device).manual_seed(8))
    expect = beta * math.sqrt((0.2**2 + 1 + 9) / 3)
    assert bool(((sb2.std(1) / expect - 1).abs() < 0.1).all())


def test_sample_float32_and_components_uniform():
    noise = GMMNoise([0.01, 100.0])
    centers = torch.zeros(1, 1)
    s = noise.sample(centers, 4000, generator=torch.Generator().manual_seed(0))
    assert s.dtype == torch.float32
    frac_small = float((s.abs() < 0.1).float().mean())  # almost only the sigma = 0.01 component
    assert abs(frac_small - 0.5) < 0.04


@pytest.mark.parametrize('sigmas', [[0.1, 0.0], [[0.1, -1.0]], [[[0.1]]]])
def test_bad_sigmas(sigmas):
    with pytest.raises(ValueError):
        GMMNoise(sigmas)
