# The three-stage Cascade R-CNN box head of mmdet's cascade-rcnn_r50_fpn.py (stage IoU 0.5 / 0.6 /
# 0.7, stage loss weights 1 / 0.5 / 0.25, regression stds halved per stage, class-agnostic boxes)
# at the width of the shapes detector (64-channel FPN, fc 256, 5 classes, 128 RoIs per image and
# stage). Read by cascade-rcnn_r18_fpn_shapes.py and cascade-rcnn_r18_fpn_ebm-nceplus_shapes.py.
cascade_roi_head = dict(
    type='CascadeRoIHead',
    num_stages=3,
    stage_loss_weights=[1, 0.5, 0.25],
    bbox_roi_extractor=dict(type='SingleRoIExtractor', roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
                            out_channels=64, featmap_strides=[4, 8, 16, 32]),
    bbox_head=[
        dict(type='Shared2FCBBoxHead', in_channels=64, fc_out_channels=256, roi_feat_size=7, num_classes=5,
             bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=stds),
             reg_class_agnostic=True,
             loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
             loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))
        for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
    ])
cascade_rcnn_train_cfg = [
    dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou,
                       match_low_quality=False, ignore_iof_thr=-1),
         sampler=dict(type='RandomSampler', num=128, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
         pos_weight=-1, debug=False)
    for iou in (0.5, 0.6, 0.7)
]
