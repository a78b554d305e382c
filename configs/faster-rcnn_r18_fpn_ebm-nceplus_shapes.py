# CPU scale: an NCE+ EBM head (EBMBoxHead's defaults, the papers' refinement settings but T = 5) on the frozen
# faster-rcnn_r18_fpn_shapes.py detector. Set the detector's checkpoint with
# --cfg-options model.detector_checkpoint=PATH (tools/demo.sh does).
_base_ = ['./faster-rcnn_r18_fpn_shapes.py']
custom_imports = dict(imports=['ebm_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='EBMRefineDetector',
    detector={{_base_.model}},
    backbone=dict(),  # read by mmdet.apis.init_detector
    detector_checkpoint=None,
    val_loss=True,  # ebm/val_loss: the EBM loss around the val set's ground truth (EBMLossMetric)
    # pooling='prroi' for Precise RoI Pooling (default 'grid_sample', RoIAlign with box gradients)
    # refinement: RefineConfig's defaults (T = 5); the papers' T: --cfg-options model.test_cfg.num_steps=10
    ebm_head=dict(type='EBMBoxHead', num_classes=5, in_channels=64, max_gt_per_batch=24))

max_iters = 600
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.67), int(max_iters * 0.83)], gamma=0.1)
]
optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer=dict(type='Adam', lr=1e-4))
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1),
                     logger=dict(log_metric_by_epoch=False))  # validation metrics at their iteration

# refined boxes under coco/..., the detector's own under coco_init/..., the difference under
# coco_gain/...; refine/...: how refinement moved the detections that found an object (mean IoU
# before/after, share made worse); ebm/val_loss
val_evaluator = [_base_.val_evaluator,
                 dict(type='InitialPredictionMetric', metric=_base_.val_evaluator, report_gain=True),
                 dict(type='RefinementLocalisationMetric'), dict(type='EBMLossMetric')]
test_evaluator = val_evaluator
# mmdet's `tools/test.py --tta`: flipped views merged as DetTTAModel does, before/after pairs kept
tta_model = dict(type='EBMDetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
