# CPU scale: SORT (mmdet's DeepSORT without re-ID) with EBM refinement of detections and of the
# track boxes it associates by IoU (EBMSORTTracker), on generated shapes video. Data, detector and
# usage as bytetrack_ebm_shapes-video.py:
#
#   python $(python -c "import mmdet,os;print(os.path.dirname(mmdet.__file__))")/.mim/tools/test_tracking.py \
#       configs/sort_ebm_shapes-video.py --detector work_dirs/demo/ebm/iter_300.pth
_base_ = ['./bytetrack_ebm_shapes-video.py']

model = dict(
    type='EBMDeepSORT',
    tracker=dict(
        _delete_=True,
        type='EBMSORTTracker',
        motion=dict(type='KalmanFilter', center_only=False),
        obj_score_thr=0.5,
        match_iou_thr=0.5,
        reid=None,
        num_frames_retain=30))
