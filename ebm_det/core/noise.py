"""The K-component Gaussian mixture proposal q(y | y_i) used by every Monte-Carlo loss."""
import math
from typing import Sequence, Union

import torch
from torch import Tensor

from .box_spaces import wrap_angle


class GMMNoise:
    """An equal-weight mixture of K axis-aligned Gaussians centred on given points.

    Args:
        sigmas: (K, D) standard deviations, one row per component; a (K,) sequence applies the
            same sigma to every dimension (D is then taken from the centres).
        periodic_dims: dimensions (such as yaw) whose differences are wrapped to [-pi, pi)
            before the density is evaluated, so a sample across the wrap keeps its density.
    """

    def __init__(self, sigmas: Union[Sequence, Tensor], periodic_dims: Sequence[int] = ()) -> None:
        self.sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
        if self.sigmas.dim() == 1:
            self.sigmas = self.sigmas[:, None]
        if self.sigmas.dim() != 2 or not bool((self.sigmas > 0).all()):
            raise ValueError('sigmas must be positive, shaped (K,) or (K, D)')
        self.periodic_dims = tuple(periodic_dims)

    @property
    def num_components(self) -> int:
        return self.sigmas.shape[0]

    def _sigmas_like(self, centers: Tensor, scale: float = 1.0) -> Tensor:
        sig = (self.sigmas * scale).to(centers)
        return sig.expand(sig.shape[0], centers.shape[-1])

    def sample(self, centers: Tensor, num: int, scale: float = 1.0,
               generator: torch.Generator = None) -> Tensor:
        """Draw ``num`` samples around each centre.

        Args:
            centers: (N, D).
            num: samples per centre.
            scale: multiplies every sigma (NCE+ draws its positive with scale = beta).
        Returns:
            Tensor (N, num, D). The component of each sample is uniform over the K components.
        """
        n, d = centers.shape
        sig = self._sigmas_like(centers, scale)
        comp = torch.randint(sig.shape[0], (n, num), device=centers.device, generator=generator)
        eps = torch.randn((n, num, d), device=centers.device, dtype=centers.dtype, generator=generator)
        return centers[:, None, :] + eps * sig[comp]

    def log_prob(self, samples: Tensor, centers: Tensor) -> Tensor:
        """log q(samples | centers) under the (unscaled) mixture.

        Args:
            samples: (N, M, D).
            centers: (N, D).
        Returns:
            Tensor (N, M).
        """
        diff = samples - centers[:, None, :]
        if self.periodic_dims:
            idx = list(self.periodic_dims)
            diff = diff.clone()
            diff[..., idx] = wrap_angle(diff[..., idx])
        sig = self._sigmas_like(samples)  # (K, D)
        z = diff[..., None, :] / sig  # (N, M, K, D)
        log_comp = -0.5 * (z**2).sum(-1) - sig.log().sum(-1) - 0.5 * samples.shape[-1] * math.log(2 * math.pi)
        return torch.logsumexp(log_comp, dim=-1) - math.log(sig.shape[0])

