"""The six training objectives for f(x, y), one function each (Gustafsson et al., BMVC 2020).

Notation: for each of N ground truths y_i, y_0 is the positive and y_1..y_M are samples from the
proposal q(. | y_i) (``GMMNoise``); ``scores`` are f(x_i, y_m) and ``log_q`` are log q(y_m | y_i).
Every Monte-Carlo sum is a logsumexp. All return a scalar mean over the N ground truths.
"""
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .noise import GMMNoise

ScoreFn = Callable[[Tensor], Tensor]


def nce_plus_loss(scores: Tensor, log_q: Tensor) -> Tensor:
    """NCE+ (and NCE): ranking noise-contrastive estimation.

    J_i = log softmax_m (f(x_i, y_m) - log q(y_m | y_i)) at m = 0
    loss = -mean_i J_i

    For NCE+ the positive y_0 = y_i + nu with nu ~ q scaled by beta (its log q is taken under the
    unscaled mixture); for NCE, y_0 = y_i (beta = 0).

    Args:
        scores: (N, M + 1), column 0 the positive.
        log_q: (N, M + 1).
    """
    return -F.log_softmax(scores - log_q, dim=-1)[:, 0].mean()


def nce_loss(scores: Tensor, log_q: Tensor) -> Tensor:
    """NCE: ``nce_plus_loss`` with the ground truth itself as the positive (beta = 0)."""
    return nce_plus_loss(scores, log_q)


def _log_mean_exp_ratio(scores: Tensor, log_q: Tensor) -> Tensor:
    """Importance-sampled log Z(x_i) = log mean_m exp(f_m - log q_m): (N, M) -> (N,)."""
    return torch.logsumexp(scores - log_q, dim=-1) - math.log(scores.shape[-1])


def ml_is_loss(gt_scores: Tensor, scores: Tensor, log_q: Tensor) -> Tensor:
    """ML with importance sampling: -log p(y_i|x_i) ~= log mean_m exp(f_m - log q_m) - f(x_i, y_i).

    Args:
        gt_scores: (N,) f(x_i, y_i).
        scores: (N, M) at the proposal samples.
        log_q: (N, M).
    """
    return (_log_mean_exp_ratio(scores, log_q) - gt_scores).mean()


def kld_is_loss(scores: Tensor, log_q: Tensor, log_p_label: Tensor) -> Tensor:
    """KL divergence to a label density p(y | y_i), with importance sampling (PrDiMP's loss).

    KL(p || p_theta) + const ~= log mean_m exp(f_m - log q_m) - mean_m f_m p(y_m | y_i) / q(y_m | y_i)

    Args:
        scores: (N, M).
        log_q: (N, M).
        log_p_label: (N, M) log p(y_m | y_i), e.g. a Gaussian of sigma 0.0225.
    """
    weights = (log_p_label - log_q).exp()
    return (_log_mean_exp_ratio(scores, log_q) - (scores * weights).mean(-1)).mean()


def _grad_in_y(score_fn: ScoreFn, y: Tensor, create_graph: bool) -> Tensor:
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        return torch.autograd.grad(score_fn(y).sum(), y, create_graph=create_graph)[0]


def dsm_loss(score_fn: ScoreFn, centers: Tensor, samples: Tensor, sigma: float) -> Tensor:
    """Denoising score matching with a Gaussian of scale sigma (sigma^2-weighted, Song & Ermon).

    loss = mean_{i,m} sigma^2 / 2 * || grad_y f(x_i, y_m) + (y_m - y_i) / sigma^2 ||^2

    Args:
        score_fn: maps (N, M, D) samples to (N, M) scores, differentiably.
        centers: (N, D) ground truths y_i.
        samples: (N, M, D) drawn from N(y_i, sigma^2 I).
    """
    grad = _grad_in_y(score_fn, samples, create_graph=True)
    target = -(samples - centers[:, None, :]) / sigma**2
    return 0.5 * sigma**2 * ((grad - target)**2).sum(-1).mean()


