"""Tracking with EBM box refinement: a refiner for any tracker, mmdet MOT trackers/models that
refine track boxes before association, MOT / single-object metrics.

``import ebm_det.tracking`` registers ``EBMByteTracker``, ``EBMSORTTracker``, ``EBMByteTrack`` and
``EBMDeepSORT`` in mmdet's MODELS registry.
"""
from .metrics import (box_iou_xyxy, evaluate_mot, evaluate_mot_arrays, motmetrics_summary, success_auc,
                      success_curve)
from .mot import EBMByteTrack, EBMDeepSORT, EBMTrackingMixin
from .refiner import EBMBoxRefiner
from .sot import ConstantVelocityTracker
from .trackers import EBMByteTracker, EBMSORTTracker, EBMTrackRefineMixin

__all__ = [
    'EBMBoxRefiner', 'EBMByteTracker', 'EBMSORTTracker', 'EBMTrackRefineMixin', 'EBMByteTrack', 'EBMDeepSORT',
    'EBMTrackingMixin', 'ConstantVelocityTracker', 'evaluate_mot', 'evaluate_mot_arrays', 'motmetrics_summary',
    'success_auc', 'success_curve', 'box_iou_xyxy'
]
