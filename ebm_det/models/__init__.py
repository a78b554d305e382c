from importlib.util import find_spec

from .ebm_box_head import EBMBoxHead
from .ebm_roi_head import EBMRoIHead
from .refine_detector import EBMRefineDetector, refine_instances

__all__ = ['EBMBoxHead', 'EBMRoIHead', 'EBMRefineDetector', 'refine_instances']

if find_spec('mmdet3d') is not None:
    from .ebm_box_head_3d import EBMBoxHead3D
    from .refine_detector_3d import EBMRefineDetector3D
    __all__ += ['EBMBoxHead3D', 'EBMRefineDetector3D']