def langevin_samples(score_fn: ScoreFn, init: Tensor, num_steps: int = 8, step_size: float = 1e-5,
                     generator: torch.Generator = None) -> Tensor:
    """L steps of unadjusted Langevin dynamics on f: y <- y + a/2 grad f + sqrt(a) eps.

    Args:
        init: (N, M, D) starting points. Returns detached samples of the same shape.
    """
    y = init.detach()
    for _ in range(num_steps):
        eps = torch.randn(y.shape, dtype=y.dtype, device=y.device, generator=generator)
        y = y + 0.5 * step_size * _grad_in_y(score_fn, y, create_graph=False) + math.sqrt(step_size) * eps
    return y.detach()


def ml_mcmc_loss(gt_scores: Tensor, sample_scores: Tensor) -> Tensor:
    """ML with MCMC (contrastive divergence): mean_m f(x_i, y_m^-) - f(x_i, y_i).

    ``sample_scores`` (N, M) are f at samples from ``langevin_samples`` (the samples are detached,
    the scores are not); ``gt_scores`` (N,).
    """
    return (sample_scores.mean(-1) - gt_scores).mean()


def ebm_loss(method: str,
             score_fn: ScoreFn,
             centers: Tensor,
             noise,
             num_samples: int = 128,
             beta: float = 0.1,
             label_sigma: float = 0.0225,
             dsm_sigma: float = 0.075,
             mcmc_steps: int = 8,
             mcmc_step_size: float = 1e-5,
             project: Callable[[Tensor], Tensor] = None,
             generator: torch.Generator = None) -> Tensor:
    """Draw the samples a method needs around ``centers`` and return its loss.

    This is the one place that pairs each objective with its samples, so every head (2D, 3D,
    toy regression) selects the method by name.

    Args:
        method: 'nce_plus', 'nce', 'ml_is', 'kld_is', 'dsm' or 'ml_mcmc'.
        score_fn: (N, M, D) points in the box space -> (N, M) scores f(x_i, y).
        centers: (N, D) ground truths in the box space.
        noise: a ``GMMNoise`` proposal (unused by 'dsm').
        num_samples: M, the number of scored points per ground truth (NCE/NCE+: the positive
            plus M - 1 noise samples).
        project: maps samples back onto the valid set (e.g. ``Box3DSpace.project``).
    """
    project = project or (lambda y: y)
    n = centers.shape[0]

    def draw(num: int, scale: float = 1.0) -> Tensor:
        return project(noise.sample(centers, num, scale=scale, generator=generator))

    if method in ('nce_plus', 'nce'):
        pos = centers[:, None] if method == 'nce' else draw(1, beta)
        y = torch.cat([pos, draw(num_samples - 1)], dim=1)
        return nce_plus_loss(score_fn(y), noise.log_prob(y, centers))
    if method == 'ml_is':
        y = draw(num_samples)
        scores = score_fn(torch.cat([centers[:, None], y], dim=1))
        return ml_is_loss(scores[:, 0], scores[:, 1:], noise.log_prob(y, centers))
    if method == 'kld_is':
        y = draw(num_samples)
        log_p = GaussianLogProb(label_sigma)(y, centers)
        return kld_is_loss(score_fn(y), noise.log_prob(y, centers), log_p)
    if method == 'dsm':
        eps = torch.randn((n, num_samples, centers.shape[-1]), dtype=centers.dtype,
                          device=centers.device, generator=generator)
        return dsm_loss(score_fn, centers, centers[:, None] + dsm_sigma * eps, dsm_sigma)
    if method == 'ml_mcmc':
        y = langevin_samples(score_fn, draw(num_samples), mcmc_steps, mcmc_step_size, generator)
        scores = score_fn(torch.cat([centers[:, None], project(y)], dim=1))
        return ml_mcmc_loss(scores[:, 0], scores[:, 1:])
    raise ValueError(f"unknown EBM training method '{method}'; choose one of "
                     "'nce_plus', 'nce', 'ml_is', 'kld_is', 'dsm', 'ml_mcmc'")


class GaussianLogProb(GMMNoise):
    """log N(samples; centers, sigma^2 I) as a callable: (N, M, D), (N, D) -> (N, M); the
    one-component ``GMMNoise``."""

    def __init__(self, sigma: float) -> None:
        super().__init__([sigma])
        self.sigma = sigma

    def __call__(self, samples: Tensor, centers: Tensor) -> Tensor:
        return self.log_prob(samples, centers)
