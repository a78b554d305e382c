"""Six ways to train an energy-based regression model, on the two 1-D toys of Gustafsson et al.,
"How to Train Your Energy-Based Model for Regression" (BMVC 2020).

p(y | x) = exp f(x, y) / Z(x) with a small MLP f, trained by ML-IS, KLD-IS, ML-MCMC, NCE, DSM and
NCE+ through ``ebm_det.core.ebm_loss``; a reference trained by exact ML with Z(x) summed on a
fine y-grid (y is 1-D, so this is the best the network can do); and a Gaussian regression
baseline (an MLP predicting mean and log-variance, trained by Gaussian NLL).

Data (2000 training pairs, x ~ U(-3, 3)):
  1. x < 0:  y ~ 0.8 N(sin x, 0.075^2) + 0.2 N(-sin x, 0.075^2)   (bimodal)
     x >= 0: y ~ LogNormal(0, 0.25) - 1 = exp(N(0, 0.25^2)) - 1    (skewed)
  2. the paper's second toy: y ~ N(sin x, (0.15 sigmoid(x))^2), heteroscedastic Gaussian whose
     spread shrinks to 0.007 at x = -3 (so the Gaussian baseline is well specified here).

Metric: KL(p_true || p_model), both normalised on 2048 points over y in [-3, 3] (as in the
paper's evaluation), averaged over 256 evenly spaced test x in [-3, 3]; mean +- std over seeds
(each seed draws its own training set and initialisation).

    python tools/benchmarks/toy_1d.py [--seeds 3] [--iters N] [--out docs/figures]

The functions ``make_data``, ``train`` and ``evaluate`` are reused by tests with small settings.
"""
import argparse
import math
import os
import sys
import time
from typing import Dict, Optional

import numpy as np
import torch
from torch import Tensor, nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ebm_det.core import GMMNoise, ebm_loss  # noqa: E402

Y_LO, Y_HI = -3.0, 3.0
EBM_METHODS = ('ml_is', 'kld_is', 'ml_mcmc', 'nce', 'dsm', 'nce_plus')
METHODS = EBM_METHODS + ('grid_ml', 'gaussian')
LABELS = {
    'ml_is': 'ML-IS', 'kld_is': 'KLD-IS', 'ml_mcmc': 'ML-MCMC', 'nce': 'NCE', 'dsm': 'DSM',
    'nce_plus': 'NCE+', 'grid_ml': 'exact ML on a y-grid (reference)',
    'gaussian': 'Gaussian regression (mean, log-var; NLL)'
}

# Training settings shared by every EBM method (the paper's, except where noted). Measured on
# dataset 1, seed 0, 1000 steps, M = 256 (KL; single runs, see docs/figures/toy_1d.md):
#   DSM sigma 0.05 / 0.1 / 0.2: 0.75 / 0.42 / 0.36 -> the paper's 0.2.
#   ML-MCMC (L = 16) started at y_i with a = 0.0125^2 (the paper's): 0.60; started from the
#   proposal N(y_i, 0.8^2) with a = 2e-3: 5.6, from GMM(0.1, 0.8) with a = 1e-3: 7.0 -> the paper's.
#   lr 1e-3 constant (the paper's) needs ~4000 steps; 3e-3 with cosine decay gets there in 1000
#   (NCE+ 0.032, exact grid-ML 0.025 at 1000 steps vs 0.088 / 0.084 with 1e-3 + cosine).
DEFAULTS = dict(
    iters=1000,  # Adam steps of batch 32 (the paper: 75 epochs of 2000 = ~4700 at lr 1e-3)
    batch=32,
    lr=3e-3,
    cosine=True,  # cosine decay of lr to 5% over the run (the paper: constant lr)
    hidden=64,
    # M for ML-IS, KLD-IS, NCE, NCE+ and DSM. The paper's is 1024 (--num-samples 1024); 128 keeps
    # the six-method, two-toy, three-seed run at minutes on two shared CPU cores.
    num_samples=128,
    sigmas=(0.1, 0.8),  # GMMNoise proposal, the paper's
    beta=0.025,  # NCE+ positive noise scale, the paper's
    label_sigma=0.025,  # KLD-IS label density p(y | y_i) = N(y_i, 0.025^2), the paper's
    dsm_sigma=0.2,  # the paper's for these toys
    # ML-MCMC: L Langevin steps y <- y + a/2 grad f + sqrt(a) eps (a = lambda^2 = 0.0125^2),
    # started at y_i (GMMNoise of a negligible sigma), as the paper's toy code; 32 chains per y_i
    # (each step is a backward pass; the chain count only affects the gradient's variance).
    mcmc_steps=16,
    mcmc_step_size=0.0125**2,
    mcmc_init_sigmas=(1e-6, ),
    mcmc_samples=32,
    grid_points=256,  # exact-ML reference: Z(x) on this many points over [-3, 3], randomly shifted
)


