"""EBMBoxRefiner: refine any 2D boxes (a tracker's motion prediction, last frame's boxes) on a frame,
through the same refinement step as the detectors (``ebm_det.core.refine_boxes``)."""
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmdet.registry import MODELS
from torch import Tensor

from ebm_det.core import RefineConfig, refine_boxes

ImgShape = Union[Sequence[int], Tensor]


class EBMBoxRefiner:
    """Gradient-ascent refinement of (x1, y1, x2, y2) boxes on a trained ``EBMBoxHead``, for trackers.

    A plain object (not an ``nn.Module``): it only references the head, so a model that owns the
    head can hold a refiner without registering the head's parameters twice.

    Args:
        ebm_head: an ``EBMBoxHead`` or its config (built in mmdet's MODELS registry).
        cfg: a ``RefineConfig`` (or dict); ``score_thr`` and ``max_per_img`` do not apply (every
            valid box given is refined).
        checkpoint: optional checkpoint for a head built from a config: an ``EBMRefineDetector``
            checkpoint (the ``ebm_head.`` entries are used) or a bare head state dict; loaded
            with ``weights_only=True``.
        detector: optional ``EBMRefineDetector`` (or any mmdet detector) whose data preprocessor
            and ``extract_feat`` ``features`` uses.
    """

    def __init__(self, ebm_head, cfg=None, checkpoint: Optional[str] = None, detector=None) -> None:
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
        self.cfg = RefineConfig.build(cfg).check_num_classes(getattr(ebm_head, 'num_classes', None), 'track_refine_cfg')
        self.cfg.step_sizes_for(ebm_head.codec.dim, ebm_head.codec.default_step_sizes)  # checked now
        self.detector = detector

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_detector(cls, model, **overrides) -> 'EBMBoxRefiner':
        """A refiner on the head of an ``EBMRefineDetector`` (or of a MOT model whose
        ``detector`` is one), with its ``test_cfg`` settings, ``overrides`` on top."""
        det = model if hasattr(model, 'ebm_head') else model.detector
        return cls(det.ebm_head, det.refine_cfg.replace(**overrides), detector=det)

    @classmethod
    def from_config(cls, config, checkpoint: Optional[str] = None, device: str = 'cpu', **overrides) -> 'EBMBoxRefiner':
        """``from_detector`` on the ``EBMRefineDetector`` that ``mmdet.apis.init_detector`` builds
        from a config file (or ``Config``) and a checkpoint of it, in eval mode."""
        from mmdet.apis import init_detector
        return cls.from_detector(init_detector(config, checkpoint, device=device), **overrides)

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
        return tuple(self.detector.extract_feat(images))

    def best_labels(self, feats: Sequence[Tensor], boxes: Tensor, batch_idx: Optional[Tensor] = None) -> Tensor:
        """(N,) the class whose score is highest at each (N, 4) input-pixel box (0 for a
        class-agnostic head)."""
        boxes = boxes.float()
        if batch_idx is None:
            batch_idx = torch.zeros(boxes.shape[0], dtype=torch.long, device=boxes.device)
        return self.head.best_labels(feats, boxes, batch_idx)

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
            img_shape: (h, w) of the network input, or (B, 2) per frame; refined boxes are clipped
                to it.
            labels: (N,) class of each box; None: the head's best class at the given box.
            batch_idx: (N,) frame of each box (default: all frame 0).
            scale_factor: (w, h) from the boxes' pixels to the network input's
                (``metainfo['scale_factor']`` for boxes in original-image pixels); None: boxes are
                in input pixels. Results come back in the boxes' frame.
        Returns:
            (boxes (N, 4), scores (N,)): the refined boxes and f there, in the input's dtype and
            device. A box that is not valid (non-finite, under ``codec.min_size``), or that
            refinement plus clipping would make degenerate, comes back exactly as given, with
            score -inf: no degenerate box ever reaches a tracker's state.
        Raises:
            ValueError: ``boxes`` not shaped (N, 4).
        """
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f'EBMBoxRefiner.refine takes (N, 4) x1y1x2y2 boxes, got shape {tuple(boxes.shape)}')
        device = feats[0].device
        n = boxes.shape[0]
        factor = torch.as_tensor(scale_factor if scale_factor is not None else (1.0, 1.0), dtype=torch.float32,
                                 device=device).reshape(-1)
        factor = factor.repeat(2) if factor.numel() == 2 else factor
        work = boxes.to(device).float() * factor
        batch_idx = (torch.zeros(n, dtype=torch.long, device=device) if batch_idx is None else
                     torch.as_tensor(batch_idx, device=device).long())
        shapes = torch.as_tensor(img_shape, device=device).float().reshape(-1, 2)
        if shapes.shape[0] == 1:
            shapes = shapes.expand(feats[0].shape[0], 2)
        if labels is None:
            labels = torch.zeros(n, dtype=torch.long, device=device)
            valid = self.head.codec.valid(work)
            labels[valid] = self.best_labels(feats, work[valid], batch_idx[valid])
        labels = torch.as_tensor(labels, device=device).long()
        out = refine_boxes(self.head, feats, work, batch_idx, labels, self.cfg, img_shapes=shapes,
                           num_images=shapes.shape[0])
        refined = torch.where(out.refined[:, None], out.boxes / factor, boxes.to(device).float())
        return refined.to(boxes), out.ebm_scores.to(boxes.device)
