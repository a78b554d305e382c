# The ECCV 2020 setting: a trained Faster R-CNN R50-FPN, frozen, plus an NCE+ EBM head trained on
# COCO (data/coco) for 60k iterations at 16 images per batch (8 GPUs x 2), lr 1e-3 with steps at
# 40k and 50k. Put the detector's checkpoint at the path below (or override
# model.detector_checkpoint), then: tools/dist_train.sh THIS_CONFIG 8
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['ebm_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='EBMRefineDetector',
    detector={{_base_.model}},
    detector_checkpoint='checkpoints/faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth',
    freeze_detector=True,
    ebm_head=dict(
        type='EBMBoxHead',
        num_classes=80,
        in_channels=256,
        featmap_strides=[4, 8, 16, 32],
        roi_size=7,
        fc_channels=1024,
        loss=dict(method='nce_plus', sigmas=[[0.075] * 4, [0.15] * 4, [0.3] * 4], num_samples=128, beta=0.1,
                  loss_weight=1.0)),
    test_cfg=dict(num_steps=10, step_sizes=[8e-4, 8e-4, 3.2e-3, 3.2e-3], decay=0.5, max_per_img=100, score_thr=0.0))

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=60000, val_interval=10000)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=60000, milestones=[40000, 50000], gamma=0.1)
]
optim_wrapper = dict(optimizer=dict(type='SGD', lr=1e-3, momentum=0.9, weight_decay=1e-4))
train_dataloader = dict(sampler=dict(type='InfiniteSampler', shuffle=True))
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=10000))
log_processor = dict(by_epoch=False)
auto_scale_lr = dict(enable=False, base_batch_size=16)

# refined boxes under coco/..., the detector's own under coco_init/...
val_evaluator = [
    {{_base_.val_evaluator}},
    dict(type='InitialPredictionMetric', metric={{_base_.val_evaluator}}),
]
test_evaluator = val_evaluator
