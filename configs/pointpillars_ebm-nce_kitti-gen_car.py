# CPU scale: an NCE-trained EBMBoxHead3D (ebms_3dod) on the frozen pointpillars_kitti-gen_car.py
# detector. Give the detector's checkpoint with
#     --cfg-options model.detector_checkpoint=PATH
# (tools/benchmarks/kitti_3d.py does). The head reads the 192-channel SECONDFPN map, an 80 x 80
# grid at 0.5 m that covers the point-cloud range [0, -20, 40, 20] (x/y min, x/y max) exactly;
# reduced to 64 channels and 512-wide fc layers to train in minutes on a CPU.
_base_ = ['./pointpillars_kitti-gen_car.py', './_base_/ebm_refine_3d.py']
custom_imports = dict(imports=['ebm_det', 'ebm_det.evaluation.kitti_iou_backend'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='EBMRefineDetector3D',
    detector={{_base_.model}},
    detector_checkpoint=None,
    test_cfg=_base_.ebm_refine_3d,  # ebms_3dod's T = 10
    ebm_head=dict(type='EBMBoxHead3D', in_channels=192, bev_range=[0, -20, 40, 20], reduced_channels=64,
                  fc_channels=512))

# the paper's training: Adam, one-cycle learning rate peaking at 3e-3 (cosine up from 3e-3 / 25
# over 30 % of the run, cosine down to 3e-7), written as two CosineAnnealingLR like the stock
# cyclic KITTI schedules: OneCycleLR pickles a bound method into the checkpoint, which torch's
# weights-only unpickler refuses
max_iters = 600  # tools/benchmarks/kitti_3d.py's default: 1.6 min on 2 CPU cores
peak_lr = 3e-3
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer=dict(type='Adam', lr=peak_lr / 25))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=int(0.3 * max_iters), eta_min=peak_lr, begin=0,
         end=int(0.3 * max_iters), by_epoch=False),
    dict(type='CosineAnnealingLR', T_max=max_iters - int(0.3 * max_iters), eta_min=peak_lr * 1e-4,
         begin=int(0.3 * max_iters), end=max_iters, by_epoch=False),
]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))

# refined boxes under 'Kitti metric/...', the detector's own under 'Kitti metric_init/...'
val_evaluator = [_base_.val_evaluator, dict(type='InitialPredictionMetric', metric=_base_.val_evaluator)]
test_evaluator = val_evaluator
