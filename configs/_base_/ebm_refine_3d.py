# Refinement of the LiDAR EBM configs: ebms_3dod's T = 10 ascent steps. RefineConfig's own default,
# T = 5, is the 2D configs' (the same AP as 10 at half the time, docs/figures/refine_levers_steps.md);
# the 3D configs were not measured at fewer steps. Every other setting is RefineConfig's default
# (lambda: LiDARBoxCodec.default_step_sizes). A named piece: model=dict(test_cfg=_base_.ebm_refine_3d).
ebm_refine_3d = dict(num_steps=10)
