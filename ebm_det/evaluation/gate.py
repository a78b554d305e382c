"""Calibrating the refinement gate (``RefineConfig.min_gain``) on held-out data."""
from typing import List, Optional, Union

import numpy as np


def best_margin(gain: np.ndarray, delta: np.ndarray) -> float:
    """The margin m that maximises the summed IoU change ``delta[gain >= m]`` of one set of refined
    detections (a box whose f gained less than m keeps the detector's box: change 0).

    Args:
        gain: (K,) f(refined) - f(detector's box) of each matched detection; non-finite entries
            (not refined) are ignored.
        delta: (K,) IoU with its ground truth after minus before refinement.
    Returns:
        m in {0, the positive gains, inf}: the smallest among equally good ones (0 when the set is
        empty; inf when refinement hurts at every margin).
    """
    gain, delta = np.asarray(gain, dtype=np.float64), np.asarray(delta, dtype=np.float64)
    ok = np.isfinite(gain) & np.isfinite(delta)
    gain, delta = gain[ok], delta[ok]
    if not len(gain):
        return 0.0
    order = np.argsort(-gain, kind='stable')
    neg, total = -gain[order], np.cumsum(delta[order])
    candidates = np.concatenate([[0.0], np.unique(gain[gain > 0])])
    kept = np.searchsorted(neg, -candidates, side='right')  # boxes with gain >= candidate
    objective = np.where(kept > 0, total[np.maximum(kept, 1) - 1], 0.0)
    candidates, objective = np.append(candidates, np.inf), np.append(objective, 0.0)  # inf: refine none
    return float(candidates[np.flatnonzero(objective == objective.max())[0]])


def calibrate_min_gain(gain, iou_init, iou, labels=None,
                       num_classes: Optional[int] = None) -> Union[float, List[float]]:
    """``RefineConfig.min_gain`` from matched detections of a held-out set (``match_refined_detections``
    of each image, refined with ``min_gain=0``): one margin for all classes, or with ``labels`` and
    ``num_classes`` one per class (a class without held-out detections gets 0, the papers' rule).

    The criterion is the summed IoU change of the matched detections (a proxy for AP at high IoU
    thresholds: refinement does not change scores, so it moves AP only through localisation).
    Calibrate on images the head was not trained on and that the result is not reported on.

    Raises:
        ValueError: ``labels`` without ``num_classes``.
    """
    gain, delta = np.asarray(gain, dtype=np.float64), np.asarray(iou, np.float64) - np.asarray(iou_init, np.float64)
    if labels is None:
        return best_margin(gain, delta)
    if num_classes is None:
        raise ValueError('per-class calibration needs num_classes')
    labels = np.asarray(labels)
    return [best_margin(gain[labels == c], delta[labels == c]) for c in range(num_classes)]
