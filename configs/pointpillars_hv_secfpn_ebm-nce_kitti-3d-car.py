# Full scale (KITTI in data/kitti, prepared by mmdet3d's tools/create_data.py): an NCE-trained
# EBMBoxHead3D (ebms_3dod) on the frozen, officially trained mmdet3d PointPillars (Car). Download
#   https://download.openmmlab.com/mmdetection3d/v1.0.0_models/pointpillars/hv_pointpillars_secfpn_6x8_160e_kitti-3d-car/hv_pointpillars_secfpn_6x8_160e_kitti-3d-car_20220331_134606-d42d15ed.pth
# into checkpoints/. Only the EBM head trains; the detector's boxes are refined at test time and
# scored beside the refined ones (Kitti metric_init/... vs Kitti metric/...).
#
# BEV map: SECONDFPN concatenates 3 x 128 = 384 channels at stride 2 of the 432 x 496 pillar grid
# (0.16 m), i.e. a 216 x 248 map of 0.32 m cells that spans the whole point-cloud range
# [0, -39.68, 69.12, 39.68]; that range is the head's bev_range.
_base_ = ['mmdet3d::pointpillars/pointpillars_hv_secfpn_8xb6-160e_kitti-3d-car.py']
custom_imports = dict(imports=['ebm_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='EBMRefineDetector3D',
    detector={{_base_.model}},
    detector_checkpoint='checkpoints/hv_pointpillars_secfpn_6x8_160e_kitti-3d-car_20220331_134606-d42d15ed.pth',
    freeze_detector=True,
    ebm_head=dict(
        type='EBMBoxHead3D',
        in_channels=384,
        bev_range=[0, -39.68, 69.12, 39.68],
        loss=dict(method='nce', num_samples=128)),
    test_cfg=dict(num_steps=10, step_sizes=2e-4, decay=0.5))

# The paper's optimiser: Adam with a one-cycle learning rate peaking at 3e-3 (cosine up from
# 3e-3 / 25 over 30 % of the run, cosine down to 3e-7), written as two CosineAnnealingLR like the
# stock cyclic schedule (OneCycleLR pickles a bound method into checkpoints, which torch's
# weights-only unpickler refuses). Shorter than the detector's 80 epochs (x2 repeat): 10 epochs of
# the x2-repeated train set (20 passes); the frozen detector only runs forward.
max_epochs = 10
peak_lr = 3e-3
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer=dict(type='Adam', lr=peak_lr / 25))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=3, eta_min=peak_lr, begin=0, end=3, by_epoch=True,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 3, eta_min=peak_lr * 1e-4, begin=3, end=max_epochs,
         by_epoch=True, convert_to_iter_based=True),
]

# refined boxes under 'Kitti metric/...', the detector's own under 'Kitti metric_init/...'
val_evaluator = [
    {{_base_.val_evaluator}},
    dict(type='InitialPredictionMetric', metric={{_base_.val_evaluator}}),
]
test_evaluator = val_evaluator
