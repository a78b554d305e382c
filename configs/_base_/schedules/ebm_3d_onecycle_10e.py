# The ebms_3dod EBM head schedule on a frozen detector: Adam with a one-cycle learning rate peaking
# at 3e-3 (cosine up from 3e-3 / 25 over 30 % of the run, cosine down to 3e-7), written as two
# CosineAnnealingLR like the stock cyclic KITTI schedules (OneCycleLR pickles a bound method into
# checkpoints, which torch's weights-only unpickler refuses). 10 epochs of the stock x2-repeated
# train set (20 passes): shorter than the detectors' schedules, the frozen detector only runs
# forward. A named piece (see ebm_2d_60k.py for why).
ebm_3d_onecycle_10e = dict(
    train_cfg=dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=10, val_interval=10),
    optim_wrapper=dict(_delete_=True, type='OptimWrapper', optimizer=dict(type='Adam', lr=3e-3 / 25)),
    param_scheduler=[
        dict(type='CosineAnnealingLR', T_max=3, eta_min=3e-3, begin=0, end=3, by_epoch=True,
             convert_to_iter_based=True),
        dict(type='CosineAnnealingLR', T_max=7, eta_min=3e-3 * 1e-4, begin=3, end=10, by_epoch=True,
             convert_to_iter_based=True),
    ])
