"""A wrapper that adds EBM refinement of 7-D boxes to any MMDetection3D detector with a BEV map."""
from typing import List, Optional

from mmdet3d.registry import MODELS
from mmdet3d.structures import Det3DDataSample

from .refine_detector import EBMRefineDetector, detect_with_features


@MODELS.register_module()
class EBMRefineDetector3D(EBMRefineDetector):
    """Any mmdet3d detector (PointPillars, SECOND, CenterPoint, ...) plus an ``EBMBoxHead3D``.

    Same arguments as ``EBMRefineDetector``; the EBM reads the detector's neck output (its BEV
    map), and ``test_cfg`` is the same ``RefineConfig`` (step sizes default to ebms_3dod's 2e-4).
    ``head_updates`` works as in 2D (the voxelised batch goes once through the frozen detector's
    ``extract_feat``); ``feature_cache`` must stay 0 (a ValueError otherwise): it keys features
    by image tensors, and the inputs here are a dict of points / voxels.

    Prediction refines, after the detector's NMS, every box of the batch in one call (the same
    ``refine_instances`` as 2D). ``pred_instances_3d.bboxes_3d`` are the refined boxes (the
    detector's box type, yaw wrapped, sizes positive); ``bboxes_3d_init`` and ``scores_3d_init``
    keep the detector's; ``ebm_scores`` holds f (-inf for boxes left unrefined).
    """

    def __init__(self, *args, feature_cache: int = 0, **kwargs) -> None:
        if feature_cache != 0:
            raise ValueError(f'{type(self).__name__}: feature_cache={feature_cache!r}, but the feature cache keys '
                             'features by image tensors and the inputs of a 3D detector are a dict (points, voxels); '
                             'leave feature_cache at 0 (head_updates > 1 still saves detector forwards)')
        super().__init__(*args, **kwargs)

    def detect(self, batch_inputs_dict: dict, batch_data_samples: List[Det3DDataSample], rescale: bool = True,
               refine: Optional[bool] = None, **kwargs):
        """As ``EBMRefineDetector.detect``; LiDAR boxes have one frame, so ``rescale`` is unused."""
        results, feats = detect_with_features(self.detector, batch_inputs_dict, batch_data_samples, **kwargs)
        if refine is not False:
            self.refine(feats, results, self.refine_cfg.replace(enabled=True) if refine else None)
        return results, feats

    def rescale(self, results):
        return results

    def ground_truth_in_input_frame(self, boxes, metainfo: dict):
        """LiDAR ground truth is already in the frame of the features."""
        return self.ebm_head.codec.to_tensor(boxes)

    def predict(self, batch_inputs_dict: dict, batch_data_samples: List[Det3DDataSample], **kwargs):
        results, feats = self.detect(batch_inputs_dict, batch_data_samples, **kwargs)
        return self.attach_val_loss(feats, batch_data_samples, results)
