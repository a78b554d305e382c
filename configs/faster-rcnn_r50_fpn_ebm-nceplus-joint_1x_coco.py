# Joint training: Faster R-CNN R50-FPN (ImageNet-initialised backbone) and the NCE+ EBM head
# trained together with mmdet's 1x schedule; the EBM reads the detector's FPN features.
_base_ = ['./faster-rcnn_r50_fpn_ebm-nceplus_1x_coco.py']

model = dict(detector_checkpoint=None, freeze_detector=False)
train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4))
train_dataloader = dict(sampler=dict(type='DefaultSampler', shuffle=True))
default_hooks = dict(checkpoint=dict(by_epoch=True, interval=1))
log_processor = dict(by_epoch=True)
