"""EBMBoxRefiner: refine any boxes (a tracker's motion prediction, last frame's boxes) on a frame."""
import copy
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmdet.registry import MODELS
from torch import Tensor

from ebm_det.core import roi_grid_sample

ImgShape = Union[Sequence[int], Tensor]


class EBMBoxRefiner:
    """Gradient-ascent refinement of boxes on a trained ``EBMBoxHead``, for trackers.

    A plain object (not an ``nn.Module``): it only references the head, so a model that owns the
    head can hold a refiner without registering the head's parameters twice.

    Args:
        ebm_head: an ``EBMBoxHead`` or its config (built in mmdet's MODELS registry).
        checkpoint: optional checkpoint for a head built from a config: an ``EBMRefineDetector``
            checkpoint (the ``ebm_head.`` entries are used) or a bare head state dict.
        num_steps, step_sizes, decay, tol, chunk_size: as ``EBMBoxHead.refine``.
        min_size: boxes narrower or lower than this (px) and non-finite boxes are not refined:
            they come back as given (clamped to the image) with score -inf.
        detector: optional ``EBMRefineDetector`` (or any mmdet detector) whose ``extract_feat``
            and ``data_preprocessor`` ``features`` uses.
    """

    def __init__(self,
                 ebm_head,
                 checkpoint: Optional[str] = None,
                 num_steps: int = 10,
                 step_sizes=(8e-4, 8e-4, 3.2e-3, 3.2e-3),
                 decay: float = 0.5,
                 tol: float = 0.0,
                 chunk_size: Optional[int] = None,
                 min_size: float = 1e-2,
                 detector=None) -> None:
        if isinstance(ebm_head, dict):
            ebm_head = MODELS.build({'_scope_': 'mmdet', **ebm_head})
            if checkpoint is None:
                ebm_head.init_weights()
        if checkpoint is not None:
            state = torch.load(checkpoint, map_location='cpu', weights_only=True)
            state = state.get('state_dict', state)
            sub = {k[len('ebm_head.'):]: v for k, v in state.items() if k.startswith('ebm_head.')}
            ebm_head.load_state_dict(sub or state, strict=True)
        self.head = ebm_head
        self.num_steps = num_steps
        self.step_sizes = tuple(step_sizes) if not isinstance(step_sizes, (float, int)) else step_sizes
        self.decay = decay
        self.tol = tol
        self.chunk_size = chunk_size
        self.min_size = min_size
        self.detector = detector

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_detector(cls, model, **overrides) -> 'EBMBoxRefiner':
        """A refiner on the head of an ``EBMRefineDetector`` (or of a MOT model whose
        ``detector`` is one), with its ``test_cfg`` refinement settings unless overridden."""
        det = model if hasattr(model, 'ebm_head') else model.detector
        cfg = dict(getattr(det, 'test_cfg', None) or {})
        keys = ('num_steps', 'step_sizes', 'decay', 'tol', 'chunk_size', 'min_size')
        settings = {k: cfg[k] for k in keys if cfg.get(k) is not None}
        settings.update(overrides)
        return cls(det.ebm_head, detector=det, **settings)

    @classmethod
    def from_config(cls, config, checkpoint: Optional[str] = None, device: str = 'cpu',
                    **overrides) -> 'EBMBoxRefiner':
        """Build the ``EBMRefineDetector`` of a config file (or ``Config``), load a checkpoint of
        it, and return ``from_detector`` on it (in eval mode)."""
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        from mmengine.runner import load_checkpoint
        cfg = Config.fromfile(config) if isinstance(config, str) else config
        init_default_scope(cfg.get('default_scope', 'mmdet'))
        model_cfg = copy.deepcopy(cfg.model)
        model_cfg['detector_checkpoint'] = None
        model = MODELS.build(model_cfg)
        if checkpoint is not None:
            load_checkpoint(model, checkpoint, map_location='cpu', strict=True, logger='silent')
        model.to(device).eval()
        return cls.from_detector(model, **overrides)

    # ------------------------------------------------------------------------------ features
    @torch.no_grad()
    def features(self, images, preprocess: bool = True) -> Tuple[Tensor, ...]:
        """Neck features of a batch of frames through the detector given at construction.

        Args:
            images: a list of (H, W, 3) uint8 BGR arrays or (3, H, W) tensors as a pipeline
                loads them (``preprocess=True``: the detector's data preprocessor normalises,
                converts colour and pads them), or an already preprocessed (B, 3, H, W) tensor
                (``preprocess=False``).
        Returns:
            the features; boxes for ``refine`` are in the pixels of the (unpadded) input.
        """
        if self.detector is None:
            raise RuntimeError('EBMBoxRefiner.features needs a detector: build it with from_detector')
        if preprocess:
            tensors = [torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))) if isinstance(im, np.ndarray)
                       else im for im in images]
            images = self.detector.data_preprocessor(dict(inputs=tensors), False)['inputs']
        inner = getattr(self.detector, 'detector', self.detector)
        return tuple(inner.extract_feat(images))

    # -------------------------------------------------------------------------------- labels
    @torch.no_grad()
    def best_labels(self, feats: Sequence[Tensor], boxes: Tensor, batch_idx: Optional[Tensor] = None) -> Tensor:
        """(N,) the class whose score is highest at each box (0 for a class-agnostic head)."""
        boxes = boxes.float()
        n = boxes.shape[0]
        if self.head.class_agnostic or n == 0:
            return torch.zeros(n, dtype=torch.long, device=boxes.device)
        batch_idx = torch.zeros(n, dtype=torch.long, device=boxes.device) if batch_idx is None else batch_idx
        feats = self.head.prepare_features(feats)
        levels = self.head.map_levels(boxes)
        rois = roi_grid_sample(feats, boxes, batch_idx, levels, self.head.featmap_strides, self.head.roi_size,
                               self.head.sampling_ratio)
        return self.head.fc_score(self.head.fcs(rois.flatten(1))).argmax(1)

    # -------------------------------------------------------------------------------- refine
    @torch.no_grad()
    def refine(self,
               feats: Sequence[Tensor],
               boxes: Tensor,
               img_shape: ImgShape,
               labels: Optional[Tensor] = None,
               batch_idx: Optional[Tensor] = None,
               scale_factor: Optional[Sequence[float]] = None) -> Tuple[Tensor, Tensor]:
        """Refine (N, 4) x1y1x2y2 boxes on the frames whose neck features are ``feats``.

        Args:
            feats: the neck's features of B frames (B, C, H_l, W_l) per level.
            boxes: (N, 4) boxes, e.g. last frame's track boxes or a motion model's prediction.
            img_shape: (h, w) of the input the features come from (every frame), or (B, 2).
            labels: (N,) classes to score with; None: each box's best class at its input.
            batch_idx: (N,) frame of each box in the batch; None: frame 0.
            scale_factor: (w, h) factors from the boxes' frame to the input pixels (mmdet's
                ``scale_factor`` for boxes in original-image pixels); None: boxes are in input
                pixels. Results come back in the boxes' frame.
        Returns:
            (boxes (N, 4) refined and clamped to the image, scores (N,) f at the refined boxes;
            -inf for boxes too small or non-finite to refine, which are only clamped).
        """
        device = feats[0].device
        dtype = boxes.dtype
        n = boxes.shape[0]
        factor = boxes.new_tensor(scale_factor if scale_factor is not None else (1.0, 1.0)).to(device).float()
        factor = factor.repeat(2) if factor.numel() == 2 else factor
        work = boxes.to(device).float() * factor
        batch_idx = (torch.zeros(n, dtype=torch.long, device=device) if batch_idx is None else
                     torch.as_tensor(batch_idx, device=device).long())
        shapes = torch.as_tensor(img_shape, device=device).float().reshape(-1, 2)
        if shapes.shape[0] == 1:
            shapes = shapes.expand(feats[0].shape[0], 2)
        valid = torch.isfinite(work).all(-1) & ((work[:, 2:] - work[:, :2]) > self.min_size).all(-1)
        out = torch.nan_to_num(work)
        scores = torch.full((n, ), float('-inf'), device=device)
        if bool(valid.any()):
            sel_boxes, sel_idx = work[valid], batch_idx[valid]
            sel_labels = (self.best_labels(feats, sel_boxes, sel_idx) if labels is None else
                          torch.as_tensor(labels, device=device).long()[valid])
            res = self.head.refine(feats, sel_boxes, sel_idx, sel_labels, shapes, self.step_sizes, self.num_steps,
                                   self.decay, self.tol, self.chunk_size)
            out[valid], scores[valid] = res.boxes, res.scores.float()
        hw = shapes[batch_idx]
        out = torch.minimum(out.clamp(min=0), hw.flip(-1).repeat(1, 2))  # every box inside its image
        return (out / factor).to(dtype), scores
