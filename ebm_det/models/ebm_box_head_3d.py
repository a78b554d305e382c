"""f(x, y) for 7-D LiDAR boxes: a rotated BEV grid at the box footprint + z/h encodings -> score."""
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from mmdet3d.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor

from ebm_det.core import (Box3DSpace, GMMNoise, ebm_loss, refine_by_gradient_ascent, rotated_bev_grid_sample,
                          sampling_layout)


def _paper_sigmas_3d() -> List[List[float]]:
    """ebms_3dod's K=3 noise, in metres/radians, x 1.25: (x, y, z, l, w, h, yaw) per component."""
    base = [(0.05, 0.025, 0.0125), (0.1, 0.05, 0.025), (0.2, 0.1, 0.05)]
    return [[1.25 * v for v in (c, c, s, s, s, s, r)] for c, s, r in base]


@MODELS.register_module()
class EBMBoxHead3D(BaseModule):
    """The energy-based 3D box scorer of ebms_3dod, on a BEV feature map.

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
        loss: dict(method='nce' (default, as ebms_3dod) | 'nce_plus' | ..., sigmas (K, 7),
            num_samples, beta, loss_weight).
    """

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
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
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
        self.space = Box3DSpace(normalized=normalized_space)
        cfg = dict(method='nce', num_samples=128, loss_weight=1.0)
        cfg.update(loss or {})
        self.method = cfg.pop('method')
        self.loss_weight = cfg.pop('loss_weight')
        self.noise = GMMNoise(cfg.pop('sigmas', _paper_sigmas_3d()), periodic_dims=self.space.periodic_dims)
        self.loss_cfg = cfg

    def init_weights(self) -> None:
        super().init_weights()
        nn.init.normal_(self.fc_score.weight, std=0.001)
        nn.init.zeros_(self.fc_score.bias)

    def prepare_features(self, feats) -> Tensor:
        """The BEV map: neck levels (same resolution) concatenated, then optionally reduced."""
        bev = torch.cat(list(feats), dim=1) if isinstance(feats, (list, tuple)) else feats
        return sampling_layout(self.reduce(bev) if self.reduce is not None else bev)

    def score(self, bev: Tensor, boxes: Tensor, batch_idx: Tensor, labels: Tensor) -> Tensor:
        """f(x, y): bev (B, C, H, W); boxes (N, 7) LiDAR (x, y, z, l, w, h, yaw); -> (N,)."""
        grid = rotated_bev_grid_sample(bev, boxes, batch_idx, self.bev_range, self.grid_size)
        h = torch.cat([grid.flatten(1), self.z_mlp(boxes[:, 2:3].to(grid)), self.h_mlp(boxes[:, 5:6].to(grid))], 1)
        out = self.fc_score(self.fcs(h))
        return out[:, 0] if self.num_classes == 1 else out.gather(1, labels.long()[:, None])[:, 0]

    def loss(self, feats, gt_boxes: List[Tensor], gt_labels: List[Tensor]) -> dict:
        """gt_boxes: per frame (n_i, 7) LiDAR box tensors; gt_labels: per frame (n_i,)."""
        bev = self.prepare_features(feats)
        boxes = torch.cat(list(gt_boxes)).to(bev.device, torch.float32)[:, :7]
        labels = torch.cat(list(gt_labels)).to(bev.device)
        batch_idx = torch.cat([torch.full((len(b), ), i, device=bev.device) for i, b in enumerate(gt_boxes)])
        if boxes.numel() == 0:
            return dict(loss_ebm=sum(p.sum() for p in self.parameters()) * 0.0)
        ref = boxes[:, None]

        def score_fn(y: Tensor) -> Tensor:
            m = y.shape[1]
            b = self.space.decode(y, ref).reshape(-1, 7)
            return self.score(bev, b, batch_idx.repeat_interleave(m), labels.repeat_interleave(m)).reshape(-1, m)

        loss = ebm_loss(self.method, score_fn, self.space.encode(boxes, boxes), self.noise,
                        project=self.space.project, **self.loss_cfg)
        return dict(loss_ebm=self.loss_weight * loss)

    def refine(self, feats, boxes: Tensor, batch_idx: Tensor, labels: Tensor, step_sizes=2e-4,
               num_steps: int = 10, decay: float = 0.5, tol: float = 0.0, chunk_size: Optional[int] = None):
        """Refine (N, 7) LiDAR boxes of several frames in one batched call (yaw stays wrapped,
        sizes positive). Returns ``ebm_det.core.RefineResult``."""
        bev = self.prepare_features(feats)

        def score_fn(b: Tensor, idx: Tensor) -> Tensor:
            return self.score(bev, b, batch_idx[idx], labels[idx])

        return refine_by_gradient_ascent(score_fn, boxes, step_sizes, num_steps, decay, space=self.space, tol=tol,
                                         chunk_size=chunk_size)