# ------------------------------------------------------------------------------------ data
def make_data(dataset: int, n: int = 2000, seed: int = 0):
    """n training pairs of toy ``dataset`` (1 or 2): float32 tensors x (n, 1), y (n, 1)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3.0, 3.0, n)
    if dataset == 1:
        sign = np.where(rng.random(n) < 0.8, 1.0, -1.0)
        y_neg = rng.normal(sign * np.sin(x), 0.075)
        y_pos = np.exp(rng.normal(0.0, 0.25, n)) - 1.0
        y = np.where(x < 0, y_neg, y_pos)
    elif dataset == 2:
        y = rng.normal(np.sin(x), 0.15 / (1.0 + np.exp(-x)))
    else:
        raise ValueError(f'unknown toy dataset {dataset}; choose 1 or 2')
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)[:, None]  # noqa: E731
    return as_t(x), as_t(y)


def _normal_pdf(y, mu, sigma):
    return np.exp(-0.5 * ((y - mu) / sigma)**2) / (math.sqrt(2 * math.pi) * sigma)


def true_density(dataset: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """p_true(y | x) for x (T,) and y (G,): (T, G)."""
    x, y = np.asarray(x, np.float64)[:, None], np.asarray(y, np.float64)[None, :]
    if dataset == 1:
        s = np.sin(x)
        bimodal = 0.8 * _normal_pdf(y, s, 0.075) + 0.2 * _normal_pdf(y, -s, 0.075)
        z = np.clip(y + 1.0, 1e-12, None)
        lognormal = np.where(y > -1.0, np.exp(-0.5 * (np.log(z) / 0.25)**2) / (z * 0.25 * math.sqrt(2 * math.pi)), 0.0)
        return np.where(x < 0, bimodal, lognormal)
    if dataset == 2:
        return _normal_pdf(y, np.sin(x), 0.15 / (1.0 + np.exp(-x)))
    raise ValueError(f'unknown toy dataset {dataset}')


# ---------------------------------------------------------------------------------- models
class EnergyNet(nn.Module):
    """f(x, y): an x-feature net and a (feature, y-embedding) net, as in the paper (hidden 64).

    features: x -> 64 -> 64 (ReLU). score: tanh(W_y y) is concatenated with the feature and
    passed through 64 -> 64 -> 64 (tanh, residual) -> 1. The first layer on the concatenation is
    split into its x- and y-halves so the feature half is computed once per x, not per sample.
    """

    def __init__(self, x_dim: int = 1, y_dim: int = 1, hidden: int = 64) -> None:
        super().__init__()
        self.feat = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.y_emb = nn.Linear(y_dim, hidden)
        self.fc1_x = nn.Linear(hidden, hidden)
        self.fc1_y = nn.Linear(hidden, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def features(self, x: Tensor) -> Tensor:
        """x (N, x_dim) -> (N, H): the first layer's x-half, precomputed for ``score``."""
        return self.fc1_x(self.feat(x))

    def score(self, feat: Tensor, y: Tensor) -> Tensor:
        """feat (N, H) from ``features``, y (N, M, y_dim) -> f (N, M)."""
        h = torch.tanh(feat[:, None, :] + self.fc1_y(torch.tanh(self.y_emb(y))))
        h = torch.tanh(self.fc2(h)) + h
        h = torch.tanh(self.fc3(h)) + h
        return self.out(h).squeeze(-1)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.score(self.features(x), y)

    def log_density(self, x: Tensor, grid: Tensor) -> Tensor:
        """log p(y_g | x) normalised over the grid (probabilities summing to 1): (T, G)."""
        feat = self.features(x)
        f = torch.cat([self.score(feat[i:i + 64], grid.expand(len(feat[i:i + 64]), -1)[..., None])
                       for i in range(0, len(feat), 64)])
        return torch.log_softmax(f, dim=-1)


