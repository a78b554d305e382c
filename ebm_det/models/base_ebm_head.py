"""What every EBM head shares: the loss on samples around the ground truth and gradient ascent on f,
both in its box type's space (``BoxCodec``). A head for a new box type or feature layout implements
``prepare_features`` and ``class_scores`` only."""
from typing import Dict, List, Optional, Sequence, Tuple

import logging

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import Tensor

from ebm_det.core import (BoxCodec, GMMNoise, RefineConfig, RefineResult, group_for_scoring, refine_on_head,
                          score_on_head)
from .losses import build_ebm_loss


class BaseEBMHead(BaseModule):
    """The shared half of an energy-based box scorer f(x, y).

    Args:
        codec: the box type (``Box2DCodec``, ``LiDARBoxCodec``): space, validity rule, defaults.
        loss: an ``EBMLoss`` config, e.g. ``dict(type='NCEPlusLoss', num_samples=64)``: ``type``
            picks the loss, the other keys override that class's defaults (``EBMLoss``: M = 128);
            ``sigmas`` default to ``codec.default_sigmas``. None: ``default_loss``.
        default_loss: the head's default loss config.
        registry: the MODELS registry the loss is built in (mmdet's or mmdet3d's).
        max_gt_per_batch: at most this many ground truths (chosen at random) feed the loss per
            batch, bounding training memory in crowded scenes (each costs M noise samples of
            features and activations: 4,000 boxes grew a process by 20 GB). Default
            ``DEFAULT_MAX_GT_PER_BATCH`` (256, about twice a 16-image COCO batch's mean); None
            keeps all (unbounded memory).

    Loading (``_load_from_state_dict``, however the model that carries the head is loaded): a
    checkpoint with some of the head's weights missing, mis-shaped or unexpected is a RuntimeError;
    one with none of them is a RuntimeError too unless the head was initialised first
    (``init_weights``, which mmengine's Runner calls before ``load_from`` in training only), so that
    ``init_detector``, ``DetInferencer``, ``init_model`` and ``tools/test.py`` never refine with a
    random head, while training may start from a plain detector checkpoint (a WARNING says the head
    keeps its initialisation).

    Raises:
        ValueError: a loss config without ``type`` (naming the registered losses), an unknown loss
            type or argument; ``max_gt_per_batch`` neither None nor an integer >= 1.

    Subclasses set ``self.fc_score`` (the last layer: initialised N(0, 0.001) as in the papers, so
    the first scores are nearly flat) and implement ``prepare_features`` and ``class_scores``;
    ``box_context`` / ``group_order`` when boxes carry context (2D: the FPN level).
    """

    DEFAULT_MAX_GT_PER_BATCH = 256

    def __init__(self, codec: BoxCodec, loss: Optional[dict], default_loss: dict, registry,
                 max_gt_per_batch: Optional[int] = DEFAULT_MAX_GT_PER_BATCH, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.codec = codec
        self.loss_fn = build_ebm_loss(default_loss if loss is None else loss, registry)
        sigmas = self.loss_fn.sigmas if self.loss_fn.sigmas is not None else codec.default_sigmas
        self.noise = GMMNoise(sigmas, periodic_dims=codec.space.periodic_dims)
        if self.noise.sigmas.shape[1] not in (1, codec.dim):
            raise ValueError(f'loss sigmas need 1 or {codec.dim} columns (one per box-space dimension), got '
                             f'{self.noise.sigmas.shape[1]}')
        if max_gt_per_batch is not None and (isinstance(max_gt_per_batch, bool) or not isinstance(max_gt_per_batch, int)
                                             or max_gt_per_batch < 1):
            raise ValueError(f'max_gt_per_batch must be None or an integer >= 1, got {max_gt_per_batch!r}')
        self.max_gt_per_batch = max_gt_per_batch

    def check_covers_classes(self, num_classes: Optional[int], detector: str) -> None:
        """Raise ValueError unless this head scores every class of a detector that predicts
        ``num_classes`` classes (None: unknown, not checked). A class-agnostic head (one output)
        covers any number; a per-class head needs at least ``num_classes`` outputs, or refining a
        detection of a class past them would index out of bounds at first use."""
        outputs = self.fc_score.out_features
        if num_classes is None or outputs == 1 or outputs >= num_classes:
            return
        raise ValueError(f'{type(self).__name__} scores {outputs} classes (num_classes={outputs}) but {detector} '
                         f"predicts {num_classes}: set the EBM head's num_classes to {num_classes} (or one score for "
                         'every class: class_agnostic=True, EBMBoxHead3D num_classes=1)')

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """The head loads completely or not at all, whatever model carries it and however it is
        loaded (see the class docstring). Raises RuntimeError naming the missing, unexpected and
        mis-shaped weights."""
        own = {prefix + k: v for k, v in self.state_dict().items() if not k.endswith('num_batches_tracked')}
        problems = dict(
            missing=[k for k in own if k not in state_dict],
            unexpected=[k for k in state_dict if k.startswith(prefix) and k not in own
                        and not k.endswith('num_batches_tracked')],
            mis_shaped=[k for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)])
        absent = len(problems['missing']) == len(own) and not problems['unexpected']
        if absent and self.is_init:
            print_log(f'{type(self).__name__} ({prefix or "top level"}): the checkpoint holds none of its weights; it '
                      'keeps its initialisation (train it before refining with it)', logger='current',
                      level=logging.WARNING)
        elif any(problems.values()):
            found = '; '.join(f'{kind}: {", ".join(keys[:5])}{" ..." if len(keys) > 5 else ""} ({len(keys)})'
                              for kind, keys in problems.items() if keys)
            raise RuntimeError(
                f'the checkpoint does not fit the EBM head {type(self).__name__} at {prefix or "the top level"}, so '
                f'its weights would stay random: {found}. Load a checkpoint trained with this head config (a plain '
                "detector's holds no EBM head: give it to EBMRefineDetector's detector_checkpoint, or train from it "
                'with load_from, where the Runner initialises the head first); otherwise the config differs from the '
                "one the checkpoint was trained with (e.g. the head's reduced_channels, fc_channels or num_classes).")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @property
    def space(self):
        """The box space of refinement and noise (``codec.space``)."""
        return self.codec.space

    def init_weights(self) -> None:
        super().init_weights()
        nn.init.normal_(self.fc_score.weight, std=0.001)
        nn.init.zeros_(self.fc_score.bias)

    # ------------------------------------------------------------------ what a box type implements
    def prepare_features(self, feats):
        """The detector's features -> what ``class_scores`` samples (cast to the head's dtype)."""
        raise NotImplementedError

    def class_scores(self, feats, boxes: Tensor, batch_idx: Tensor, **context) -> Tensor:
        """(N, D) boxes on prepared ``feats`` -> (N, C) scores, one per class (C = 1:
        class-agnostic); differentiable in the boxes."""
        raise NotImplementedError

    def box_context(self, boxes: Tensor, batch_idx: Tensor) -> Dict[str, Tensor]:
        """Per-box (N,) tensors held fixed while a box is scored or refined (none by default)."""
        return {}

    def group_order(self, feats, batch_idx: Tensor, context: Dict[str, Tensor]) -> Optional[Tensor]:
        """An order of the boxes that makes ``class_scores`` cheaper, or None."""
        return None

    # ------------------------------------------------------------------------------------ shared
    def head_dtype(self) -> torch.dtype:
        return self.fc_score.weight.dtype

    def score(self, feats, boxes: Tensor, batch_idx: Tensor, labels: Tensor, **context) -> Tensor:
        """f(x, y): (N,) the score of each box's class (``labels``, (N,) long)."""
        out = self.class_scores(feats, boxes, batch_idx, **context)
        return out[:, 0] if out.shape[1] == 1 else out.gather(1, labels.long()[:, None])[:, 0]

    @torch.no_grad()
    def score_boxes(self, feats, boxes: Tensor, batch_idx: Tensor, labels: Tensor,
                    context_boxes: Optional[Tensor] = None) -> Tensor:
        """f at (N, D) boxes on raw ``feats``, without gradient: (N,) in the head's dtype
        (``ebm_det.core.score_on_head`` after ``prepare_features``; ``context_boxes``: as there)."""
        return score_on_head(self, self.prepare_features(feats), boxes, batch_idx, labels, context_boxes)

    @torch.no_grad()
    def best_labels(self, feats, boxes: Tensor, batch_idx: Tensor) -> Tensor:
        """(N,) the class whose f is highest at each (N, D) box (0 for a class-agnostic head); raw
        ``feats`` as the detector gives them."""
        if boxes.shape[0] == 0 or self.fc_score.out_features == 1:
            return torch.zeros(boxes.shape[0], dtype=torch.long, device=boxes.device)
        feats = self.prepare_features(feats)
        return self.class_scores(feats, boxes, batch_idx, **self.box_context(boxes, batch_idx)).argmax(1)

    def loss(self, feats, gt_boxes: List, gt_labels: List[Tensor], subsample: bool = True) -> dict:
        """The EBM loss on samples drawn around every valid ground truth (``codec.valid``).

        Args:
            feats: the detector's features (raw; prepared here).
            gt_boxes: per image (n_i, >= D) boxes (tensors or box objects), in the frame of
                ``feats`` (2D: network-input pixels).
            gt_labels: per image (n_i,) classes.
            subsample: apply ``max_gt_per_batch`` (training); False scores every valid box
                (the validation loss).
        Returns:
            dict(loss_ebm=scalar). Without valid ground truth, a zero that still reaches every
            parameter (for DDP).
        """
        feats = self.prepare_features(feats)
        device = self.fc_score.weight.device
        boxes = torch.cat([self.codec.to_tensor(b).to(device) for b in gt_boxes]) if gt_boxes else \
            torch.zeros(0, self.codec.dim, device=device)
        labels = torch.cat([torch.as_tensor(t).to(device).long() for t in gt_labels]) if gt_labels else \
            torch.zeros(0, dtype=torch.long, device=device)
        batch_idx = torch.cat([torch.full((len(b), ), i, device=device) for i, b in enumerate(gt_boxes)]).long() \
            if gt_boxes else torch.zeros(0, dtype=torch.long, device=device)
        keep = self.codec.valid(boxes)
        if subsample and self.max_gt_per_batch is not None:
            keep &= torch.rand(len(boxes), device=device).argsort().argsort() < self.max_gt_per_batch
        boxes, labels, batch_idx = boxes[keep], labels[keep], batch_idx[keep]
        if boxes.numel() == 0:
            return dict(loss_ebm=sum(p.sum() for p in self.parameters()) * 0.0)
        boxes, batch_idx, labels, context, _ = group_for_scoring(self, feats, boxes, batch_idx, labels)
        space, ref, dim = self.space, boxes[:, None], self.codec.dim

        def score_fn(y: Tensor) -> Tensor:  # (N, M, D) in the box space -> (N, M)
            m = y.shape[1]
            rep = lambda t: t.repeat_interleave(m)  # noqa: E731
            b = space.decode(y, ref).reshape(-1, dim)
            ctx = {k: rep(v) for k, v in context.items()}
            return self.score(feats, b, rep(batch_idx), rep(labels), **ctx).reshape(-1, m)

        loss = self.loss_fn(score_fn, space.encode(boxes, boxes), self.noise, project=space.project)
        return dict(loss_ebm=loss)

    def refine(self, feats, boxes: Tensor, batch_idx: Tensor, labels: Tensor, cfg: Optional[RefineConfig] = None,
               step_sizes: Optional[Tensor] = None) -> RefineResult:
        """Gradient ascent on f for (N, D) valid boxes of several images in one batched call, on raw
        ``feats`` (``ebm_det.core.refine_on_head`` after ``prepare_features``; no selection, no
        clipping: ``ebm_det.core.refine_boxes`` does those around it).

        Args:
            cfg: ``RefineConfig`` (or a dict); None: the defaults.
            step_sizes: optional (N, D) per-box lambdas, overriding ``cfg.step_sizes``.
        Returns:
            ``RefineResult`` in the input order.
        """
        return refine_on_head(self, self.prepare_features(feats), boxes, batch_idx, labels, RefineConfig.build(cfg),
                              step_sizes)

    def _features_as_head_dtype(self, feats: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """Half-precision (or any other dtype) features are cast to the head's dtype, so a float32
        head refines on a bf16/fp16 detector's maps (the score comparison stays float32)."""
        dtype = self.head_dtype()
        return tuple(f if f.dtype == dtype else f.to(dtype) for f in feats)
