"""f(x, y) for 4-D image boxes: RoI features sampled at y -> fc -> fc -> a score per class."""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
from mmdet.registry import MODELS
from mmdet.structures.bbox import get_box_tensor
from mmengine.model import BaseModule
from torch import Tensor

from ebm_det.core import (GMMNoise, RelativeBox2DSpace, ebm_loss, refine_by_gradient_ascent, roi_grid_sample,
                          sampling_layout, sort_by_group)


@MODELS.register_module()
class EBMBoxHead(BaseModule):
    """The energy-based box scorer of Gustafsson et al. (ECCV 2020), on an FPN.

    Args:
        num_classes: scores per box; the loss reads the GT class, refinement the predicted one.
            ``class_agnostic=True`` uses one score for every class.
        in_channels: channels of the neck's features.
        reduced_channels: if set, a 1x1 conv reduces the features to this many channels, once
            per image, before sampling (cheaper sampling and a smaller first fc).
        roi_size: output bins per side of the RoI sampler.
        sampling_ratio: bilinear samples per bin per side.
        featmap_strides: strides of the levels used.
        finest_scale: level mapping as in mmdet's ``SingleRoIExtractor``.
        fc_channels: width of the two hidden fc layers.
        loss: dict(method='nce_plus' | 'nce' | 'ml_is' | 'kld_is' | 'dsm' | 'ml_mcmc',
            sigmas=(K, 4) noise sigmas in the relative box space, num_samples=M, beta,
            label_sigma, dsm_sigma, mcmc_steps, mcmc_step_size, loss_weight).
        max_gt_per_batch: at most this many GT boxes (chosen at random) feed the loss per batch,
            bounding training memory in crowded images; None keeps all.
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int = 256,
                 reduced_channels: Optional[int] = None,
                 roi_size: int = 7,
                 sampling_ratio: int = 2,
                 featmap_strides: Sequence[int] = (4, 8, 16, 32),
                 finest_scale: int = 56,
                 fc_channels: int = 1024,
                 class_agnostic: bool = False,
                 loss: dict = dict(method='nce_plus', sigmas=[[0.075] * 4, [0.15] * 4, [0.3] * 4],
                                   num_samples=128, beta=0.1, loss_weight=1.0),
                 max_gt_per_batch: Optional[int] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        self.roi_size = roi_size
        self.sampling_ratio = sampling_ratio
        self.featmap_strides = tuple(featmap_strides)
        # mmdet's own level mapping (its RoIAlign layers are not used: they give no box gradient)
        self.level_mapper = SingleRoIExtractor(
            roi_layer=dict(type='RoIAlign', output_size=roi_size, sampling_ratio=sampling_ratio, aligned=True),
            out_channels=in_channels, featmap_strides=list(featmap_strides), finest_scale=finest_scale)
        self.reduce = nn.Conv2d(in_channels, reduced_channels, 1) if reduced_channels else None
        channels = reduced_channels or in_channels
        self.fcs = nn.Sequential(
            nn.Linear(channels * roi_size * roi_size, fc_channels), nn.ReLU(inplace=True),
            nn.Linear(fc_channels, fc_channels), nn.ReLU(inplace=True))
        self.fc_score = nn.Linear(fc_channels, 1 if class_agnostic else num_classes)
        self.loss_cfg = dict(loss)
        self.method = self.loss_cfg.pop('method', 'nce_plus')
        self.loss_weight = self.loss_cfg.pop('loss_weight', 1.0)
        self.noise = GMMNoise(self.loss_cfg.pop('sigmas', [[0.075] * 4, [0.15] * 4, [0.3] * 4]))
        self.max_gt_per_batch = max_gt_per_batch
        self.space = RelativeBox2DSpace()

    def init_weights(self) -> None:
        super().init_weights()
        # the paper's init of the last layer: N(0, 0.001), so initial scores are near-flat
        nn.init.normal_(self.fc_score.weight, std=0.001)
        nn.init.zeros_(self.fc_score.bias)

    def prepare_features(self, feats: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """The levels this head samples from, channel-reduced once per image if configured."""
        feats = tuple(feats[:len(self.featmap_strides)])
        feats = tuple(self.reduce(f) for f in feats) if self.reduce is not None else feats
        return tuple(sampling_layout(f) for f in feats)

    def map_levels(self, boxes: Tensor) -> Tensor:
        """(N, 4) boxes -> (N,) FPN level, mmdet's rule; fixed for a box while it is refined."""
        rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes.detach()], dim=1)
        return self.level_mapper.map_roi_levels(rois, len(self.featmap_strides))

    def score(self, feats: Sequence[Tensor], boxes: Tensor, batch_idx: Tensor, levels: Tensor,
              labels: Tensor) -> Tensor:
        """f(x, y): feats from ``prepare_features``; boxes (N, 4) in input pixels; batch_idx,
        levels, labels (N,). Returns (N,) scores, differentiable in the boxes."""
        rois = roi_grid_sample(feats, boxes, batch_idx, levels, self.featmap_strides, self.roi_size,
                               self.sampling_ratio)
        out = self.fc_score(self.fcs(rois.flatten(1)))
        if self.class_agnostic:
            return out[:, 0]
        return out.gather(1, labels.long()[:, None])[:, 0]

    def loss(self, feats: Sequence[Tensor], gt_boxes: List[Tensor], gt_labels: List[Tensor]) -> dict:
        """The EBM loss on samples drawn around every GT box.

        Args:
            feats: the neck's features (raw; reduced here).
            gt_boxes: per image (n_i, 4) boxes in input pixels; boxes under 1 px are skipped.
            gt_labels: per image (n_i,).
        """
        feats = self.prepare_features(feats)
        boxes = torch.cat([get_box_tensor(b) for b in gt_boxes]).float()
        labels = torch.cat(list(gt_labels))
        batch_idx = torch.cat([torch.full((len(b), ), i, device=boxes.device) for i, b in enumerate(gt_boxes)])
        keep = ((boxes[:, 2:] - boxes[:, :2]) >= 1).all(-1) & torch.isfinite(boxes).all(-1)
        if self.max_gt_per_batch is not None:
            keep &= torch.rand(len(boxes), device=boxes.device).argsort().argsort() < self.max_gt_per_batch
        boxes, labels, batch_idx = boxes[keep], labels[keep], batch_idx[keep]
        if boxes.numel() == 0:  # keep every parameter in the graph for DDP
            return dict(loss_ebm=sum(p.sum() for p in self.parameters()) * 0.0)
        levels = self.map_levels(boxes)
        # grouped by (level, image), the samples need no sort or gather in the sampler
        order, _ = sort_by_group(levels, batch_idx, feats[0].shape[0])
        boxes, labels, batch_idx, levels = boxes[order], labels[order], batch_idx[order], levels[order]
        ref = boxes[:, None]

        def score_fn(y: Tensor) -> Tensor:  # (N, M, 4) in the relative space -> (N, M)
            m = y.shape[1]
            b = self.space.decode(y, ref).reshape(-1, 4)
            rep = lambda t: t.repeat_interleave(m)  # noqa: E731
            return self.score(feats, b, rep(batch_idx), rep(levels), rep(labels)).reshape(-1, m)

        loss = ebm_loss(self.method, score_fn, self.space.encode(boxes, boxes), self.noise, **self.loss_cfg)
        return dict(loss_ebm=self.loss_weight * loss)

    def refine(self, feats: Sequence[Tensor], boxes: Tensor, batch_idx: Tensor, labels: Tensor,
               img_shapes: Tensor, step_sizes=(8e-4, 8e-4, 3.2e-3, 3.2e-3), num_steps: int = 10,
               decay: float = 0.5, tol: float = 0.0, chunk_size: Optional[int] = None):
        """Refine (N, 4) input-pixel boxes of several images in one batched call.

        ``img_shapes`` (B, 2) are (h, w) per image: refined boxes are clipped to them. Returns
        ``ebm_det.core.RefineResult``.
        """
        feats = self.prepare_features(feats)
        levels = self.map_levels(boxes)
        # refined in (level, image) order, so every step's sampling skips its sort and gather
        order, inverse = sort_by_group(levels, batch_idx, feats[0].shape[0])
        boxes, batch_idx, levels, labels = boxes[order], batch_idx[order], levels[order], labels[order]
        lam = torch.as_tensor(step_sizes, dtype=torch.float64)
        step_sizes = lam[order.to(lam.device)] if lam.dim() == 2 else step_sizes  # (N, 4) per-box steps follow

        def score_fn(b: Tensor, idx: Tensor) -> Tensor:
            return self.score(feats, b, batch_idx[idx], levels[idx], labels[idx])

        res = refine_by_gradient_ascent(score_fn, boxes, step_sizes, num_steps, decay,
                                        space=self.space, tol=tol, chunk_size=chunk_size)
        hw = img_shapes.to(boxes)[batch_idx]
        clipped = torch.minimum(res.boxes.clamp(min=0), hw.flip(-1).repeat(1, 2))
        return res._replace(boxes=clipped[inverse], scores=res.scores[inverse], init_scores=res.init_scores[inverse])
