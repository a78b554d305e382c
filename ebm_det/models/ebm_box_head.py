"""f(x, y) for 4-D image boxes: RoI features sampled at y -> fc -> fc -> a score per class."""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
from mmdet.registry import MODELS
from torch import Tensor

from ebm_det.core import Box2DCodec, PrRoIPoolTables, roi_grid_sample, roi_prroi_pool, sampling_layout, sort_by_group
from .base_ebm_head import BaseEBMHead


@MODELS.register_module()
class EBMBoxHead(BaseEBMHead):
    """The energy-based box scorer of Gustafsson et al. (ECCV 2020), on an FPN.

    Boxes are (x1, y1, x2, y2) in network-input pixels; noise and refinement steps are taken in
    (cx/w0, cy/h0, log w, log h) (``Box2DCodec``). A box's FPN level is chosen by mmdet's
    ``SingleRoIExtractor`` rule once and held fixed while it is refined.

    Args:
        num_classes: scores per box; the loss reads the GT class, refinement the predicted one.
        in_channels: channels of the neck's features.
        reduced_channels: if set, a 1x1 conv reduces the features to this many channels, once
            per image, before sampling (cheaper sampling and a smaller first fc).
        roi_size: output bins per side of the RoI sampler (7).
        pooling: how a bin's feature is computed, in training and refinement alike:
            'grid_sample' (default): RoIAlign(aligned=True) from ``sampling_ratio``^2 bilinear
            samples (``roi_grid_sample``); 'prroi': Precise RoI Pooling, the exact integral of the
            bilinear map over the bin (``roi_prroi_pool``; the ECCV paper's pooling; its box
            gradient is continuous).
        sampling_ratio: bilinear samples per bin per side (2; 'grid_sample' only).
        featmap_strides: strides of the levels used (P2-P5: 4, 8, 16, 32).
        finest_scale: level mapping as in mmdet's ``SingleRoIExtractor`` (56).
        fc_channels: width of the two hidden fc layers (1024).
        dropout: p of dropout after each hidden fc layer in training (0: none, the paper's head); a
            regulariser for small training sets. Refinement runs the head in eval mode (no dropout).
        class_agnostic: one score for every class.
        loss: an EBM loss config (``BaseEBMHead``); default ``DEFAULT_LOSS``: ``NCEPlusLoss`` with
            its defaults (the papers' M, beta and K = 3 noise).
        min_box_size: ground truth and detections narrower or lower than this (input pixels) are
            neither trained on nor refined (``Box2DCodec.min_size``).
        max_gt_per_batch: at most this many GT boxes (chosen at random) feed the loss per batch
            (default 256, ``BaseEBMHead.DEFAULT_MAX_GT_PER_BATCH``, bounding training memory in
            crowded scenes; None: all, unbounded).
    """
    DEFAULT_LOSS = dict(type='NCEPlusLoss')
    POOLINGS = ('grid_sample', 'prroi')

    def __init__(self,
                 num_classes: int,
                 in_channels: int = 256,
                 reduced_channels: Optional[int] = None,
                 roi_size: int = 7,
                 pooling: str = 'grid_sample',
                 sampling_ratio: int = 2,
                 featmap_strides: Sequence[int] = (4, 8, 16, 32),
                 finest_scale: int = 56,
                 fc_channels: int = 1024,
                 dropout: float = 0.0,
                 class_agnostic: bool = False,
                 loss: Optional[dict] = None,
                 min_box_size: float = 1.0,
                 max_gt_per_batch: Optional[int] = BaseEBMHead.DEFAULT_MAX_GT_PER_BATCH,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(Box2DCodec(min_box_size), loss, self.DEFAULT_LOSS, MODELS, max_gt_per_batch, init_cfg)
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        if pooling not in self.POOLINGS:
            raise ValueError(f'pooling must be one of {self.POOLINGS}, got {pooling!r}')
        self.roi_size = roi_size
        self.pooling = pooling
        self.sampling_ratio = sampling_ratio
        self.featmap_strides = tuple(featmap_strides)
        # mmdet's own level mapping (its RoIAlign layers are not used: they give no box gradient)
        self.level_mapper = SingleRoIExtractor(
            roi_layer=dict(type='RoIAlign', output_size=roi_size, sampling_ratio=sampling_ratio, aligned=True),
            out_channels=in_channels, featmap_strides=list(featmap_strides), finest_scale=finest_scale)
        self.reduce = nn.Conv2d(in_channels, reduced_channels, 1) if reduced_channels else None
        channels = reduced_channels or in_channels
        if not 0 <= dropout < 1:
            raise ValueError(f'dropout must be in [0, 1), got {dropout!r}')
        # the activations hold no weights, so checkpoints load with or without dropout
        act = (lambda: nn.Sequential(nn.ReLU(inplace=True), nn.Dropout(dropout))) if dropout else \
            (lambda: nn.ReLU(inplace=True))
        self.fcs = nn.Sequential(
            nn.Linear(channels * roi_size * roi_size, fc_channels), act(), nn.Linear(fc_channels, fc_channels), act())
        self.fc_score = nn.Linear(fc_channels, 1 if class_agnostic else num_classes)

    def prepare_features(self, feats: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """The levels this head samples from, in the head's dtype, channel-reduced once per image
        if configured; for 'prroi', their integral tables (built once, pooled at every step)."""
        feats = self._features_as_head_dtype(feats[:len(self.featmap_strides)])
        feats = tuple(self.reduce(f) for f in feats) if self.reduce is not None else feats
        if self.pooling == 'prroi':
            return tuple(PrRoIPoolTables(f) for f in feats)
        return tuple(sampling_layout(f) for f in feats)

    def map_levels(self, boxes: Tensor) -> Tensor:
        """(N, 4) boxes -> (N,) FPN level, mmdet's rule; fixed for a box while it is refined."""
        rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes.detach()], dim=1)
        return self.level_mapper.map_roi_levels(rois, len(self.featmap_strides))

    def box_context(self, boxes: Tensor, batch_idx: Tensor) -> Dict[str, Tensor]:
        return dict(levels=self.map_levels(boxes))

    def group_order(self, feats, batch_idx: Tensor, context: Dict[str, Tensor]) -> Tensor:
        # grouped by (level, image), every sampling call skips its own sort and gather
        return sort_by_group(context['levels'], batch_idx, feats[0].shape[0])[0]

    def class_scores(self, feats: Sequence[Tensor], boxes: Tensor, batch_idx: Tensor, levels: Tensor) -> Tensor:
        """(N, 4) input-pixel boxes on ``prepare_features`` output -> (N, C) scores."""
        if self.pooling == 'prroi':
            rois = roi_prroi_pool(feats, boxes, batch_idx, levels, self.featmap_strides, self.roi_size)
        else:
            rois = roi_grid_sample(feats, boxes, batch_idx, levels, self.featmap_strides, self.roi_size,
                                   self.sampling_ratio)
        return self.fc_score(self.fcs(rois.flatten(1)))
