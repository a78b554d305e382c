"""Tracking with EBM box refinement: a refiner for any tracker, and mmdet MOT trackers/models that
refine track boxes (and, with an ``EBMRefineDetector``, detections) before association.

``import ebm_det.tracking`` registers ``EBMByteTracker``, ``EBMSORTTracker``, ``EBMByteTrack`` and
``EBMDeepSORT`` in mmdet's MODELS registry. The tracking benchmark's scores (mmdet's
``MOTChallengeMetric``, a motmetrics cross-check, OPE success AUC) live beside it in
``tools/benchmarks/tracking_*.py``.
"""
from .mot import EBMByteTrack, EBMDeepSORT, EBMTrackingMixin
from .refiner import EBMBoxRefiner
from .trackers import EBMByteTracker, EBMSORTTracker, EBMTrackRefineMixin, TrackRefineOptions

__all__ = [
    'EBMBoxRefiner', 'EBMByteTracker', 'EBMSORTTracker', 'EBMTrackRefineMixin', 'EBMByteTrack', 'EBMDeepSORT',
    'EBMTrackingMixin', 'TrackRefineOptions'
]
