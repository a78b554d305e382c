# Full scale (KITTI in data/kitti, prepared by mmdet3d's tools/create_data.py): an NCE-trained
# EBMBoxHead3D (ebms_3dod) on the frozen, officially trained mmdet3d PointPillars (Car). Download
#   https://download.openmmlab.com/mmdetection3d/v1.0.0_models/pointpillars/hv_pointpillars_secfpn_6x8_160e_kitti-3d-car/hv_pointpillars_secfpn_6x8_160e_kitti-3d-car_20220331_134606-d42d15ed.pth
# into checkpoints/. Only the EBM head trains; the detector's boxes are refined at test time and
# scored beside the refined ones (Kitti metric_init/... vs Kitti metric/...).
#
# BEV map: SECONDFPN concatenates 3 x 128 = 384 channels at stride 2 of the 432 x 496 pillar grid
# (0.16 m), i.e. a 216 x 248 map of 0.32 m cells that spans the whole point-cloud range
# [0, -39.68, 69.12, 39.68]; that range is the head's bev_range.
_base_ = ['mmdet3d::pointpillars/pointpillars_hv_secfpn_8xb6-160e_kitti-3d-car.py',
          './_base_/schedules/ebm_3d_onecycle_10e.py', './_base_/ebm_refine_3d.py']
custom_imports = dict(imports=['ebm_det', 'ebm_det.evaluation.kitti_iou_backend'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='EBMRefineDetector3D',
    detector={{_base_.model}},
    detector_checkpoint='checkpoints/hv_pointpillars_secfpn_6x8_160e_kitti-3d-car_20220331_134606-d42d15ed.pth',
    test_cfg=_base_.ebm_refine_3d,  # ebms_3dod's T = 10
    ebm_head=dict(type='EBMBoxHead3D', in_channels=384, bev_range=[0, -39.68, 69.12, 39.68]))

train_cfg = _base_.ebm_3d_onecycle_10e.train_cfg
optim_wrapper = _base_.ebm_3d_onecycle_10e.optim_wrapper
param_scheduler = _base_.ebm_3d_onecycle_10e.param_scheduler

# refined boxes under 'Kitti metric/...', the detector's own under 'Kitti metric_init/...'
val_evaluator = [_base_.val_evaluator, dict(type='InitialPredictionMetric', metric=_base_.val_evaluator)]
test_evaluator = val_evaluator
