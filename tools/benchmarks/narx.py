"""Deep energy-based NARX system identification on a simulated system with bimodal noise.

System (Chen et al. 1990's nonlinear benchmark, with non-Gaussian equation noise):

    y_t = (0.8 - 0.5 exp(-y_{t-1}^2)) y_{t-1} - (0.3 + 0.9 exp(-y_{t-1}^2)) y_{t-2}
          + u_{t-1} + 0.2 u_{t-2} + 0.1 u_{t-1} u_{t-2} + e_t
    u_t ~ U(-1.5, 1.5) i.i.d.,   e_t ~ 0.6 N(-0.2, 0.08^2) + 0.4 N(0.3, 0.08^2)  (zero mean)

so p(y_t | past) is bimodal. Model: an EBM p(y_t | y_{t-1..t-na}, u_{t-1..t-nb}) =
exp f(x_t, y_t) / Z(x_t), f the same MLP as the 1-D toys (``toy_1d.EnergyNet``), trained by NCE
(``ebm_det.core.NCELoss``, M = 512, GMMNoise sigma = {0.1, 0.2, 0.8}) or NCE+ (``NCEPlusLoss``).
Baseline: an MLP on the same regressors trained by MSE, with a Gaussian of the training-residual
variance as its predictive density.

Point prediction from the EBM: the argmax of f on a coarse y-grid, refined by
``refine_by_gradient_ascent`` (the mode); the EBM density's mean is reported too. Metrics on a
fresh test sequence, one step ahead: RMSE, NLL (EBM: f normalised on a fine y-grid; MLP:
Gaussian), coverage of the central 90% interval (EBM: 5% / 95% quantiles of the grid density;
MLP: mean +- 1.645 sigma). The "true model" row uses the known f and noise density.

    python -m tools.benchmarks.narx [--iters N] [--loss nce|nce_plus] [--out docs/figures]

The functions ``make_data``, ``train`` and ``evaluate`` are reused by tests with small settings.
"""
import argparse
import math
import os
import time
from typing import Dict

import numpy as np
import torch
from torch import Tensor, nn

from ebm_det.core import GMMNoise, RefineConfig, refine_by_gradient_ascent

from tools.benchmarks import toy_1d  # EnergyNet, loss settings, training loop
from tools.benchmarks.common import command_line

NOISE_W = (0.6, 0.4)
NOISE_MU = (-0.2, 0.3)
NOISE_SD = 0.08
NA, NB = 2, 2  # past outputs and inputs in a regressor
U_MAX = 1.5  # u_t ~ U(-U_MAX, U_MAX)
BURN_IN = 50  # simulated steps dropped before a sequence starts
BATCH_SEED_OFFSET = 777  # the batch and sample generator is seeded with seed + this
Y_GRID_MARGIN = 1.0  # the y-grids span the training targets plus this on both sides
DENSITY_CHUNK = 128  # test inputs scored at once on the fine grid
INTERVAL_LEVEL = 0.9  # central predictive interval whose coverage is reported
Z_90 = 1.6448536  # the standard normal's 95% quantile: a Gaussian's central 90% is mean +- Z_90 sd
MODELS = ('ebm', 'mlp')
LOSSES = ('nce', 'nce_plus')  # keys of toy_1d.LOSS_SETTINGS: NCELoss, NCEPlusLoss

DEFAULTS = dict(
    loss='nce',  # or 'nce_plus'
    iters=1500,
    batch=64,
    lr=3e-3,  # cosine-decayed to 5% over the run
    hidden=64,
    scale_y=True,
    num_samples=512,
    sigmas=(0.1, 0.2, 0.8),
    beta=0.025,  # NCE+ only
    grid_points=1024,  # fine grid for the density (NLL, intervals)
    coarse_points=256,  # argmax search before the gradient steps
    step_size=2e-3,  # refine_by_gradient_ascent lambda (f ~ -(y - mode)^2 / (2 * 0.08^2) near a mode)
    refine_steps=20,
)


# ------------------------------------------------------------------------------------ data
def system_mean(y1, y2, u1, u2):
    """The noise-free part of y_t given y_{t-1}, y_{t-2}, u_{t-1}, u_{t-2}."""
    g = np.exp(-y1**2)
    return (0.8 - 0.5 * g) * y1 - (0.3 + 0.9 * g) * y2 + u1 + 0.2 * u2 + 0.1 * u1 * u2


def noise_log_pdf(e):
    comps = [math.log(w) - 0.5 * ((e - m) / NOISE_SD)**2 - math.log(NOISE_SD * math.sqrt(2 * math.pi))
             for w, m in zip(NOISE_W, NOISE_MU)]
    return np.logaddexp(*comps)


