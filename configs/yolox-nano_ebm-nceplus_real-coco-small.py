# yolox-nano_ebm-nceplus_coco.py on the small real COCO subset in ../shared/data/real_coco (288
# train2017 and 153 val2017 images with the official annotations, and the real YOLOX-Nano
# checkpoint; see that folder's README.md), with the small-data recipe of this project's real-data
# benchmark (python -m tools.benchmarks.real_coco; docs/figures/real_coco.md).
# Run from the repository root:
#     python tools/train.py configs/yolox-nano_ebm-nceplus_real-coco-small.py
#     python tools/test.py configs/yolox-nano_ebm-nceplus_real-coco-small.py work_dirs/.../iter_N.pth \
#         --cfg-options model.test_cfg.min_gain=M
# where M is the gate calibrated on held-out training images (tools/calibrate_gate.py): on these
# real images an ungated head trained on 240 images LOWERS AP (-2.5 in the benchmark) and the gate
# switches refinement (nearly) off; see the README's real-data results.
#     python tools/test.py configs/yolox-nano_ebm-nceplus_real-coco-small.py --detector-only
# scores the detector alone (AP 28.7 on the 153 val images) before any head is trained.
_base_ = ['./yolox-nano_ebm-nceplus_coco.py']

data_root = '../shared/data/real_coco/'
model = dict(
    detector_checkpoint=data_root + 'checkpoints/yolox_nano_coco_mmdet.pth',
    # the frozen detector's features of every training view (288 images, each plain and mirrored:
    # about 0.9 MB a view) are computed once and reused
    feature_cache=576)

train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='annotations/instances_train2017.json',
                 data_prefix=dict(img='train2017/')))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='annotations/instances_val2017.json', data_prefix=dict(img='val2017/')))
test_dataloader = val_dataloader
_coco_metric = dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val2017.json', metric='bbox')
val_evaluator = [_coco_metric, dict(type='InitialPredictionMetric', metric=_coco_metric, report_gain=True),
                 dict(type='RefinementLocalisationMetric')]
test_evaluator = val_evaluator

max_iters = 800
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.67), int(max_iters * 0.83)], gamma=0.1)
]
optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer=dict(type='Adam', lr=1e-4))
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1),
                     logger=dict(log_metric_by_epoch=False))
