"""Import to choose the KITTI BEV/3D IoU backend (``select_kitti_iou_backend``): mmdet3d's CUDA kernel
where CUDA exists, ebm_det's CPU implementation elsewhere; the choice is logged once. The 3D configs
opt in with ``custom_imports=dict(imports=['ebm_det', 'ebm_det.evaluation.kitti_iou_backend'])``."""
from .kitti_cpu_iou import select_kitti_iou_backend

BACKEND = select_kitti_iou_backend()
