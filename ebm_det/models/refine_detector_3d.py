"""A wrapper that adds EBM refinement of 7-D boxes to any MMDetection3D detector with a BEV map."""
from typing import List, Optional

from mmdet3d.models.detectors import MVXTwoStageDetector
from mmdet3d.registry import MODELS
from mmdet3d.structures import Det3DDataSample

from .refine_detector import EBMRefineDetector


@MODELS.register_module()
class EBMRefineDetector3D(EBMRefineDetector):
    """Any mmdet3d detector with a BEV map plus an ``EBMBoxHead3D``: the single-branch family
    (``VoxelNet``: PointPillars, SECOND, ...) and the MVX family (``MVXTwoStageDetector``:
    CenterPoint, MVXNet), whose point branch is named ``pts_backbone`` / ``pts_neck`` and whose
    ``extract_feat`` takes the batch's metainfo and returns ``(img_feats, pts_feats)``.

    Same arguments as ``EBMRefineDetector``; the EBM reads the detector's neck output (its BEV
    map; the MVX family's ``pts_neck``, or ``pts_backbone`` without one), and ``test_cfg`` is the
    same ``RefineConfig`` (step sizes default to ebms_3dod's 2e-4). Box columns past the 7th
    (CenterPoint's velocities on nuScenes) pass through refinement unchanged.
    ``head_updates`` works as in 2D (the voxelised batch goes once through the frozen detector's
    ``extract_feat``); ``feature_cache`` must stay 0 (a ValueError otherwise): it keys features
    by image tensors, and the inputs here are a dict of points / voxels.

    Prediction is 2D's ``detect`` (the detector's own ``predict``, its features, the same
    ``refine_instances``): after the detector's NMS every box of the batch is refined in one call. ``pred_instances_3d.bboxes_3d`` are the refined boxes (the
    detector's box type, yaw wrapped, sizes positive); ``bboxes_3d_init`` and ``scores_3d_init``
    keep the detector's; ``ebm_scores`` holds f (-inf for boxes left unrefined).
    """

    def __init__(self, *args, feature_cache: int = 0, **kwargs) -> None:
        if feature_cache != 0:
            raise ValueError(f'{type(self).__name__}: feature_cache={feature_cache!r}, but the feature cache keys '
                             'features by image tensors and the inputs of a 3D detector are a dict (points, voxels); '
                             'leave feature_cache at 0 (head_updates > 1 still saves detector forwards)')
        super().__init__(*args, **kwargs)

    def rescale(self, results):
        """LiDAR boxes have one frame: nothing to do."""
        return results

    def extract_feat(self, batch_inputs_dict: dict, batch_data_samples: Optional[List[Det3DDataSample]] = None):
        """The detector's BEV features: its ``extract_feat``; for the MVX family, the point branch's
        features (``pts_feats``), given the batch's metainfo as its ``extract_feat`` needs."""
        if isinstance(self.detector, MVXTwoStageDetector):
            metas = [s.metainfo for s in batch_data_samples] if batch_data_samples is not None else None
            _, pts_feats = self.detector.extract_feat(batch_inputs_dict, metas)
            return pts_feats
        return self.detector.extract_feat(batch_inputs_dict)

    def ground_truth_in_input_frame(self, boxes, metainfo: dict):
        """LiDAR ground truth is already in the frame of the features."""
        return self.ebm_head.codec.to_tensor(boxes)