class GaussianNet(nn.Module):
    """x -> 64 -> 64 -> (mean, log variance), trained by the Gaussian NLL."""

    def __init__(self, x_dim: int = 1, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x: Tensor):
        mean, log_var = self.net(x).unbind(-1)
        return mean, log_var

    def nll(self, x: Tensor, y: Tensor) -> Tensor:
        mean, log_var = self(x)
        return (0.5 * log_var + 0.5 * (y[:, 0] - mean)**2 / log_var.exp()).mean()

    def log_density(self, x: Tensor, grid: Tensor) -> Tensor:
        mean, log_var = self(x)
        logp = -0.5 * (grid[None, :] - mean[:, None])**2 / log_var.exp()[:, None] - 0.5 * log_var[:, None]
        return torch.log_softmax(logp, dim=-1)


# -------------------------------------------------------------------------------- training
def train(method: str, x: Tensor, y: Tensor, seed: int = 0, iters: Optional[int] = None,
          log_every: int = 0, callback=None, **overrides) -> nn.Module:
    """Train one model by ``method`` (one of ``METHODS``) on (x (N, D), y (N, 1)); returns it.

    Any key of ``DEFAULTS`` can be overridden (e.g. ``num_samples=128``). ``callback(it, model)``
    is called after every step (for learning curves).
    """
    cfg = dict(DEFAULTS, **overrides)
    if iters is not None:
        cfg['iters'] = iters
    if method not in METHODS:
        raise ValueError(f'unknown method {method}; choose one of {METHODS}')
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 12345)
    model = GaussianNet(x.shape[1], cfg['hidden']) if method == 'gaussian' else EnergyNet(
        x.shape[1], y.shape[1], cfg['hidden'])
    opt = torch.optim.Adam(model.parameters(), lr=cfg['lr'])
    sched = None
    if cfg['cosine']:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg['iters'], eta_min=0.05 * cfg['lr'])
    noise = GMMNoise(list(cfg['sigmas']))
    mcmc_init = GMMNoise(list(cfg['mcmc_init_sigmas']))
    dy = (Y_HI - Y_LO) / cfg['grid_points']
    log_dy = math.log(dy)
    n = x.shape[0]
    for it in range(cfg['iters']):
        idx = torch.randint(n, (cfg['batch'], ), generator=gen)
        xb, yb = x[idx], y[idx]
        if method == 'gaussian':
            loss = model.nll(xb, yb)
        else:
            feat = model.features(xb)
            score_fn = lambda ys: model.score(feat, ys)  # noqa: E731
            if method == 'grid_ml':
                # Z(x) by a Riemann sum on a grid shifted uniformly at random every step, so no
                # peak can hide between fixed grid points
                grid = Y_LO + (torch.arange(cfg['grid_points']) + torch.rand(1, generator=gen)) * dy
                f_grid = score_fn(grid.expand(len(xb), -1)[..., None])
                loss = (torch.logsumexp(f_grid, -1) + log_dy - score_fn(yb[:, None, :])[:, 0]).mean()
            elif method == 'ml_mcmc':
                loss = ebm_loss('ml_mcmc', score_fn, yb, mcmc_init, num_samples=cfg['mcmc_samples'],
                                mcmc_steps=cfg['mcmc_steps'], mcmc_step_size=cfg['mcmc_step_size'],
                                generator=gen)
            else:
                loss = ebm_loss(method, score_fn, yb, noise, num_samples=cfg['num_samples'], beta=cfg['beta'],
                                label_sigma=cfg['label_sigma'], dsm_sigma=cfg['dsm_sigma'], generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if log_every and (it + 1) % log_every == 0:
            print(f'  {method} it {it + 1}: loss {loss.item():.4f}', flush=True)
        if callback is not None:
            callback(it + 1, model)
    return model.eval()


# ------------------------------------------------------------------------------ evaluation
def eval_inputs(num_x: int = 256) -> Tensor:
    return torch.linspace(-3.0, 3.0, num_x)[:, None]


@torch.no_grad()
def evaluate(model: nn.Module, dataset: int, num_x: int = 256, num_grid: int = 2048) -> float:
    """Mean over ``num_x`` test x of KL(p_true || p_model), both normalised on the y-grid."""
    x = eval_inputs(num_x)
    grid = torch.linspace(Y_LO, Y_HI, num_grid)
    p = true_density(dataset, x[:, 0].numpy(), grid.numpy()) + 1e-30
    p = p / p.sum(1, keepdims=True)
    log_q = model.log_density(x, grid).double().numpy()
    return float((p * (np.log(p) - log_q)).sum(1).mean())


# ------------------------------------------------------------------------------------ main
def _run_one(dataset: int, seed: int, method: str, overrides: dict):
    torch.set_num_threads(1)  # small nets: one thread per run; threads only fight on shared cores
    t0 = time.time()
    x, y = make_data(dataset, seed=seed)
    model = train(method, x, y, seed=seed, **overrides)
    return evaluate(model, dataset), (model if seed == 0 else None), time.time() - t0


# rough relative cost, so the longest runs start first when running in parallel
_COST = {'ml_mcmc': 6, 'grid_ml': 5, 'dsm': 4, 'ml_is': 3, 'kld_is': 3, 'nce': 2, 'nce_plus': 2, 'gaussian': 0}


def run_benchmark(seeds=3, datasets=(1, 2), methods=METHODS, jobs=1, verbose=True, **overrides):
    """{(dataset, method): [KL per seed]} and the seed-0 models (for the figure).

    ``jobs`` > 1 runs the (dataset, seed, method) trainings in that many processes.
    """
    tasks = sorted(((d, s, m) for d in datasets for s in range(seeds) for m in methods), key=lambda t: -_COST[t[2]])
    results: Dict = {}
    models: Dict = {}

    def record(task, out):
        (d, s, m), (kl, model, sec) = task, out
        results.setdefault((d, m), {})[s] = kl
        if model is not None:
            models[(d, m)] = model
        if verbose:
            print(f'dataset {d} seed {s} {LABELS[m].split(" (")[0]:>22}: KL {kl:.4f} ({sec:.0f} s)', flush=True)

    if jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context('spawn')) as pool:
            futures = {pool.submit(_run_one, *t, overrides): t for t in tasks}
            for fut, t in futures.items():
                record(t, fut.result())
    else:
        for t in tasks:
            record(t, _run_one(*t, overrides))
    return {k: [v[s] for s in sorted(v)] for k, v in results.items()}, models


