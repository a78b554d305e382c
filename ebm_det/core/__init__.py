"""The energy-based regression method in plain PyTorch (no OpenMMLab import)."""
from .box_codecs import Box2DCodec, BoxCodec, LiDARBoxCodec
from .box_spaces import Box3DSpace, IdentitySpace, RelativeBox2DSpace, check_finite, wrap_angle
from .losses import (LOSSES, DSMLoss, EBMLoss, GaussianLogProb, KLDISLoss, MLISLoss, MLMCMCLoss, NCELoss, NCEPlusLoss,
                     build_loss, dsm_loss, kld_is_loss, langevin_samples, ml_is_loss, ml_mcmc_loss, nce_loss,
                     nce_plus_loss)
from .noise import GMMNoise
from .prroi_pool import PrRoIPoolTables, prroi_pool, roi_prroi_pool
from .refine import (RefinableHead, RefinedBoxes, RefineResult, group_for_scoring, refine_boxes,
                     refine_by_gradient_ascent, refine_on_head, score_on_head, select_for_refinement)
from .sampling import roi_grid_sample, rotated_bev_grid_sample, sampling_layout, sort_by_group
from .settings import RefineConfig, strict_fields
from .static_refine import StaticRefined, flatten_pyramid, map_fpn_levels, static_refine_boxes

__all__ = [
    'Box2DCodec', 'BoxCodec', 'LiDARBoxCodec', 'Box3DSpace', 'IdentitySpace', 'RelativeBox2DSpace', 'check_finite',
    'wrap_angle', 'LOSSES', 'DSMLoss', 'EBMLoss', 'GaussianLogProb', 'KLDISLoss', 'MLISLoss', 'MLMCMCLoss', 'NCELoss',
    'NCEPlusLoss', 'build_loss', 'dsm_loss', 'kld_is_loss', 'langevin_samples', 'ml_is_loss', 'ml_mcmc_loss',
    'nce_loss', 'nce_plus_loss', 'GMMNoise', 'RefinableHead', 'RefinedBoxes', 'RefineResult', 'group_for_scoring',
    'refine_boxes', 'refine_on_head', 'score_on_head',
    'refine_by_gradient_ascent', 'select_for_refinement', 'roi_grid_sample', 'rotated_bev_grid_sample',
    'sampling_layout', 'sort_by_group', 'RefineConfig', 'strict_fields', 'PrRoIPoolTables', 'prroi_pool',
    'roi_prroi_pool', 'StaticRefined', 'flatten_pyramid', 'map_fpn_levels', 'static_refine_boxes'
]
