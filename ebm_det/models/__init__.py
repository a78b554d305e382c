from importlib.util import find_spec

from .base_ebm_head import BaseEBMHead
from .ebm_box_head import EBMBoxHead
from .ebm_roi_head import EBMRoIHead
from .losses import build_ebm_loss
from .refine_detector import EBMRefineDetector, detect_with_features, refine_instances
from .tta import EBMDetTTAModel

__all__ = ['BaseEBMHead', 'EBMBoxHead', 'EBMRoIHead', 'EBMRefineDetector', 'EBMDetTTAModel', 'build_ebm_loss',
           'detect_with_features', 'refine_instances']

if find_spec('mmdet3d') is not None:
    from .ebm_box_head_3d import EBMBoxHead3D
    from .refine_detector_3d import EBMRefineDetector3D
    __all__ += ['EBMBoxHead3D', 'EBMRefineDetector3D']
