"""Six ways to train an energy-based regression model, on the two 1-D toys of Gustafsson et al.,
"How to Train Your Energy-Based Model for Regression" (BMVC 2020).

p(y | x) = exp f(x, y) / Z(x) with a small MLP f, trained by ML-IS, KLD-IS, ML-MCMC, NCE, DSM and
NCE+ through the loss classes of ``ebm_det.core`` (``MLISLoss``, ..., ``NCEPlusLoss``); a
reference trained by exact ML with Z(x) summed on a fine y-grid (y is 1-D, so this is the best the
network can do); and a Gaussian regression baseline (an MLP predicting mean and log-variance,
trained by Gaussian NLL).

Data (2000 training pairs, x ~ U(-3, 3)):
  1. x < 0:  y ~ 0.8 N(sin x, 0.075^2) + 0.2 N(-sin x, 0.075^2)   (bimodal)
     x >= 0: y ~ LogNormal(0, 0.25) - 1 = exp(N(0, 0.25^2)) - 1    (skewed)
  2. the paper's second toy: y ~ N(sin x, (0.15 sigmoid(x))^2), heteroscedastic Gaussian whose
     spread shrinks to 0.007 at x = -3 (so the Gaussian baseline is well specified here).

Metric: KL(p_true || p_model), both normalised on 2048 points over y in [-3, 3] (as in the
paper's evaluation), averaged over 256 evenly spaced test x in [-3, 3]; mean +- std over seeds
(each seed draws its own training set and initialisation).

    python -m tools.benchmarks.toy_1d [--seeds 3] [--iters N] [--out docs/figures]

The functions ``make_data``, ``train`` and ``evaluate`` are reused by tests with small settings;
``EnergyNet``, ``build_method_loss`` and ``fit`` by ``narx.py``.
"""
import argparse
import math
import os
import time
from typing import Callable, Dict, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ebm_det.core import EBMLoss, GMMNoise, build_loss
from tools.benchmarks.common import command_line

X_LO, X_HI = -3.0, 3.0  # the inputs' range
Y_LO, Y_HI = -3.0, 3.0  # the y-range of the densities (evaluation and the exact-ML grid)
# toy 1: x < 0 bimodal, x >= 0 log-normal; toy 2: heteroscedastic Gaussian
TOY1_MODE_WEIGHTS = (0.8, 0.2)  # masses of the modes at sin x and at -sin x
TOY1_MODE_SD = 0.075
TOY1_LOGNORMAL_SD = 0.25
TOY2_SD_SCALE = 0.15  # sd = 0.15 sigmoid(x)
TRAIN_PAIRS = 2000
EVAL_X = 256  # evenly spaced test inputs
EVAL_GRID = 2048  # y-points the densities are normalised on
DENSITY_EPS = 1e-30  # keeps log p_true finite where the true density underflows
SCORE_CHUNK = 64  # inputs scored at once on the evaluation grid
BATCH_SEED_OFFSET = 12345  # the batch and sample generator is seeded with seed + this
LR_FLOOR = 0.05  # cosine decay ends at this fraction of lr

