"""Reduced runs of the two regression benchmarks in tools/benchmarks (imported as ``tools.benchmarks.*``).

- 1-D toy 1 (bimodal for x < 0, log-normal for x >= 0): an NCE+-trained EBM beats a Gaussian
  regression (mean, log-variance) in KL(p_true || p_model).
- NARX with bimodal process noise: the NCE-trained EBM's test NLL beats the MLP-Gaussian's and
  its 90% intervals cover about 90% of the test steps.
"""
import math

import pytest
import torch


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    # the nets are tiny: extra threads only contend with other jobs on shared cores
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def toy():
    from tools.benchmarks import toy_1d
    return toy_1d


@pytest.fixture(scope='module')
def narx():
    from tools.benchmarks import narx
    return narx


def test_toy_data_and_true_density(toy):
    for d in (1, 2):
        x, y = toy.make_data(d, n=500, seed=0)
        assert x.shape == y.shape == (500, 1)
        assert bool((x.abs() <= 3).all()) and bool((y.abs() < 3).all())
        grid = torch.linspace(-3, 3, 2048).numpy()
        p = toy.true_density(d, [-2.0, -0.5, 0.5, 2.0], grid)
        mass = p.sum(1) * (grid[1] - grid[0])
        assert abs(mass - 1).max() < 1e-3
    # dataset 1 is bimodal at x < 0: the minor mode at -sin x carries 20% of the mass
    p = toy.true_density(1, [-1.5], grid)[0]
    s = math.sin(-1.5)
    assert p[abs(grid + s) < 0.3].sum() / p.sum() == pytest.approx(0.2, abs=0.01)


def test_toy_nce_plus_beats_gaussian_regression(toy):
    torch.manual_seed(0)
    x, y = toy.make_data(1, n=2000, seed=0)
    nce_plus = toy.train('nce_plus', x, y, seed=0, iters=250, num_samples=128)
    gauss = toy.train('gaussian', x, y, seed=0, iters=1000)
    kl_ebm = toy.evaluate(nce_plus, 1, num_x=128, num_grid=1024)
    kl_gauss = toy.evaluate(gauss, 1, num_x=128, num_grid=1024)
    assert math.isfinite(kl_ebm) and math.isfinite(kl_gauss)
    assert kl_ebm < 0.8 * kl_gauss, (kl_ebm, kl_gauss)


def test_narx_ebm_nll_and_coverage(narx):
    torch.manual_seed(0)
    data = narx.make_data(n_train=2000, n_test=300, seed=0)
    small = dict(iters=600, num_samples=64, batch=64)
    ebm = narx.train('ebm', data['x_train'], data['y_train'], seed=0, **small)
    mlp = narx.train('mlp', data['x_train'], data['y_train'], seed=0, iters=600)
    res = narx.evaluate(ebm, mlp, data, grid_points=512)
    e, m = res['EBM, mode (grid + gradient ascent)'], res['MLP (MSE) + Gaussian(residual var)']
    assert e['nll'] < m['nll'], res
    assert 0.75 <= e['coverage90'] <= 0.98, res
    assert math.isfinite(e['rmse']) and e['rmse'] < 1.0, res


def test_toy_methods_build_their_loss_classes(toy, narx):
    # each EBM method is its own loss class, its arguments from the tool's settings
    for method in toy.EBM_METHODS:
        loss = toy.build_method_loss(method, toy.DEFAULTS)
        assert type(loss).__name__ == toy.LOSS_SETTINGS[method][0]
    assert toy.build_method_loss('nce_plus', toy.DEFAULTS).beta == toy.DEFAULTS['beta']
    mcmc = toy.build_method_loss('ml_mcmc', toy.DEFAULTS)
    assert (mcmc.num_samples, mcmc.mcmc_steps) == (toy.DEFAULTS['mcmc_samples'], toy.DEFAULTS['mcmc_steps'])
    assert type(toy.build_method_loss(narx.DEFAULTS['loss'], narx.DEFAULTS)).__name__ == 'NCELoss'
    with pytest.raises(ValueError, match='unknown NARX loss'):
        narx.ebm_objective(dict(narx.DEFAULTS, loss='dsm'), torch.Generator())
    # two steps of every method train without error and keep the parameters finite
    x, y = toy.make_data(1, n=64, seed=0)
    for method in toy.METHODS:
        model = toy.train(method, x, y, seed=0, iters=2, batch=8, num_samples=8, mcmc_samples=4, mcmc_steps=2,
                          grid_points=16)
        assert all(torch.isfinite(p).all() for p in model.parameters()), method
