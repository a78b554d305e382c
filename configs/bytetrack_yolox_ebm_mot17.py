# Full scale, MOT17: MMDetection's ByteTrack (YOLOX-X, CrowdHuman + MOT17 half-train), frozen, with
# an NCE+ EBM head on its neck that refines the detections (EBMRefineDetector) and every track's
# Kalman-predicted box before association (EBMByteTracker). Data as the stock config: data/MOT17 with
# mmdet's mot2coco.py annotations (+ data/crowdhuman for training the head).
#
# 1. Train the EBM head on the frozen detector (the released ByteTrack weights are loaded into the
#    inner YOLOX by its init_cfg; only the head trains):
#      bash tools/dist_train.sh configs/bytetrack_yolox_ebm_mot17.py 8
# 2. Track MOT17 half-val and score HOTA/MOTA/IDF1 (MMDetection's tracking test tool):
#      python $MMDET/.mim/tools/test_tracking.py configs/bytetrack_yolox_ebm_mot17.py \
#          --checkpoint work_dirs/bytetrack_yolox_ebm_mot17/epoch_6.pth
#    The same run without refinement: --cfg-options model.detector.test_cfg.enabled=False
#    model.tracker.ebm.enabled=False
_base_ = ['mmdet::bytetrack/bytetrack_yolox_x_8xb4-80e_crowdhuman-mot17halftrain_test-mot17halfval.py']
custom_imports = dict(imports=['ebm_det', 'ebm_det.tracking'], allow_failed_imports=False)

bytetrack_checkpoint = ('https://download.openmmlab.com/mmtracking/mot/bytetrack/bytetrack_yolox_x/'
                        'bytetrack_yolox_x_crowdhuman_mot17-private-half_20211218_205500-1985c9f0.pth')
yolox = _base_.model.detector
# the ByteTrack checkpoint stores the detector under 'detector.'
yolox.init_cfg = dict(type='Pretrained', checkpoint=bytetrack_checkpoint, prefix='detector.')

model = dict(
    type='EBMByteTrack',
    data_preprocessor=dict(batch_augments=None),  # the frozen detector is tested at one scale
    detector=dict(
        _delete_=True,
        type='EBMRefineDetector',
        detector=yolox,
        freeze_detector=True,
        ebm_head=dict(
            type='EBMBoxHead',
            num_classes=1,
            in_channels=320,  # YOLOX-X PAFPN
            reduced_channels=256,
            featmap_strides=[8, 16, 32],
            max_gt_per_batch=128),
        # ByteTrack's low-score detections take part in its second association: refine them too
        test_cfg=dict(max_per_img=200, score_thr=0.1)),
    tracker=dict(type='EBMByteTracker'))

# EBM head training: still images of MOT17 half-train and CrowdHuman at the test scale (no mosaic /
# mixup: the head learns the frozen detector's features of real frames)
img_scale = (1440, 800)
ebm_train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', size_divisor=32, pad_val=dict(img=(114.0, 114.0, 114.0))),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs')
]


def _coco(root, ann, img):
    return dict(type='CocoDataset', data_root=root, ann_file=ann, data_prefix=dict(img=img),
                filter_cfg=dict(filter_empty_gt=True, min_size=8), metainfo=dict(classes=('pedestrian', )),
                pipeline=ebm_train_pipeline)


train_dataloader = dict(
    _delete_=True,
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='ConcatDataset',
        datasets=[
            _coco('data/MOT17', 'annotations/half-train_cocoformat.json', 'train'),
            _coco('data/crowdhuman', 'annotations/crowdhuman_train.json', 'train'),
            _coco('data/crowdhuman', 'annotations/crowdhuman_val.json', 'val'),
        ]))
del _coco

max_epochs = 6
train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=max_epochs, val_begin=max_epochs,
                 val_interval=1)
optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer=dict(type='Adam', lr=1e-4))
param_scheduler = [dict(type='MultiStepLR', by_epoch=True, begin=0, end=max_epochs, milestones=[4, 5], gamma=0.1)]
# the stock YOLOX hooks switch the mosaic pipeline off and keep an EMA of the detector: not for a
# frozen detector under a plain pipeline
custom_hooks = []
default_hooks = dict(checkpoint=dict(_delete_=True, type='CheckpointHook', interval=1, max_keep_ckpts=2))
auto_scale_lr = dict(enable=False, base_batch_size=32)
del yolox
