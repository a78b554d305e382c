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
_base_ = ['mmdet3d::second/second_hv_secfpn_8xb6-80e_kitti-3d-car.py']
custom_imports = dict(imports=['ebm_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='EBMRefineDetector3D',
    detector={{_base_.model}},
    detector_checkpoint='checkpoints/second_hv_secfpn_8xb6-80e_kitti-3d-car-75d9305e.pth',
    freeze_detector=True,
    ebm_head=dict(
        type='EBMBoxHead3D',
        in_channels=512,
        bev_range=[0, -40, 70.4, 40],
        loss=dict(method='nce', num_samples=128)),
    test_cfg=dict(num_steps=10, step_sizes=2e-4, decay=0.5))

# The paper's optimiser: Adam with a one-cycle learning rate peaking at 3e-3 (cosine up from
# 3e-3 / 25 over 30 % of the run, cosine down to 3e-7), written as two CosineAnnealingLR like the
# stock cyclic schedule (OneCycleLR pickles a bound method into checkpoints, which torch's
# weights-only unpickler refuses). Shorter than the detector's 40 epochs (x2 repeat): 10 epochs of
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
