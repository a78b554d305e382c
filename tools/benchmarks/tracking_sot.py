"""Single-object tracking of the tracking benchmark: a batched constant-velocity tracker, optionally
corrected each frame by an ``EBMBoxRefiner`` and/or by detections, and the OPE success curve / AUC."""
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ebm_det.evaluation import best_overlaps

SUCCESS_THRESHOLDS = np.linspace(0.0, 1.0, 21)  # OTB's 21 overlap thresholds


class ConstantVelocityTracker:
    """One tracker per target, all stepped together each frame.

    Each frame a target's box is predicted as ``box + velocity`` (x1, y1, x2, y2 move
    independently). Then, in this order and if configured: the ``refiner`` refines the prediction
    on the frame's features with the target's class; the best-overlapping detection (IoU >=
    ``det_iou_thr``) replaces it. The velocity follows the corrections:
    ``v <- momentum * v + (1 - momentum) * (new - old)``. Without refiner and detections the box
    keeps its initial velocity (zero: a static box), the motion-only lower bound.

    Args:
        refiner: an ``EBMBoxRefiner`` or None.
        momentum: velocity smoothing.
        det_iou_thr: IoU for taking a detection (used only when ``step`` gets detections).
    """

    def __init__(self, refiner=None, momentum: float = 0.5, det_iou_thr: float = 0.3) -> None:
        self.refiner = refiner
        self.momentum = momentum
        self.det_iou_thr = det_iou_thr
        self.ids: list = []
        self.boxes = torch.zeros(0, 4)
        self.velocity = torch.zeros(0, 4)
        self.labels = torch.zeros(0, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: Sequence, boxes: Tensor, feats: Optional[Sequence[Tensor]] = None,
            labels: Optional[Tensor] = None, scale_factor=None) -> None:
        """Start targets at their first-frame (N, 4) x1y1x2y2 boxes (OPE initialisation). Their class
        for the refiner is ``labels``, else the refiner's best class at the box on ``feats``."""
        boxes = boxes.float().reshape(-1, 4)
        if labels is None:
            if self.refiner is not None and feats is not None and len(boxes):
                f = torch.as_tensor(scale_factor if scale_factor is not None else (1.0, 1.0)).float().repeat(2)
                labels = self.refiner.best_labels(feats, (boxes * f).to(feats[0].device)).cpu()
            else:
                labels = torch.zeros(len(boxes), dtype=torch.long)
        self.ids += list(ids)
        self.boxes = torch.cat([self.boxes, boxes])
        self.velocity = torch.cat([self.velocity, torch.zeros_like(boxes)])
        self.labels = torch.cat([self.labels, labels.long().reshape(-1)])

    def remove(self, ids: Sequence) -> None:
        gone = set(ids)
        keep = [k for k, i in enumerate(self.ids) if i not in gone]
        self.ids = [self.ids[k] for k in keep]
        self.boxes, self.velocity, self.labels = self.boxes[keep], self.velocity[keep], self.labels[keep]

    def step(self, feats: Optional[Sequence[Tensor]] = None, img_shape=None, dets: Optional[Tensor] = None,
             scale_factor=None) -> Dict[object, Tensor]:
        """Advance every target one frame; returns {id: (4,) box}.

        Args:
            feats: the frame's neck features (batch of one), for the refiner.
            img_shape: (h, w) of the network input.
            dets: (M, 4) detections of the frame, in the boxes' pixels.
            scale_factor: (w, h) from the boxes' pixels to the network input's.
        """
        if not self.ids:
            return {}
        old = self.boxes
        pred = old + self.velocity
        if self.refiner is not None and feats is not None:
            pred, _ = self.refiner.refine(feats, pred, img_shape, labels=self.labels, scale_factor=scale_factor)
            pred = pred.cpu()
        if dets is not None and len(dets):
            dets = dets.float().cpu()
            best, j = best_overlaps(pred, dets)
            pred = torch.where((best >= self.det_iou_thr)[:, None], dets[j], pred)
        self.velocity = self.momentum * self.velocity + (1 - self.momentum) * (pred - old)
        self.boxes = pred
        return {i: pred[k] for k, i in enumerate(self.ids)}


def success_curve(ious: Iterable[float], thresholds: np.ndarray = SUCCESS_THRESHOLDS) -> np.ndarray:
    """(T,) fraction of frames whose IoU exceeds each of the (T,) thresholds (OPE success plot)."""
    ious = np.asarray(list(ious), dtype=float)
    if ious.size == 0:
        return np.zeros(len(thresholds))
    return (ious[None, :] > np.asarray(thresholds)[:, None]).mean(1)


def success_auc(ious: Iterable[float], thresholds: np.ndarray = SUCCESS_THRESHOLDS) -> float:
    """Area under the success curve: its mean over the thresholds (OTB's AUC)."""
    return float(success_curve(ious, thresholds).mean())