EBM_METHODS = ('ml_is', 'kld_is', 'ml_mcmc', 'nce', 'dsm', 'nce_plus')
METHODS = EBM_METHODS + ('grid_ml', 'gaussian')
LABELS = {
    'ml_is': 'ML-IS', 'kld_is': 'KLD-IS', 'ml_mcmc': 'ML-MCMC', 'nce': 'NCE', 'dsm': 'DSM',
    'nce_plus': 'NCE+', 'grid_ml': 'exact ML on a y-grid (reference)',
    'gaussian': 'Gaussian regression (mean, log-var; NLL)'
}
# Each EBM method's loss class, and which of its arguments come from which key of the settings
# (``DEFAULTS`` or ``narx.DEFAULTS``): method -> (type, {argument: settings key}).
LOSS_SETTINGS = {
    'ml_is': ('MLISLoss', dict(num_samples='num_samples')),
    'kld_is': ('KLDISLoss', dict(num_samples='num_samples', label_sigma='label_sigma')),
    'ml_mcmc': ('MLMCMCLoss', dict(num_samples='mcmc_samples', mcmc_steps='mcmc_steps',
                                   mcmc_step_size='mcmc_step_size')),
    'nce': ('NCELoss', dict(num_samples='num_samples')),
    'dsm': ('DSMLoss', dict(num_samples='num_samples', sigma='dsm_sigma')),
    'nce_plus': ('NCEPlusLoss', dict(num_samples='num_samples', beta='beta')),
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
# rough relative cost, so the longest runs start first when running in parallel
COST = {'ml_mcmc': 6, 'grid_ml': 5, 'dsm': 4, 'ml_is': 3, 'kld_is': 3, 'nce': 2, 'nce_plus': 2, 'gaussian': 0}

# one training step's objective: (model, x batch (B, D), y batch (B, 1)) -> scalar loss
Objective = Callable[[nn.Module, Tensor, Tensor], Tensor]


# ------------------------------------------------------------------------------------ data
def make_data(dataset: int, n: int = TRAIN_PAIRS, seed: int = 0):
    """n training pairs of toy ``dataset`` (1 or 2): float32 tensors x (n, 1), y (n, 1)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(X_LO, X_HI, n)
    if dataset == 1:
        sign = np.where(rng.random(n) < TOY1_MODE_WEIGHTS[0], 1.0, -1.0)
        y_neg = rng.normal(sign * np.sin(x), TOY1_MODE_SD)
        y_pos = np.exp(rng.normal(0.0, TOY1_LOGNORMAL_SD, n)) - 1.0
        y = np.where(x < 0, y_neg, y_pos)
    elif dataset == 2:
        y = rng.normal(np.sin(x), TOY2_SD_SCALE / (1.0 + np.exp(-x)))
    else:
        raise ValueError(f'unknown toy dataset {dataset}; choose 1 or 2')
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)[:, None]  # noqa: E731
    return as_t(x), as_t(y)


def _normal_pdf(y, mu, sigma):
    return np.exp(-0.5 * ((y - mu) / sigma)**2) / (math.sqrt(2 * math.pi) * sigma)


def _shifted_lognormal_pdf(y, sigma):
    """Density of exp(N(0, sigma^2)) - 1 at y."""
    z = np.clip(y + 1.0, 1e-12, None)
    return np.where(y > -1.0, np.exp(-0.5 * (np.log(z) / sigma)**2) / (z * sigma * math.sqrt(2 * math.pi)), 0.0)


def true_density(dataset: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """p_true(y | x) for x (T,) and y (G,): (T, G)."""
    x, y = np.asarray(x, np.float64)[:, None], np.asarray(y, np.float64)[None, :]
    if dataset == 1:
        s = np.sin(x)
        major, minor = TOY1_MODE_WEIGHTS
        bimodal = major * _normal_pdf(y, s, TOY1_MODE_SD) + minor * _normal_pdf(y, -s, TOY1_MODE_SD)
        return np.where(x < 0, bimodal, _shifted_lognormal_pdf(y, TOY1_LOGNORMAL_SD))
    if dataset == 2:
        return _normal_pdf(y, np.sin(x), TOY2_SD_SCALE / (1.0 + np.exp(-x)))
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

    def grid_scores(self, x: Tensor, grid: Tensor, chunk: int = SCORE_CHUNK) -> Tensor:
        """f at every point of the (G,) y-grid for each x (T, x_dim): (T, G), ``chunk`` x at a time."""
        feat = self.features(x)
        return torch.cat([self.score(f, grid.expand(len(f), -1)[..., None]) for f in feat.split(chunk)])

    def log_density(self, x: Tensor, grid: Tensor) -> Tensor:
        """log p(y_g | x) normalised over the grid (probabilities summing to 1): (T, G)."""
        return torch.log_softmax(self.grid_scores(x, grid), dim=-1)


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
def build_method_loss(method: str, cfg: dict) -> EBMLoss:
    """The loss class of an EBM ``method`` (a key of ``LOSS_SETTINGS``), its arguments read from
    the settings ``cfg``."""
    loss_type, args = LOSS_SETTINGS[method]
    return build_loss(dict(type=loss_type, **{arg: cfg[key] for arg, key in args.items()}))


def grid_ml_loss(model: EnergyNet, x: Tensor, y: Tensor, points: int, generator: torch.Generator) -> Tensor:
    """Exact ML: -log p(y | x) with Z(x) a Riemann sum over ``points`` y-points on [Y_LO, Y_HI],
    the grid shifted uniformly at random every call, so no peak can hide between fixed points."""
    dy = (Y_HI - Y_LO) / points
    feat = model.features(x)
    grid = Y_LO + (torch.arange(points) + torch.rand(1, generator=generator)) * dy
    log_z = torch.logsumexp(model.score(feat, grid.expand(len(x), -1)[..., None]), -1) + math.log(dy)
    return (log_z - model.score(feat, y[:, None, :])[:, 0]).mean()


def ebm_objective(loss: EBMLoss, noise: GMMNoise, generator: torch.Generator) -> Objective:
    """An EBM loss class as an ``Objective``: f on the batch's features, samples from ``noise``."""

    def objective(model: EnergyNet, x: Tensor, y: Tensor) -> Tensor:
        feat = model.features(x)
        return loss(lambda ys: model.score(feat, ys), y, noise, generator=generator)

    return objective


def make_objective(method: str, cfg: dict, generator: torch.Generator) -> Objective:
    """The training objective of ``method`` (one of ``METHODS``) with the settings ``cfg``."""
    if method == 'gaussian':
        return lambda model, x, y: model.nll(x, y)
    if method == 'grid_ml':
        return lambda model, x, y: grid_ml_loss(model, x, y, cfg['grid_points'], generator)
    # ML-MCMC's chains start at y_i (a negligible-sigma proposal); the others sample the GMM
    sigmas = cfg['mcmc_init_sigmas'] if method == 'ml_mcmc' else cfg['sigmas']
    return ebm_objective(build_method_loss(method, cfg), GMMNoise(list(sigmas)), generator)


def make_optimizer(model: nn.Module, lr: float, iters: int, cosine: bool = True):
    """Adam and, if ``cosine``, a cosine decay of its lr to ``LR_FLOOR`` x lr over ``iters`` steps
    (else None)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters, eta_min=LR_FLOOR * lr) if cosine else None
    return opt, sched


def fit(model: nn.Module, objective: Objective, x: Tensor, y: Tensor, cfg: dict, generator: torch.Generator,
        name: str = '', log_every: int = 0, callback=None) -> nn.Module:
    """``cfg['iters']`` Adam steps at ``cfg['lr']`` (cosine-decayed unless ``cfg['cosine']`` is False)
    on random batches of ``cfg['batch']`` pairs of (x (N, D), y (N, 1)) drawn by ``generator``;
    returns the model in eval mode. ``callback(it, model)`` is called after every step."""
    opt, sched = make_optimizer(model, cfg['lr'], cfg['iters'], cfg.get('cosine', True))
    for it in range(cfg['iters']):
        idx = torch.randint(len(x), (cfg['batch'], ), generator=generator)
        loss = objective(model, x[idx], y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if log_every and (it + 1) % log_every == 0:
            print(f'  {name} it {it + 1}: loss {loss.item():.4f}', flush=True)
        if callback is not None:
            callback(it + 1, model)
    return model.eval()


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
    gen = torch.Generator().manual_seed(seed + BATCH_SEED_OFFSET)
    if method == 'gaussian':
        model = GaussianNet(x.shape[1], cfg['hidden'])
    else:
        model = EnergyNet(x.shape[1], y.shape[1], cfg['hidden'])
    return fit(model, make_objective(method, cfg, gen), x, y, cfg, gen, method, log_every, callback)


# ------------------------------------------------------------------------------ evaluation
def eval_inputs(num_x: int = EVAL_X) -> Tensor:
    return torch.linspace(X_LO, X_HI, num_x)[:, None]


@torch.no_grad()
def evaluate(model: nn.Module, dataset: int, num_x: int = EVAL_X, num_grid: int = EVAL_GRID) -> float:
    """Mean over ``num_x`` test x of KL(p_true || p_model), both normalised on the y-grid."""
    x = eval_inputs(num_x)
    grid = torch.linspace(Y_LO, Y_HI, num_grid)
    p = true_density(dataset, x[:, 0].numpy(), grid.numpy()) + DENSITY_EPS
    p = p / p.sum(1, keepdims=True)
    log_q = model.log_density(x, grid).double().numpy()
    return float((p * (np.log(p) - log_q)).sum(1).mean())


# ----------------------------------------------------------------------------- benchmark
def _run_one(dataset: int, seed: int, method: str, overrides: dict):
    """(KL, the model if seed 0 else None, seconds) of one training run."""
    torch.set_num_threads(1)  # small nets: one thread per run; threads only fight on shared cores
    t0 = time.time()
    x, y = make_data(dataset, seed=seed)
    model = train(method, x, y, seed=seed, **overrides)
    return evaluate(model, dataset), (model if seed == 0 else None), time.time() - t0


def _run_all(tasks, jobs: int, overrides: dict):
    """Yield (task, ``_run_one`` output) for every (dataset, seed, method) task, in task order;
    ``jobs`` > 1 runs them in that many spawned processes."""
    if jobs <= 1:
        for task in tasks:
            yield task, _run_one(*task, overrides)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context('spawn')) as pool:
        futures = [(task, pool.submit(_run_one, *task, overrides)) for task in tasks]
        for task, fut in futures:
            yield task, fut.result()


def run_benchmark(seeds=3, datasets=(1, 2), methods=METHODS, jobs=1, verbose=True, **overrides):
    """{(dataset, method): [KL per seed]} and the seed-0 models (for the figure).

    ``jobs`` > 1 runs the (dataset, seed, method) trainings in that many processes.
    """
    tasks = sorted(((d, s, m) for d in datasets for s in range(seeds) for m in methods), key=lambda t: -COST[t[2]])
    results: Dict = {}
    models: Dict = {}
    for (d, s, m), (kl, model, sec) in _run_all(tasks, jobs, overrides):
        results.setdefault((d, m), {})[s] = kl
        if model is not None:
            models[(d, m)] = model
        if verbose:
            print(f'dataset {d} seed {s} {LABELS[m].split(" (")[0]:>22}: KL {kl:.4f} ({sec:.0f} s)', flush=True)
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


# --------------------------------------------------------------------------------- figure
PLOT_XS = (-2.0, -0.5, 1.0, 2.5)  # test inputs drawn, one row each per toy
PANEL_SIZE = (2.6, 1.9)  # inches per panel
PLOT_DPI = 80


def _plot_density(ax, model: nn.Module, dataset: int, x: float, grid: Tensor) -> None:
    """True and learned p(y | x) on one panel, zoomed on where the true density lives."""
    dy = float(grid[1] - grid[0])
    p_true = true_density(dataset, np.array([x]), grid.numpy())[0]
    centre, half = (np.sin(x), 0.6) if dataset == 2 else (0.0, 1.5)
    with torch.no_grad():
        q = model.log_density(torch.tensor([[x]]), grid).exp()[0].numpy() / dy
    ax.plot(grid, p_true, 'k-', lw=1.0, label='true')
    ax.plot(grid, q, 'C1-', lw=1.0, label='model')
    ax.set_xlim(centre - half, centre + half)
    ax.tick_params(labelsize=6)


def plot(models, path, datasets=(1, 2), methods=METHODS, xs=PLOT_XS):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib missing: no figure written')
        return False
    grid = torch.linspace(Y_LO, Y_HI, EVAL_GRID)
    rows = len(datasets) * len(xs)
    fig, axes = plt.subplots(rows, len(methods), figsize=(PANEL_SIZE[0] * len(methods), PANEL_SIZE[1] * rows),
                             squeeze=False)
    for di, d in enumerate(datasets):
        for xi, xv in enumerate(xs):
            row = di * len(xs) + xi
            for mi, m in enumerate(methods):
                _plot_density(axes[row, mi], models[(d, m)], d, xv, grid)
                if row == 0:
                    axes[row, mi].set_title(LABELS[m].split(' (')[0], fontsize=8)
            axes[row, 0].set_ylabel(f'toy {d}, x = {xv}', fontsize=7)
    axes[0, 0].legend(fontsize=6)
    fig.suptitle('p(y | x): truth (black) vs learned (orange), seed 0', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--seeds', type=int, default=3, help='seeds 0..N-1 per toy and method (each its own data and init)')
    ap.add_argument('--iters', type=int, default=DEFAULTS['iters'], help='Adam steps (batch 32) of every training run')
    ap.add_argument('--num-samples', type=int, default=DEFAULTS['num_samples'],
                    help='M: samples per target for ML-IS, KLD-IS, NCE, NCE+ and DSM')
    ap.add_argument('--datasets', type=int, nargs='+', default=[1, 2], help='the toys to run: 1 and/or 2 (see above)')
    ap.add_argument('--methods', nargs='+', default=list(METHODS), choices=METHODS,
                    help='the six EBM methods, grid_ml (the exact-ML reference), gaussian (the baseline)')
    ap.add_argument('--jobs', type=int, default=1, help='parallel processes (one thread each)')
    ap.add_argument('--out', default='docs/figures', help='folder for toy_1d.md and toy_1d.png')
    return ap.parse_args(argv)


def write_report(path: str, args: argparse.Namespace, table: str, command: str, minutes: float,
                 has_fig: bool) -> None:
    cfg = dict(DEFAULTS, iters=args.iters, num_samples=args.num_samples)
    with open(path, 'w') as fh:
        fh.write('# 1-D toy regression: six EBM training methods (BMVC 2020 toys)\n\n')
        fh.write(f'KL(p_true || p_model) on {EVAL_GRID} y-points over [{Y_LO:g}, {Y_HI:g}], mean over {EVAL_X} '
                 f'test x; mean ± std over {args.seeds} seeds (each its own {TRAIN_PAIRS}-pair training set and '
                 'init). Lower is better.\n\n')
        fh.write(table + '\n\n')
        fh.write(f'Command (CPU, {args.jobs} process(es) of one thread, {minutes:.1f} min wall on 2 shared cores):'
                 f'\n\n    {command}\n\n')
        fh.write('Settings: ' + ', '.join(f'{k}={v}' for k, v in cfg.items()) + '\n\n')
        fh.write('Dataset 1: x<0 bimodal 0.8 N(sin x, 0.075²) + 0.2 N(-sin x, 0.075²), x>=0 exp(N(0, 0.25²)) - 1. '
                 'Dataset 2 (the paper\'s second toy): N(sin x, (0.15 sigmoid(x))²).\n')
        if has_fig:
            fh.write('\n![learned densities](toy_1d.png)\n')


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    results, models = run_benchmark(args.seeds, args.datasets, args.methods, jobs=args.jobs, iters=args.iters,
                                    num_samples=args.num_samples)
    minutes = (time.time() - t0) / 60
    table = markdown_table(results, args.datasets, args.methods)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    command = command_line('tools.benchmarks.toy_1d', argv)
    has_fig = plot(models, os.path.join(args.out, 'toy_1d.png'), args.datasets, args.methods)
    write_report(os.path.join(args.out, 'toy_1d.md'), args, table, command.strip(), minutes, has_fig)
    return results


if __name__ == '__main__':
    main()
