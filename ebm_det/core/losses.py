"""The six training objectives for f(x, y) (Gustafsson et al., BMVC 2020): the math as one function
each, and one small class each (``NCEPlusLoss``, ...) that draws the samples its method needs.

Notation: for each of N ground truths y_i, y_0 is the positive and y_1..y_M are samples from the
proposal q(. | y_i) (``GMMNoise``); ``scores`` are f(x_i, y_m) and ``log_q`` are log q(y_m | y_i).
Every Monte-Carlo sum is a logsumexp. All return a scalar mean over the N ground truths.
"""
import dataclasses
import math
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .noise import GMMNoise
from .settings import strict_fields

ScoreFn = Callable[[Tensor], Tensor]
ProjectFn = Optional[Callable[[Tensor], Tensor]]


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


@dataclasses.dataclass
class EBMLoss:
    """Base class of the six training objectives: draws the samples its method needs around each
    ground truth and returns ``loss_weight`` x the loss. One small class per method (configs
    select it by ``type``); the math is in the functions above.

    Args:
        num_samples: M, the number of scored points per ground truth (NCE/NCE+: the positive
            plus M - 1 noise samples); 128, the papers' (every head's default: its config names
            only the loss ``type``).
        sigmas: (K, D) (or (K,)) standard deviations of the proposal mixture q in the box space;
            None takes the box type's default (``BoxCodec.default_sigmas``, the NCE/NCE+ noise of
            the papers). Unused by ``DSMLoss``.
        loss_weight: multiplies the loss.

    Call: ``loss(score_fn, centers, noise, project=None, generator=None) -> Tensor ()``.
        score_fn: (N, M, D) points in the box space -> (N, M) scores f(x_i, y).
        centers: (N, D) ground truths in the box space.
        noise: the ``GMMNoise`` proposal built from ``sigmas``.
        project: maps samples back onto the valid set (e.g. ``Box3DSpace.project``).

    Raises:
        ValueError: an unknown argument or a value outside its range (when built).
    """
    num_samples: int = 128
    sigmas: Optional[Sequence] = None
    loss_weight: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or self.num_samples < 2:
            raise ValueError(f'{type(self).__name__}: num_samples must be an integer >= 2, got {self.num_samples!r}')
        if self.sigmas is not None:
            GMMNoise(self.sigmas)  # raises ValueError for a bad shape or a non-positive sigma
        if not math.isfinite(self.loss_weight):
            raise ValueError(f'{type(self).__name__}: loss_weight must be finite, got {self.loss_weight!r}')

    def __call__(self, score_fn: ScoreFn, centers: Tensor, noise: GMMNoise, project: ProjectFn = None,
                 generator: torch.Generator = None) -> Tensor:
        project = project or (lambda y: y)
        return self.loss_weight * self.compute(score_fn, centers, noise, project, generator)

    def compute(self, score_fn: ScoreFn, centers: Tensor, noise: GMMNoise, project: ProjectFn,
                generator: Optional[torch.Generator]) -> Tensor:
        raise NotImplementedError


def _draw(noise: GMMNoise, centers: Tensor, num: int, project: ProjectFn, generator, scale: float = 1.0) -> Tensor:
    return project(noise.sample(centers, num, scale=scale, generator=generator))


@strict_fields
@dataclasses.dataclass
class NCEPlusLoss(EBMLoss):
    """NCE+ (BMVC 2020): the positive is y_i + nu, nu ~ q with every sigma times ``beta`` (0.1)."""
    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta >= 0:
            raise ValueError(f'NCEPlusLoss: beta must be >= 0, got {self.beta!r}')

    def positive(self, noise, centers, project, generator) -> Tensor:
        if self.beta == 0:
            return centers[:, None]
        return _draw(noise, centers, 1, project, generator, self.beta)

    def compute(self, score_fn, centers, noise, project, generator):
        y = torch.cat([self.positive(noise, centers, project, generator),
                       _draw(noise, centers, self.num_samples - 1, project, generator)], dim=1)
        return nce_plus_loss(score_fn(y), noise.log_prob(y, centers))


@strict_fields
@dataclasses.dataclass
class NCELoss(NCEPlusLoss):
    """NCE: NCE+ with the ground truth itself as the positive (beta = 0; ebms_3dod's loss)."""
    beta: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta != 0:
            raise ValueError('NCELoss has beta = 0 by definition; use NCEPlusLoss for beta > 0')


