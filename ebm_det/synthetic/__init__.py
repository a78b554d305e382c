"""Seeded generated data sets for tests, the demo and the benchmarks, each a module with a CLI:

    python -m ebm_det.synthetic.coco_shapes --out data/shapes ...     # COCO-format 2D shapes
    python -m ebm_det.synthetic.kitti_scenes --out data/kitti_gen ...  # KITTI-format LiDAR scenes
    python -m ebm_det.synthetic.mot_video --out data/mot_gen ...      # MOTChallenge-format videos

``import ebm_det`` does not import this package (it needs no generator); import a module by name.
"""
