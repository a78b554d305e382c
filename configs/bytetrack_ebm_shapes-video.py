# CPU scale: ByteTrack with EBM refinement of detections (EBMRefineDetector) and of Kalman-predicted
# track boxes before association (EBMByteTracker), on generated shapes video
# (python -m ebm_det.synthetic.mot_video). The detector + EBM are the 2D shapes models
# (faster-rcnn_r18_fpn_ebm-nceplus_shapes.py; the video's objects are the same shapes); load their
# checkpoint with MMDetection's tracking test tool:
#
#   python -m ebm_det.synthetic.mot_video --out data/mot_gen --splits val
#   python $(python -c "import mmdet,os;print(os.path.dirname(mmdet.__file__))")/.mim/tools/test_tracking.py \
#       configs/bytetrack_ebm_shapes-video.py --detector work_dirs/demo/ebm/iter_300.pth
#
# Without refinement, same detector and tracker: --cfg-options model.detector.test_cfg.enabled=False
# model.tracker.ebm.enabled=False
_base_ = ['./faster-rcnn_r18_fpn_ebm-nceplus_shapes.py']
custom_imports = dict(imports=['ebm_det', 'ebm_det.tracking'], allow_failed_imports=False)

detector = _base_.model
model = dict(
    _delete_=True,
    type='EBMByteTrack',
    data_preprocessor=dict(
        type='TrackDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32),
    detector=detector,
    tracker=dict(
        type='EBMByteTracker',
        motion=dict(type='KalmanFilter'),
        obj_score_thrs=dict(high=0.6, low=0.1),
        init_track_thr=0.7,
        weight_iou_with_det_scores=True,
        match_iou_thrs=dict(high=0.1, low=0.5, tentative=0.3),
        num_frames_retain=30))  # EBMByteTracker's ebm options and track_refine_cfg: the defaults

data_root = 'data/mot_gen/'
image_size = (256, 256)
test_pipeline = [
    dict(
        type='TransformBroadcaster',
        transforms=[
            dict(type='LoadImageFromFile', backend_args=None),
            dict(type='Resize', scale=image_size, keep_ratio=True),
            dict(type='LoadTrackAnnotations'),
        ]),
    dict(type='PackTrackInputs')
]
# the detector and its EBM are trained on still images with the 2D shapes configs
train_dataloader = None
train_cfg = None
optim_wrapper = None
param_scheduler = None
val_dataloader = dict(
    _delete_=True,
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='TrackImgSampler'),  # frame by frame, in order, one video after another
    dataset=dict(
        type='MOTChallengeDataset',
        data_root=data_root,
        ann_file='annotations/val_cocoformat.json',
        data_prefix=dict(img_path='val'),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
val_evaluator = dict(_delete_=True, type='MOTChallengeMetric', metric=['HOTA', 'CLEAR', 'Identity'])
test_evaluator = val_evaluator

default_hooks = dict(visualization=dict(type='TrackVisualizationHook', draw=False))
visualizer = dict(type='TrackLocalVisualizer', vis_backends=[dict(type='LocalVisBackend')], name='visualizer')
del detector
