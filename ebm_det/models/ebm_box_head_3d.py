"""f(x, y) for 7-D LiDAR boxes: a rotated BEV grid at the box footprint + z/h encodings -> score."""
from typing import Optional, Sequence

import torch
import torch.nn as nn
from mmdet3d.registry import MODELS
from torch import Tensor

from ebm_det.core import LOSSES, LiDARBoxCodec, rotated_bev_grid_sample, sampling_layout
from .base_ebm_head import BaseEBMHead

for _cls in LOSSES.values():  # loss=dict(type='NCELoss', ...) inside mmdet3d configs
    MODELS.register_module(module=_cls)


@MODELS.register_module()
class EBMBoxHead3D(BaseEBMHead):
    """The energy-based 3D box scorer of ebms_3dod, on a BEV feature map.

    Boxes are mmdet3d LiDAR boxes (x, y, z, l, w, h, yaw) in metres and radians
    (``LiDARBoxCodec``).

    Args:
        in_channels: channels of the BEV map (the neck's output, levels concatenated).
        bev_range: (x_min, y_min, x_max, y_max) metres covered by the BEV map (the detector's
            point-cloud range).
        reduced_channels: optional 1x1 conv before sampling, once per frame.
        grid_size: (n_w, n_l) points of the rotated grid across the width and along the length.
        zh_channels: width of the 1 -> c -> c MLPs that encode z and h.
        fc_channels: width of the two hidden fc layers.
        num_classes: 1 for a class-agnostic score, else one score per class.
        normalized_space: False (the paper's): noise and steps in metres and radians; True: in
            ``Box3DSpace(normalized=True)`` (centre offsets over the box diagonal, log sizes).
        loss: an EBM loss config (``BaseEBMHead``); default ``DEFAULT_LOSS``: ``NCELoss`` with its
            defaults (ebms_3dod's M and K = 3 noise).
        max_gt_per_batch: at most this many GT boxes (chosen at random) feed the loss per batch
            (default 256, ``BaseEBMHead.DEFAULT_MAX_GT_PER_BATCH``, bounding training memory in
            crowded scenes; None: all, unbounded).
    """
    DEFAULT_LOSS = dict(type='NCELoss')

    def __init__(self,
                 in_channels: int,
                 bev_range: Sequence[float],
                 reduced_channels: Optional[int] = None,
                 grid_size: Sequence[int] = (4, 7),
                 zh_channels: int = 16,
                 fc_channels: int = 1024,
                 num_classes: int = 1,
                 normalized_space: bool = False,
                 loss: Optional[dict] = None,
                 max_gt_per_batch: Optional[int] = BaseEBMHead.DEFAULT_MAX_GT_PER_BATCH,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(LiDARBoxCodec(normalized=normalized_space), loss, self.DEFAULT_LOSS, MODELS,
                         max_gt_per_batch, init_cfg)
        self.bev_range = tuple(bev_range)
        self.grid_size = tuple(grid_size)
        self.num_classes = num_classes
        self.reduce = nn.Conv2d(in_channels, reduced_channels, 1) if reduced_channels else None
        channels = (reduced_channels or in_channels) * grid_size[0] * grid_size[1]

        def mlp():
            return nn.Sequential(nn.Linear(1, zh_channels), nn.ReLU(inplace=True), nn.Linear(zh_channels, zh_channels),
                                 nn.ReLU(inplace=True))

        self.z_mlp, self.h_mlp = mlp(), mlp()
        self.fcs = nn.Sequential(
            nn.Linear(channels + 2 * zh_channels, fc_channels), nn.ReLU(inplace=True),
            nn.Linear(fc_channels, fc_channels), nn.ReLU(inplace=True))
        self.fc_score = nn.Linear(fc_channels, num_classes)

    def prepare_features(self, feats) -> Tensor:
        """The BEV map: neck levels (same resolution) concatenated, in the head's dtype, then
        optionally reduced."""
        bev = torch.cat(list(feats), dim=1) if isinstance(feats, (list, tuple)) else feats
        bev, = self._features_as_head_dtype([bev])
        return sampling_layout(self.reduce(bev) if self.reduce is not None else bev)

    def class_scores(self, bev: Tensor, boxes: Tensor, batch_idx: Tensor) -> Tensor:
        """(N, 7) LiDAR boxes on the prepared ``bev`` (B, C, H, W) -> (N, C) scores."""
        grid = rotated_bev_grid_sample(bev, boxes, batch_idx, self.bev_range, self.grid_size)
        h = torch.cat([grid.flatten(1), self.z_mlp(boxes[:, 2:3].to(grid)), self.h_mlp(boxes[:, 5:6].to(grid))], 1)
        return self.fc_score(self.fcs(h))
