"""Reduced runs of the two regression benchmarks in tools/benchmarks (loaded by file path).

- 1-D toy 1 (bimodal for x < 0, log-normal for x >= 0): an NCE+-trained EBM beats a Gaussian
  regression (mean, log-variance) in KL(p_true || p_model).
- NARX with bimodal process noise: the NCE-trained EBM's test NLL beats the MLP-Gaussian's and
  its 90% intervals cover about 90% of the test steps.
"""
import importlib.util
import math
import os

import pytest
import torch

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools', 'benchmarks')


def _load(name):
    spec = importlib.util.spec_from_file_location(f'_bench_{name}', os.path.join(BENCH, f'{name}.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    # the nets are tiny: extra threads only contend with other jobs on shared cores
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def toy():
    return _load('toy_1d')


@pytest.fixture(scope='module')
def narx():
    return _load('narx')


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
