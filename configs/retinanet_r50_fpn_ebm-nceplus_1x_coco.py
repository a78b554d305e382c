# A one-stage detector through the same wrapper: a trained RetinaNet R50-FPN (mmdet's config),
# frozen, plus an NCE+ EBM head on its P3-P6 features; the paper's 60k-iteration schedule.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', './_base_/schedules/ebm_2d_60k.py']
custom_imports = dict(imports=['ebm_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='EBMRefineDetector',
    detector={{_base_.model}},
    backbone=dict(),  # read by mmdet.apis.init_detector
    detector_checkpoint='checkpoints/retinanet_r50_fpn_1x_coco_20200130-c2398f9e.pth',
    # refinement: RefineConfig's defaults (T = 5); the papers' T: --cfg-options model.test_cfg.num_steps=10
    ebm_head=dict(type='EBMBoxHead', num_classes=80, featmap_strides=[8, 16, 32, 64]))

train_cfg = _base_.ebm_2d_60k.train_cfg
param_scheduler = _base_.ebm_2d_60k.param_scheduler
optim_wrapper = _base_.ebm_2d_60k.optim_wrapper
train_dataloader = _base_.ebm_2d_60k.train_dataloader
default_hooks = _base_.ebm_2d_60k.default_hooks
log_processor = _base_.ebm_2d_60k.log_processor

val_evaluator = [_base_.val_evaluator, dict(type='InitialPredictionMetric', metric=_base_.val_evaluator)]
test_evaluator = val_evaluator
tta_model = dict(type='EBMDetTTAModel')  # the stock TTA settings; before/after pairs kept
