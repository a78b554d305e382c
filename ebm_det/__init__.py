"""Energy-based box refinement for MMDetection 3.x and MMDetection3D 1.x.

``import ebm_det`` (or ``custom_imports=dict(imports=['ebm_det'])`` in a config) registers every
module in the mmdet and mmdet3d registries and lets torch's weights-only unpickler read mmengine
checkpoints (``ebm_det.checkpoint``). ``ebm_det.core`` is plain PyTorch and works without the
OpenMMLab stack. The CPU KITTI IoU is opt-in: ``ebm_det.evaluation.kitti_iou_backend``.
"""
from importlib.util import find_spec

__version__ = '0.1.0'

if find_spec('mmdet') is not None:
    from . import checkpoint, evaluation, models, tracking  # noqa: F401  (registers modules)
    checkpoint.allow_mmengine_checkpoints()