def simulate(n: int, rng: np.random.Generator, burn_in: int = BURN_IN):
    """u (n,), y (n,), mean (n,): inputs, outputs and each y_t's noise-free part."""
    total = n + burn_in
    u = rng.uniform(-U_MAX, U_MAX, total)
    comp = rng.random(total) < NOISE_W[0]
    e = np.where(comp, NOISE_MU[0], NOISE_MU[1]) + NOISE_SD * rng.standard_normal(total)
    y, mean = np.zeros(total), np.zeros(total)
    for t in range(2, total):
        mean[t] = system_mean(y[t - 1], y[t - 2], u[t - 1], u[t - 2])
        y[t] = mean[t] + e[t]
    return u[burn_in:], y[burn_in:], mean[burn_in:]


def regressors(u, y):
    """x_t = (y_{t-1..t-na}, u_{t-1..t-nb}) and target y_t, for t >= max(na, nb)."""
    k = max(NA, NB)
    cols = [y[k - i:len(y) - i] for i in range(1, NA + 1)] + [u[k - i:len(u) - i] for i in range(1, NB + 1)]
    return np.stack(cols, 1), y[k:]


def make_data(n_train: int = 2000, n_test: int = 500, seed: int = 0) -> Dict[str, Tensor]:
    """Train and test sequences from independent noise/input draws, as regression pairs.

    Returns x_train (N, 4), y_train (N, 1), x_test, y_test, mean_test (the noise-free part of
    each test target) as float32 tensors; x is standardised with the training statistics
    (``x_mean``, ``x_std``), y is left in its own units.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (('train', n_train), ('test', n_test)):
        u, y, mean = simulate(n + max(NA, NB), rng)
        x, t = regressors(u, y)
        out[f'x_{split}'], out[f'y_{split}'] = x, t[:, None]
        out[f'mean_{split}'] = mean[max(NA, NB):]
    mu, sd = out['x_train'].mean(0), out['x_train'].std(0)
    for split in ('train', 'test'):
        out[f'x_{split}'] = (out[f'x_{split}'] - mu) / sd
    out['x_mean'], out['x_std'] = mu, sd
    return {k: torch.as_tensor(v, dtype=torch.float32) for k, v in out.items()}


# ---------------------------------------------------------------------------------- models
class NarxEnergy(toy_1d.EnergyNet):
    """``toy_1d.EnergyNet`` with y standardised at its input (y here spans about +-5)."""

    def __init__(self, x_dim: int, hidden: int, y_mean: float = 0.0, y_std: float = 1.0) -> None:
        super().__init__(x_dim, 1, hidden)
        self.register_buffer('y_mean', torch.tensor(float(y_mean)))
        self.register_buffer('y_std', torch.tensor(float(y_std)))

    def score(self, feat: Tensor, y: Tensor) -> Tensor:
        return super().score(feat, (y - self.y_mean) / self.y_std)


class MLP(nn.Module):
    """x -> 64 -> 64 -> 64 -> the mean of y; ``res_var`` holds the training residuals' variance."""

    def __init__(self, x_dim: int = NA + NB, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.register_buffer('res_var', torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)[:, 0]


def mse_objective(model: MLP, x: Tensor, y: Tensor) -> Tensor:
    return ((model(x) - y[:, 0])**2).mean()


def ebm_objective(cfg: dict, generator: torch.Generator) -> toy_1d.Objective:
    """NCE or NCE+ (``cfg['loss']``) with M = ``cfg['num_samples']`` on the GMM of ``cfg['sigmas']``."""
    if cfg['loss'] not in LOSSES:
        raise ValueError(f"unknown NARX loss {cfg['loss']!r}; choose one of {LOSSES}")
    loss = toy_1d.build_method_loss(cfg['loss'], cfg)
    return toy_1d.ebm_objective(loss, GMMNoise(list(cfg['sigmas'])), generator)


def train(method: str, x: Tensor, y: Tensor, seed: int = 0, log_every: int = 0, **overrides) -> nn.Module:
    """'ebm' (trained by ``cfg['loss']``: 'nce' or 'nce_plus') or 'mlp' (MSE); returns the model."""
    cfg = dict(DEFAULTS, **overrides)
    if method not in MODELS:
        raise ValueError(f"unknown NARX model '{method}'; choose one of {MODELS}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + BATCH_SEED_OFFSET)
    if method == 'ebm':
        y_std = float(y.std()) if cfg['scale_y'] else 1.0
        model = NarxEnergy(x.shape[1], cfg['hidden'], float(y.mean()), y_std)
        return toy_1d.fit(model, ebm_objective(cfg, gen), x, y, cfg, gen, method, log_every)
    model = toy_1d.fit(MLP(x.shape[1], cfg['hidden']), mse_objective, x, y, cfg, gen, method, log_every)
    with torch.no_grad():
        model.res_var.fill_(float(((model(x) - y[:, 0])**2).mean()))
    return model


# ------------------------------------------------------------------------------ evaluation
def y_grid(data, points: int) -> Tensor:
    lo = float(data['y_train'].min()) - Y_GRID_MARGIN
    hi = float(data['y_train'].max()) + Y_GRID_MARGIN
    return torch.linspace(lo, hi, points)


@torch.no_grad()
def ebm_grid_log_density(model: NarxEnergy, x: Tensor, grid: Tensor, chunk: int = DENSITY_CHUNK) -> Tensor:
    """log p(y | x) as a density (per unit y) on the (G,) grid, normalised there: (N, G)."""
    return torch.log_softmax(model.grid_scores(x, grid, chunk), -1) - math.log(float(grid[1] - grid[0]))


def ebm_predict(model: NarxEnergy, x: Tensor, grid: Tensor, step_size: float, steps: int):
    """Mode prediction: argmax of f on ``grid``, then ``refine_by_gradient_ascent``."""
    with torch.no_grad():
        feat = model.features(x)
        f = model.score(feat, grid.expand(len(x), -1)[..., None])
        init = grid[f.argmax(-1)][:, None]

    def score_fn(b, index):
        return model.score(feat[index], b[:, None, :])[:, 0]

    res = refine_by_gradient_ascent(score_fn, init, step_size, RefineConfig(num_steps=steps))
    return init[:, 0], res.boxes[:, 0]


def _interval_coverage(log_dens: Tensor, grid: Tensor, y: Tensor, level: float = INTERVAL_LEVEL):
    """Coverage and mean width of the central ``level`` interval of grid densities (N, G)."""
    cdf = torch.cumsum(log_dens.exp() * float(grid[1] - grid[0]), -1)
    cdf = cdf / cdf[:, -1:]
    a = (1 - level) / 2
    lo = grid[torch.searchsorted(cdf, torch.full((len(y), 1), a)).clamp(max=len(grid) - 1)[:, 0]]
    hi = grid[torch.searchsorted(cdf, torch.full((len(y), 1), 1 - a)).clamp(max=len(grid) - 1)[:, 0]]
    return float(((y >= lo) & (y <= hi)).float().mean()), float((hi - lo).mean())


def _interp_log_density(log_dens: Tensor, grid: Tensor, y: Tensor) -> Tensor:
    """Linear interpolation of grid log-densities (N, G) at y (N,)."""
    pos = ((y - grid[0]) / (grid[1] - grid[0])).clamp(0, len(grid) - 1 - 1e-6)
    i0 = pos.floor().long()
    w = pos - i0
    rows = torch.arange(len(y))
    return (1 - w) * log_dens[rows, i0] + w * log_dens[rows, i0 + 1]


def _rmse(pred: Tensor, y: Tensor) -> float:
    return float(((pred - y)**2).mean().sqrt())


def ebm_metrics(ebm: NarxEnergy, data, cfg: dict) -> Dict[str, Dict[str, float]]:
    """The EBM's rows: its mode and its density mean as point predictions, one density."""
    x, y = data['x_test'], data['y_test'][:, 0]
    grid = y_grid(data, cfg['grid_points'])
    log_dens = ebm_grid_log_density(ebm, x, grid)
    _, mode = ebm_predict(ebm, x, y_grid(data, cfg['coarse_points']), cfg['step_size'], cfg['refine_steps'])
    cov, width = _interval_coverage(log_dens, grid, y)
    nll = float(-_interp_log_density(log_dens, grid, y).mean())
    mean = (log_dens.exp() * grid).sum(-1) / log_dens.exp().sum(-1)
    density = dict(nll=nll, coverage90=cov, width90=width)
    return {'EBM, mode (grid + gradient ascent)': dict(rmse=_rmse(mode, y), **density),
            'EBM, density mean': dict(rmse=_rmse(mean, y), **density)}


def mlp_metrics(mlp: MLP, data) -> Dict[str, float]:
    """The MLP's mean with a Gaussian of its training-residual variance."""
    x, y = data['x_test'], data['y_test'][:, 0]
    with torch.no_grad():
        pred = mlp(x)
    var = float(mlp.res_var)
    half_width = Z_90 * math.sqrt(var)
    return dict(rmse=_rmse(pred, y), nll=float((0.5 * (y - pred)**2 / var + 0.5 * math.log(2 * math.pi * var)).mean()),
                coverage90=float(((y - pred).abs() <= half_width).float().mean()), width90=2 * half_width)


def oracle_metrics(data) -> Dict[str, float]:
    """The data-generating model: the noise-free part plus the noise's mean (0) for RMSE."""
    e = (data['y_test'][:, 0] - data['mean_test']).double().numpy()
    return dict(rmse=float(np.sqrt(np.mean(e**2))), nll=float(-noise_log_pdf(e).mean()), coverage90=float('nan'),
                width90=float('nan'))


def evaluate(ebm: NarxEnergy, mlp: MLP, data, **overrides) -> Dict[str, Dict[str, float]]:
    """One-step-ahead metrics on the test sequence for the EBM, the MLP and the true model."""
    cfg = dict(DEFAULTS, **overrides)
    res = ebm_metrics(ebm, data, cfg)
    res['MLP (MSE) + Gaussian(residual var)'] = mlp_metrics(mlp, data)
    res['true model (oracle)'] = oracle_metrics(data)
    return res


def markdown_table(res) -> str:
    lines = ['| model | one-step RMSE | test NLL | 90% interval coverage | mean 90% width |', '|---|---|---|---|---|']
    for name, m in res.items():
        cov = '—' if math.isnan(m['coverage90']) else f"{m['coverage90']:.3f}"
        width = '—' if math.isnan(m['width90']) else f"{m['width90']:.3f}"
        lines.append(f"| {name} | {m['rmse']:.4f} | {m['nll']:.4f} | {cov} | {width} |")
    return '\n'.join(lines)


# --------------------------------------------------------------------------------- figure
PLOT_WINDOW = (0, 80)  # test steps drawn over time
PLOT_STEPS = (5, 40, 70)  # steps (within the window) whose densities are drawn side by side
PLOT_SPACING = 2.0  # horizontal offset between those densities
PLOT_Y_MARGIN = 0.6  # the top panel's y-range: the observed y plus this
PLOT_LABEL_Y = 2.6  # height of the bottom panel's 't = ...' labels (density units)
PLOT_FIGSIZE = (11, 7)
PLOT_DPI = 80


def _plot_over_time(ax, dens: np.ndarray, grid: Tensor, y: Tensor, pred: np.ndarray, sd: float, window) -> None:
    """The EBM's predictive density per step (image), the observed y and the MLP's band."""
    s, e = window
    t = np.arange(s, e)
    lo, hi = float(y.min()) - PLOT_Y_MARGIN, float(y.max()) + PLOT_Y_MARGIN
    keep = (grid >= lo) & (grid <= hi)
    ax.imshow(dens[:, keep.numpy()].T, origin='lower', aspect='auto', cmap='Blues',
              extent=(s - 0.5, e - 0.5, float(grid[keep][0]), float(grid[keep][-1])))
    ax.plot(t, y.numpy(), 'k.', ms=4, label='true $y_t$')
    ax.fill_between(t, pred - Z_90 * sd, pred + Z_90 * sd, color='C1', alpha=0.15, label=f'MLP ±{Z_90:.3f}σ')
    ax.plot(t, pred, 'C1-', lw=0.8, label='MLP mean')
    ax.set_xlabel('test time step t')
    ax.set_ylabel('y')
    ax.set_title('one-step-ahead predictive density of the EBM (blue) vs truth (dots) and the MLP-Gaussian')
    ax.legend(fontsize=8, loc='upper right')


def _plot_conditionals(ax, dens: np.ndarray, grid: Tensor, y: Tensor, mean_t: np.ndarray, pred: np.ndarray, sd: float,
                       start: int) -> None:
    """A few individual predictive densities vs the true conditional density, each centred on its
    noise-free value."""
    g = grid.numpy()
    for k, i in enumerate(PLOT_STEPS):
        shift = PLOT_SPACING * k
        true = np.exp(noise_log_pdf(g - mean_t[i]))
        off = float(mean_t[i])
        ax.plot(g - off + shift, true, 'k-', lw=1, label='true' if k == 0 else None)
        ax.plot(g - off + shift, dens[i], 'C0-', lw=1, label='EBM' if k == 0 else None)
        gauss = np.exp(-0.5 * ((g - pred[i]) / sd)**2) / (sd * math.sqrt(2 * math.pi))
        ax.plot(g - off + shift, gauss, 'C1--', lw=1, label='MLP Gaussian' if k == 0 else None)
        ax.axvline(float(y[i]) - off + shift, color='k', ls=':', lw=0.8)
        ax.text(shift + 0.35, PLOT_LABEL_Y, f't = {start + i}', fontsize=8)
    ax.set_xlim(-PLOT_SPACING / 2, PLOT_SPACING * (len(PLOT_STEPS) - 0.5))
    ax.set_xticks([])
    ax.set_ylabel('p(y_t | past)')
    steps = ', '.join(str(start + i) for i in PLOT_STEPS)
    ax.set_title(f'p(y_t | past) at t = {steps} (centred on the noise-free value; dotted: observed y_t)', fontsize=9)
    ax.legend(fontsize=8)


def plot(ebm, mlp, data, path, window=PLOT_WINDOW, **overrides) -> bool:
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib missing: no figure written')
        return False
    cfg = dict(DEFAULTS, **overrides)
    s, e = window
    x, y = data['x_test'][s:e], data['y_test'][s:e, 0]
    grid = y_grid(data, cfg['grid_points'])
    dens = ebm_grid_log_density(ebm, x, grid).exp().numpy()
    with torch.no_grad():
        pred = mlp(x).numpy()
    sd = math.sqrt(float(mlp.res_var))
    fig, axes = plt.subplots(2, 1, figsize=PLOT_FIGSIZE, gridspec_kw=dict(height_ratios=[2, 1]))
    _plot_over_time(axes[0], dens, grid, y, pred, sd, window)
    _plot_conditionals(axes[1], dens, grid, y, data['mean_test'][s:e].numpy(), pred, sd, s)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--iters', type=int, default=DEFAULTS['iters'], help='Adam steps (batch 64) of the EBM and the MLP')
    ap.add_argument('--loss', default=DEFAULTS['loss'], choices=LOSSES, help="the EBM's loss: NCELoss or NCEPlusLoss")
    ap.add_argument('--num-samples', type=int, default=DEFAULTS['num_samples'],
                    help="M: the EBM's noise samples per training target")
    ap.add_argument('--seed', type=int, default=0, help='seed of the simulated sequences and of both trainings')
    ap.add_argument('--out', default='docs/figures', help='folder for narx.md and narx.png')
    return ap.parse_args(argv)


def write_report(path: str, args: argparse.Namespace, table: str, command: str, minutes: float,
                 has_fig: bool) -> None:
    loss_name = toy_1d.LABELS[args.loss]
    with open(path, 'w') as fh:
        fh.write('# Deep energy-based NARX: one-step-ahead prediction with bimodal process noise\n\n')
        fh.write('System: y_t = (0.8 - 0.5 exp(-y_{t-1}²)) y_{t-1} - (0.3 + 0.9 exp(-y_{t-1}²)) y_{t-2} + u_{t-1} '
                 '+ 0.2 u_{t-2} + 0.1 u_{t-1} u_{t-2} + e_t, u_t ~ U(-1.5, 1.5), '
                 'e_t ~ 0.6 N(-0.2, 0.08²) + 0.4 N(0.3, 0.08²). na = nb = 2; 2000 training and 500 test steps '
                 f'(seed {args.seed}). EBM trained by {loss_name} '
                 f'(M = {args.num_samples}, sigma = {list(DEFAULTS["sigmas"])}), the MLP by MSE, both '
                 f'{args.iters} Adam steps.\n\n')
        fh.write(table + '\n\n')
        fh.write('The EBM mode is the most likely value of a bimodal density, not its mean, so its RMSE is '
                 'above the MSE-trained MLP\'s by construction; the EBM density mean matches the MLP. NLL is per '
                 f'step, nats (EBM: f normalised on a {DEFAULTS["grid_points"]}-point y-grid, interpolated at '
                 'y_t).\n\n')
        fh.write(f'Command (CPU, one thread, {minutes:.1f} min):\n\n    {command}\n')
        if has_fig:
            fh.write('\n![predictive density over time](narx.png)\n')


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)  # small nets: more threads only fight on shared cores
    over = dict(iters=args.iters, loss=args.loss, num_samples=args.num_samples)
    t0 = time.time()
    data = make_data(seed=args.seed)
    ebm = train('ebm', data['x_train'], data['y_train'], seed=args.seed, **over)
    mlp = train('mlp', data['x_train'], data['y_train'], seed=args.seed, **over)
    res = evaluate(ebm, mlp, data, **over)
    minutes = (time.time() - t0) / 60
    table = markdown_table(res)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    has_fig = plot(ebm, mlp, data, os.path.join(args.out, 'narx.png'), **over)
    command = command_line('tools.benchmarks.narx', argv)
    write_report(os.path.join(args.out, 'narx.md'), args, table, command.strip(), minutes, has_fig)
    return res


if __name__ == '__main__':
    main()
