"""Energy-based box refinement for MMDetection 3.x and MMDetection3D 1.x.

``import ebm_det`` (or ``custom_imports=dict(imports=['ebm_det'])`` in a config) registers every
module in the mmdet and mmdet3d registries. ``ebm_det.core`` is plain PyTorch and works without
the OpenMMLab stack.
"""
from importlib.util import find_spec

__version__ = '0.1.0'

if find_spec('mmdet') is not None:
    from . import checkpoint, evaluation, models, tracking  # noqa: F401  (registers modules)
    checkpoint.allow_mmengine_checkpoints()
    if find_spec('mmdet3d') is not None:
        # KITTI BEV/3D AP without CUDA: a CPU rotated IoU, installed only where CUDA is absent
        evaluation.install_cpu_kitti_eval()
