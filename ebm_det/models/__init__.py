from .ebm_box_head import EBMBoxHead
from .ebm_roi_head import EBMRoIHead
from .refine_detector import EBMRefineDetector, refine_instances

__all__ = ['EBMBoxHead', 'EBMRoIHead', 'EBMRefineDetector', 'refine_instances']
