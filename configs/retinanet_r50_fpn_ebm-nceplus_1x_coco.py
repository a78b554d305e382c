# A one-stage detector through the same wrapper: a trained RetinaNet R50-FPN (mmdet's config),
# frozen, plus an NCE+ EBM head on its P3-P6 features; schedule as the Faster R-CNN variant.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['ebm_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='EBMRefineDetector',
    detector={{_base_.model}},
    detector_checkpoint='checkpoints/retinanet_r50_fpn_1x_coco_20200130-c2398f9e.pth',
    freeze_detector=True,
    ebm_head=dict(type='EBMBoxHead', num_classes=80, in_channels=256, featmap_strides=[8, 16, 32, 64],
                  loss=dict(method='nce_plus', num_samples=128, beta=0.1)),
    test_cfg=dict(num_steps=10, step_sizes=[8e-4, 8e-4, 3.2e-3, 3.2e-3], decay=0.5, max_per_img=100))

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=60000, val_interval=10000)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=60000, milestones=[40000, 50000], gamma=0.1)
]
optim_wrapper = dict(optimizer=dict(type='SGD', lr=1e-3, momentum=0.9, weight_decay=1e-4))
train_dataloader = dict(sampler=dict(type='InfiniteSampler', shuffle=True))
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=10000))
log_processor = dict(by_epoch=False)
val_evaluator = [{{_base_.val_evaluator}}, dict(type='InitialPredictionMetric', metric={{_base_.val_evaluator}})]
test_evaluator = val_evaluator
