"""Evaluation helpers for ebm_det (mmdet3d is imported lazily by each helper)."""
from .gate import best_margin, calibrate_min_gain  # noqa: F401
from .initial_metric import (InitialPredictionMetric, require_initial_fields, swap_initial_fields,  # noqa: F401
                             warn_if_worse)
from .kitti_cpu_iou import install_cpu_kitti_eval, rotate_iou_cpu_eval, select_kitti_iou_backend  # noqa: F401
from .refinement_metrics import (EBMLossMetric, RefinementLocalisationMetric, best_overlaps,  # noqa: F401
                                 match_refined_detections)
