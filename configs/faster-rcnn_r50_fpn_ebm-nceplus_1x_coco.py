# The ECCV 2020 setting: a trained Faster R-CNN R50-FPN, frozen, plus an NCE+ EBM head (the
# defaults of EBMBoxHead and of RefineConfig, with its T = 5 steps) trained on COCO (data/coco) with the
# paper's 60k-iteration schedule. Put the detector's checkpoint at the path below (or override
# model.detector_checkpoint), then: tools/dist_train.sh THIS_CONFIG 8
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', './_base_/schedules/ebm_2d_60k.py']
custom_imports = dict(imports=['ebm_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='EBMRefineDetector',
    detector={{_base_.model}},
    backbone=dict(),  # read by mmdet.apis.init_detector
    detector_checkpoint='checkpoints/faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth',
    # the paper's head; pooling='prroi' for its Precise RoI Pooling (default 'grid_sample')
    # refinement: RefineConfig's defaults (T = 5); the papers' T: --cfg-options model.test_cfg.num_steps=10
    ebm_head=dict(type='EBMBoxHead', num_classes=80))

train_cfg = _base_.ebm_2d_60k.train_cfg
param_scheduler = _base_.ebm_2d_60k.param_scheduler
optim_wrapper = _base_.ebm_2d_60k.optim_wrapper
train_dataloader = _base_.ebm_2d_60k.train_dataloader
default_hooks = _base_.ebm_2d_60k.default_hooks
log_processor = _base_.ebm_2d_60k.log_processor
auto_scale_lr = dict(enable=False, base_batch_size=16)

# refined boxes under coco/..., the detector's own under coco_init/...
val_evaluator = [_base_.val_evaluator, dict(type='InitialPredictionMetric', metric=_base_.val_evaluator)]
test_evaluator = val_evaluator
# mmdet's `tools/test.py --tta`: flipped views merged as DetTTAModel does, before/after pairs kept
tta_model = dict(type='EBMDetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
