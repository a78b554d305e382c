# Full scale (KITTI in data/kitti, prepared by mmdet3d's tools/create_data.py): an NCE-trained
# EBMBoxHead3D (ebms_3dod) on the frozen, officially trained mmdet3d SECOND (Car). Download
#   https://download.openmmlab.com/mmdetection3d/v1.1.0_models/second/second_hv_secfpn_8xb6-80e_kitti-3d-car/second_hv_secfpn_8xb6-80e_kitti-3d-car-75d9305e.pth
# into checkpoints/. Only the EBM head trains; the detector's boxes are refined at test time and
# scored beside the refined ones (Kitti metric_init/... vs Kitti metric/...).
#
# BEV map: SECOND's sparse encoder reduces the 1408 x 1600 voxel grid (0.05 m) 8 times; the
# SECOND backbone and SECONDFPN ([128, 256] -> 2 x 256 = 512 channels, upsample [1, 2]) keep that
# stride, i.e. a 176 x 200 map of 0.4 m cells that spans the whole point-cloud range
# [0, -40, 70.4, 40]; that range is the head's bev_range.
_base_ = ['mmdet3d::second/second_hv_secfpn_8xb6-80e_kitti-3d-car.py', './_base_/schedules/ebm_3d_onecycle_10e.py',
          './_base_/ebm_refine_3d.py']
custom_imports = dict(imports=['ebm_det', 'ebm_det.evaluation.kitti_iou_backend'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='EBMRefineDetector3D',
    detector={{_base_.model}},
    detector_checkpoint='checkpoints/second_hv_secfpn_8xb6-80e_kitti-3d-car-75d9305e.pth',
    test_cfg=_base_.ebm_refine_3d,  # ebms_3dod's T = 10
    ebm_head=dict(type='EBMBoxHead3D', in_channels=512, bev_range=[0, -40, 70.4, 40]))

train_cfg = _base_.ebm_3d_onecycle_10e.train_cfg
optim_wrapper = _base_.ebm_3d_onecycle_10e.optim_wrapper
param_scheduler = _base_.ebm_3d_onecycle_10e.param_scheduler

val_evaluator = [_base_.val_evaluator, dict(type='InitialPredictionMetric', metric=_base_.val_evaluator)]
test_evaluator = val_evaluator
