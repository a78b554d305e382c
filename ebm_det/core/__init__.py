"""The energy-based regression method in plain PyTorch (no OpenMMLab import)."""
from .box_spaces import Box3DSpace, IdentitySpace, RelativeBox2DSpace, check_finite, wrap_angle
from .losses import (GaussianLogProb, dsm_loss, ebm_loss, kld_is_loss, langevin_samples, ml_is_loss, ml_mcmc_loss, nce_loss,
                     nce_plus_loss)
from .noise import GMMNoise
from .refine import RefineResult, refine_by_gradient_ascent
from .sampling import roi_grid_sample, rotated_bev_grid_sample, sampling_layout, sort_by_group

__all__ = [
    'Box3DSpace', 'IdentitySpace', 'RelativeBox2DSpace', 'check_finite', 'wrap_angle', 'dsm_loss',
    'kld_is_loss', 'langevin_samples', 'ml_is_loss', 'ml_mcmc_loss', 'nce_loss', 'nce_plus_loss',
    'GMMNoise', 'GaussianLogProb', 'ebm_loss', 'RefineResult', 'refine_by_gradient_ascent', 'roi_grid_sample',
    'rotated_bev_grid_sample', 'sampling_layout', 'sort_by_group'
]
