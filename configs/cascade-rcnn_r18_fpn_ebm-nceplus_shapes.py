# The NCE+ EBM head of faster-rcnn_r18_fpn_ebm-nceplus_shapes.py on a frozen Cascade R-CNN
# (cascade-rcnn_r18_fpn_shapes.py): refines the third stage's boxes. Set the detector's checkpoint
# with --cfg-options model.detector_checkpoint=PATH.
_base_ = ['./faster-rcnn_r18_fpn_ebm-nceplus_shapes.py', './_base_/models/cascade-rcnn_shapes.py']
model = dict(detector=dict(type='CascadeRCNN', roi_head={{_base_.cascade_roi_head}},
                           train_cfg=dict(rcnn={{_base_.cascade_rcnn_train_cfg}})))
