# Cascade R-CNN (3 stages) on the generated shapes: the peer of faster-rcnn_r18_fpn_shapes.py + EBM
# refinement (the same half-width R18-FPN, RPN, data and schedule; only the box head differs).
# tools/benchmarks/cascade_2d.py trains both for the same time.
_base_ = ['./faster-rcnn_r18_fpn_shapes.py', './_base_/models/cascade-rcnn_shapes.py']
model = dict(type='CascadeRCNN', roi_head={{_base_.cascade_roi_head}},
             train_cfg=dict(rcnn={{_base_.cascade_rcnn_train_cfg}}))
