# A real COCO detector with EBM refinement: mmdet's own YOLOX-Nano config, frozen from its COCO
# checkpoint, plus an NCE+ EBM head that reads the YOLOX neck (PAFPN: 64 channels at strides 8,
# 16, 32), trained on COCO train2017 (data/coco) with the paper's 60k-iteration schedule.
# Put the detector's checkpoint at the path below (or override model.detector_checkpoint), then
#     tools/dist_train.sh THIS_CONFIG 8
# What wrapping a one-stage detector's config takes, each done below: an iteration loop that
# replaces the base's epoch loop (`_delete_=True`), logs by iteration, none of the base's YOLOX
# hooks (they assume a detector in training), a plain data set instead of its Mosaic/MixUp one,
# and a data preprocessor without its BatchSyncRandomResize.
_base_ = ['mmdet::yolox/yolox_nano_8xb8-300e_coco.py', './_base_/schedules/ebm_2d_60k.py']
custom_imports = dict(imports=['ebm_det'], allow_failed_imports=False)

img_scale = (416, 416)  # width, height: YOLOX-Nano's test scale
model = dict(
    _delete_=True,
    type='EBMRefineDetector',
    detector={{_base_.model}},
    backbone=dict(),  # read by mmdet.apis.init_detector
    detector_checkpoint='checkpoints/yolox_nano_coco_mmdet.pth',
    # YOLOX takes BGR pixels in 0-255, padded to a multiple of 32; no batch augments: the frozen
    # detector sees images as at test time, scale jitter comes from the train pipeline below
    data_preprocessor=dict(type='DetDataPreprocessor', pad_size_divisor=32),
    # refinement: RefineConfig's defaults (T = 5)
    ebm_head=dict(type='EBMBoxHead', num_classes=80, in_channels=64, featmap_strides=(8, 16, 32)))

# the EBM head's training images: the test view (resize, pad to a square of 114 as YOLOX's test
# pipeline does) with flips; every box >= 1 px
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', pad_to_square=True, pad_val=dict(img=(114.0, 114.0, 114.0))),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs')
]
train_dataloader = dict(
    batch_size=2,  # x 8 GPUs: the paper's 16
    num_workers=2,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        _delete_=True,
        type='CocoDataset',
        data_root={{_base_.data_root}},
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline,
        backend_args={{_base_.backend_args}}))

train_cfg = _base_.ebm_2d_60k.train_cfg
param_scheduler = _base_.ebm_2d_60k.param_scheduler
optim_wrapper = _base_.ebm_2d_60k.optim_wrapper
default_hooks = _base_.ebm_2d_60k.default_hooks
log_processor = _base_.ebm_2d_60k.log_processor
custom_hooks = []  # not the base's YOLOXModeSwitchHook, SyncNormHook, EMAHook
auto_scale_lr = dict(enable=False, base_batch_size=16)

# refined boxes under coco/..., the detector's own under coco_init/..., the difference under
# coco_gain/...; refine/...: how refinement moved the detections that found an object
val_evaluator = [_base_.val_evaluator,
                 dict(type='InitialPredictionMetric', metric=_base_.val_evaluator, report_gain=True),
                 dict(type='RefinementLocalisationMetric')]
test_evaluator = val_evaluator
tta_model = dict(type='EBMDetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.65), max_per_img=100))