def markdown_table(results, datasets=(1, 2), methods=METHODS) -> str:
    head = '| method | ' + ' | '.join(f'KL dataset {d}' for d in datasets) + ' |'
    lines = [head, '|' + '---|' * (len(datasets) + 1)]
    for m in methods:
        cells = []
        for d in datasets:
            v = np.array(results.get((d, m), [np.nan]))
            cells.append(f'{v.mean():.4f} ± {v.std():.4f}')
        lines.append(f'| {LABELS[m]} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot(models, path, datasets=(1, 2), methods=METHODS, xs=(-2.0, -0.5, 1.0, 2.5)):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib missing: no figure written')
        return False
    grid = torch.linspace(Y_LO, Y_HI, 2048)
    dy = float(grid[1] - grid[0])
    rows = len(datasets) * len(xs)
    fig, axes = plt.subplots(rows, len(methods), figsize=(2.6 * len(methods), 1.9 * rows), squeeze=False)
    for di, d in enumerate(datasets):
        for xi, xv in enumerate(xs):
            row = di * len(xs) + xi
            p_true = true_density(d, np.array([xv]), grid.numpy())[0]
            centre = np.sin(xv) if d == 2 else 0.0
            half = 0.6 if d == 2 else 1.5
            for mi, m in enumerate(methods):
                ax = axes[row, mi]
                with torch.no_grad():
                    q = models[(d, m)].log_density(torch.tensor([[xv]]), grid).exp()[0].numpy() / dy
                ax.plot(grid, p_true, 'k-', lw=1.0, label='true')
                ax.plot(grid, q, 'C1-', lw=1.0, label='model')
                ax.set_xlim(centre - half, centre + half)
                ax.tick_params(labelsize=6)
                if row == 0:
                    ax.set_title(LABELS[m].split(' (')[0], fontsize=8)
                if mi == 0:
                    ax.set_ylabel(f'toy {d}, x = {xv}', fontsize=7)
    axes[0, 0].legend(fontsize=6)
    fig.suptitle('p(y | x): truth (black) vs learned (orange), seed 0', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--seeds', type=int, default=3)
    ap.add_argument('--iters', type=int, default=DEFAULTS['iters'])
    ap.add_argument('--num-samples', type=int, default=DEFAULTS['num_samples'], help='M for the IS/NCE methods')
    ap.add_argument('--datasets', type=int, nargs='+', default=[1, 2])
    ap.add_argument('--methods', nargs='+', default=list(METHODS), choices=METHODS)
    ap.add_argument('--jobs', type=int, default=1, help='parallel processes (one thread each)')
    ap.add_argument('--out', default='docs/figures')
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    results, models = run_benchmark(args.seeds, args.datasets, args.methods, jobs=args.jobs, iters=args.iters,
                                    num_samples=args.num_samples)
    minutes = (time.time() - t0) / 60
    table = markdown_table(results, args.datasets, args.methods)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    cmd = 'python tools/benchmarks/toy_1d.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    has_fig = plot(models, os.path.join(args.out, 'toy_1d.png'), args.datasets, args.methods)
    cfg = dict(DEFAULTS, iters=args.iters, num_samples=args.num_samples)
    with open(os.path.join(args.out, 'toy_1d.md'), 'w') as fh:
        fh.write('# 1-D toy regression: six EBM training methods (BMVC 2020 toys)\n\n')
        fh.write(f'KL(p_true || p_model) on 2048 y-points over [-3, 3], mean over 256 test x; mean ± std over '
                 f'{args.seeds} seeds (each its own 2000-pair training set and init). Lower is better.\n\n')
        fh.write(table + '\n\n')
        fh.write(f'Command (CPU, {args.jobs} process(es) of one thread, {minutes:.1f} min wall on 2 shared cores):'
                 f'\n\n    {cmd.strip()}\n\n')
        fh.write('Settings: ' + ', '.join(f'{k}={v}' for k, v in cfg.items()) + '\n\n')
        fh.write('Dataset 1: x<0 bimodal 0.8 N(sin x, 0.075²) + 0.2 N(-sin x, 0.075²), x>=0 exp(N(0, 0.25²)) - 1. '
                 'Dataset 2 (the paper\'s second toy): N(sin x, (0.15 sigmoid(x))²).\n')
        if has_fig:
            fh.write('\n![learned densities](toy_1d.png)\n')
    return results


if __name__ == '__main__':
    main()
