# The ECCV 2020 EBM head schedule on a frozen detector: 60k iterations at 16 images per batch
# (8 GPUs x 2), SGD lr 1e-3 (momentum 0.9, weight decay 1e-4) with steps at 40k and 50k.
# A named piece, not top-level keys: mmengine forbids a key in two bases, and the EBM configs
# inherit a full detector config (which has its own schedule). A config takes it with
#     _base_ = [<detector config>, './_base_/schedules/ebm_2d_60k.py']
#     train_cfg = _base_.ebm_2d_60k.train_cfg   (and so on for each key; see the configs)
ebm_2d_60k = dict(
    train_cfg=dict(_delete_=True, type='IterBasedTrainLoop', max_iters=60000, val_interval=10000),
    param_scheduler=[
        dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
        dict(type='MultiStepLR', by_epoch=False, begin=0, end=60000, milestones=[40000, 50000], gamma=0.1)
    ],
    optim_wrapper=dict(_delete_=True, type='OptimWrapper',
                       optimizer=dict(type='SGD', lr=1e-3, momentum=0.9, weight_decay=1e-4)),
    train_dataloader=dict(sampler=dict(type='InfiniteSampler', shuffle=True)),
    default_hooks=dict(checkpoint=dict(by_epoch=False, interval=10000)),
    log_processor=dict(by_epoch=False))