@strict_fields
@dataclasses.dataclass
class MLISLoss(EBMLoss):
    """ML with importance sampling: -log p(y_i|x_i) ~= log mean_m exp(f_m - log q_m) - f(x_i, y_i)."""

    def compute(self, score_fn, centers, noise, project, generator):
        y = _draw(noise, centers, self.num_samples, project, generator)
        scores = score_fn(torch.cat([centers[:, None], y], dim=1))
        return ml_is_loss(scores[:, 0], scores[:, 1:], noise.log_prob(y, centers))


@strict_fields
@dataclasses.dataclass
class KLDISLoss(EBMLoss):
    """KL divergence to a Gaussian label density of sigma ``label_sigma`` (0.0225), importance
    sampled (PrDiMP's loss)."""
    label_sigma: float = 0.0225

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.label_sigma > 0:
            raise ValueError(f'KLDISLoss: label_sigma must be positive, got {self.label_sigma!r}')

    def compute(self, score_fn, centers, noise, project, generator):
        y = _draw(noise, centers, self.num_samples, project, generator)
        log_p = GaussianLogProb(self.label_sigma)(y, centers)
        return kld_is_loss(score_fn(y), noise.log_prob(y, centers), log_p)


@strict_fields
@dataclasses.dataclass
class DSMLoss(EBMLoss):
    """Denoising score matching with a Gaussian of scale ``sigma`` (0.075); M samples per ground
    truth. The proposal noise is not used."""
    sigma: float = 0.075

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.sigma > 0:
            raise ValueError(f'DSMLoss: sigma must be positive, got {self.sigma!r}')

    def compute(self, score_fn, centers, noise, project, generator):
        eps = torch.randn((centers.shape[0], self.num_samples, centers.shape[-1]), dtype=centers.dtype,
                          device=centers.device, generator=generator)
        return dsm_loss(score_fn, centers, centers[:, None] + self.sigma * eps, self.sigma)


@strict_fields
@dataclasses.dataclass
class MLMCMCLoss(EBMLoss):
    """ML with MCMC: negatives from ``mcmc_steps`` (L = 8) Langevin steps of size
    ``mcmc_step_size`` (alpha = 1e-5), started at proposal samples."""
    mcmc_steps: int = 8
    mcmc_step_size: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.mcmc_steps, int) or self.mcmc_steps < 0 or not self.mcmc_step_size > 0:
            raise ValueError(f'MLMCMCLoss: mcmc_steps must be an integer >= 0 and mcmc_step_size positive, got '
                             f'{self.mcmc_steps!r}, {self.mcmc_step_size!r}')

    def compute(self, score_fn, centers, noise, project, generator):
        init = _draw(noise, centers, self.num_samples, project, generator)
        y = langevin_samples(score_fn, init, self.mcmc_steps, self.mcmc_step_size, generator)
        scores = score_fn(torch.cat([centers[:, None], project(y)], dim=1))
        return ml_mcmc_loss(scores[:, 0], scores[:, 1:])


LOSSES = {cls.__name__: cls for cls in (NCEPlusLoss, NCELoss, MLISLoss, KLDISLoss, DSMLoss, MLMCMCLoss)}


def build_loss(cfg: Union[dict, EBMLoss]) -> EBMLoss:
    """An ``EBMLoss`` from ``dict(type='NCEPlusLoss', ...)`` (or one already built).

    Raises:
        ValueError: no ``type``, an unknown type or argument, a bad value, or the old ``method=``
            form.
    """
    if isinstance(cfg, EBMLoss):
        return cfg
    cfg = dict(cfg)
    if 'method' in cfg:
        raise ValueError(f"loss=dict(method={cfg['method']!r}, ...) is no longer supported: name the loss class, "
                         f"e.g. loss=dict(type='NCEPlusLoss'); types: {sorted(LOSSES)}")
    if 'type' not in cfg:
        raise ValueError(f"EBM loss config {cfg!r} has no 'type': name the loss, e.g. dict(type='NCEPlusLoss'); "
                         f"types: {sorted(LOSSES)}")
    name = cfg.pop('type')
    if isinstance(name, str):
        name = name.split('.')[-1]  # a registry scope prefix ('mmdet.NCEPlusLoss')
    if name not in LOSSES:
        raise ValueError(f'unknown EBM loss type {name!r}; choose one of {sorted(LOSSES)}')
    return LOSSES[name](**cfg)


class GaussianLogProb(GMMNoise):
    """log N(samples; centers, sigma^2 I) as a callable: (N, M, D), (N, D) -> (N, M); the
    one-component ``GMMNoise``."""

    def __init__(self, sigma: float) -> None:
        super().__init__([sigma])
        self.sigma = sigma

    def __call__(self, samples: Tensor, centers: Tensor) -> Tensor:
        return self.log_prob(samples, centers)
