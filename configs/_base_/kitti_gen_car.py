# Dataset settings for the generated KITTI-format LiDAR scenes (python -m ebm_det.synthetic.kitti_scenes),
# Car only, for CPU-scale runs:
#
#     python -m ebm_det.synthetic.kitti_scenes --out data/kitti_gen --num-train 350 --num-val 100
#
# (tools/benchmarks/kitti_3d.py generates these and holds the last 50 training frames out to choose
# the step size: kitti_infos_fit.pkl / kitti_infos_tune.pkl)
#
# The generator writes file names only into its info files, hence the data_prefix below. There
# are no kitti_dbinfos (no GT sampling / ObjectSample); augmentation is light: a BEV flip, a
# small global rotation and scaling. num_workers=0: on a 2-core machine a loader process fights
# the main one.
dataset_type = 'KittiDataset'
data_root = 'data/kitti_gen/'
class_names = ['Car']
point_cloud_range = [0, -20, -3, 40, 20, 1]
input_modality = dict(use_lidar=True, use_camera=False)
metainfo = dict(classes=class_names)
data_prefix = dict(pts='training/velodyne', img='training/image_2')
backend_args = None

train_pipeline = [
    dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=4, use_dim=4, backend_args=backend_args),
    dict(type='LoadAnnotations3D', with_bbox_3d=True, with_label_3d=True),
    dict(type='RandomFlip3D', flip_ratio_bev_horizontal=0.5),
    dict(type='GlobalRotScaleTrans', rot_range=[-0.3927, 0.3927], scale_ratio_range=[0.95, 1.05]),
    dict(type='PointsRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='ObjectRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='PointShuffle'),
    dict(type='Pack3DDetInputs', keys=['points', 'gt_bboxes_3d', 'gt_labels_3d'])
]
test_pipeline = [
    dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=4, use_dim=4, backend_args=backend_args),
    dict(type='PointsRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='Pack3DDetInputs', keys=['points'])
]

train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='kitti_infos_train.pkl',
        data_prefix=data_prefix,
        pipeline=train_pipeline,
        modality=input_modality,
        test_mode=False,
        metainfo=metainfo,
        box_type_3d='LiDAR',
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='kitti_infos_val.pkl',
        data_prefix=data_prefix,
        pipeline=test_pipeline,
        modality=input_modality,
        test_mode=True,
        metainfo=metainfo,
        box_type_3d='LiDAR',
        backend_args=backend_args))
test_dataloader = val_dataloader

# metric='bbox': Car 2D / BEV / 3D AP11 and AP40 at IoU 0.7 (and the 0.5 row); its BEV/3D IoU runs on
# the CPU where CUDA is absent (ebm_det.evaluation.kitti_iou_backend, logged once)
custom_imports = dict(imports=['ebm_det.evaluation.kitti_iou_backend'], allow_failed_imports=False)
val_evaluator = dict(type='KittiMetric', ann_file=data_root + 'kitti_infos_val.pkl', metric='bbox',
                     backend_args=backend_args)
test_evaluator = val_evaluator
