# CPU scale: a small PointPillars (Car) trained from scratch on the generated KITTI-format scenes
# (configs/_base_/kitti_gen_car.py). Its boxes are what pointpillars_ebm-nce_kitti-gen_car.py
# refines.
#
# Versus the stock pointpillars_hv_secfpn_8xb6-160e_kitti-3d-car.py: a 40 x 40 m range
# ([0, -20, -3, 40, 20, 1]), 0.25 m pillars of at most 16 points (a 160 x 160 grid instead of
# 432 x 496 at 0.16 m; the generated frames have ~3.6k pillars of ~6 points), half the channels
# and fewer blocks (pillar features 32; SECOND 32/64/128 with 1/2/2 extra convs instead of
# 64/128/256 with 3/5/5; SECONDFPN 3 x 64 = 192 channels at half the pillar resolution: an
# 80 x 80 BEV map of 0.5 m cells covering the same 40 x 40 m), one Car anchor sized for the
# generator's cars, batch 2 and iteration-based one-cycle AdamW training.
_base_ = [
    'mmdet3d::_base_/models/pointpillars_hv_secfpn_kitti.py', './_base_/kitti_gen_car.py',
    'mmdet3d::_base_/default_runtime.py'
]
point_cloud_range = [0, -20, -3, 40, 20, 1]
voxel_size = [0.25, 0.25, 4]

model = dict(
    data_preprocessor=dict(
        voxel_layer=dict(max_num_points=16, point_cloud_range=point_cloud_range, voxel_size=voxel_size,
                         max_voxels=(16000, 16000))),
    voxel_encoder=dict(feat_channels=[32], voxel_size=voxel_size, point_cloud_range=point_cloud_range),
    middle_encoder=dict(in_channels=32, output_shape=[160, 160]),  # (ny, nx)
    backbone=dict(in_channels=32, layer_nums=[1, 2, 2], layer_strides=[2, 2, 2], out_channels=[32, 64, 128]),
    neck=dict(in_channels=[32, 64, 128], upsample_strides=[1, 2, 4], out_channels=[64, 64, 64]),
    bbox_head=dict(
        num_classes=1,
        in_channels=192,
        feat_channels=192,
        anchor_generator=dict(
            _delete_=True,
            type='AlignedAnchor3DRangeGenerator',
            # the generator's ground is at z = -1.73 m; cars are 3.5-4.8 x 1.5-1.9 x 1.4-1.7 m
            ranges=[[0, -20, -1.73, 40, 20, -1.73]],
            sizes=[[4.15, 1.7, 1.55]],
            rotations=[0, 1.57],
            reshape_out=True)),
    train_cfg=dict(
        _delete_=True,
        assigner=dict(
            type='Max3DIoUAssigner',
            iou_calculator=dict(type='BboxOverlapsNearest3D'),
            pos_iou_thr=0.6,
            neg_iou_thr=0.45,
            min_pos_iou=0.45,
            ignore_iof_thr=-1),
        allowed_border=0,
        pos_weight=-1,
        debug=False))

# 3000 iterations: 9.9 min on 2 CPU cores, Car BEV AP40 (moderate, IoU 0.7) 88.2 on the generated
# val frames (tools/benchmarks/kitti_3d.py; 300 iterations gave 7.2)
max_iters = 3000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# one cycle (as the stock cyclic KITTI schedules, whose checkpoints load under torch's weights-only
# unpickler, unlike OneCycleLR's): cosine up from lr to 10 x lr over 30 %, then cosine down
lr = 2e-4
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=lr, betas=(0.95, 0.99), weight_decay=0.01),
                     clip_grad=dict(max_norm=35, norm_type=2))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=int(0.3 * max_iters), eta_min=lr * 10, begin=0,
         end=int(0.3 * max_iters), by_epoch=False),
    dict(type='CosineAnnealingLR', T_max=max_iters - int(0.3 * max_iters), eta_min=lr * 1e-2,
         begin=int(0.3 * max_iters), end=max_iters, by_epoch=False),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
