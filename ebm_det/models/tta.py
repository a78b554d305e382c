"""Test-time augmentation that keeps the before/after fields of an ``EBMRefineDetector``."""
import torch
from mmdet.models.test_time_augs import DetTTAModel
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData
from mmcv.ops import batched_nms


@MODELS.register_module()
class EBMDetTTAModel(DetTTAModel):
    """mmdet's ``DetTTAModel`` (flip / multi-scale views merged by NMS) for an ``EBMRefineDetector``.

    mmdet's merge keeps only ``bboxes``, ``scores`` and ``labels``, so the detector's boxes
    (``bboxes_init``) would be lost and ``InitialPredictionMetric`` could not score them. Here the
    views are merged as mmdet merges them (boxes flipped back to the original image, NMS on the
    refined boxes, ``tta_cfg.max_per_img``), and each kept detection keeps its own detector box
    (flipped back the same way), ``scores_init`` and ``ebm_scores``: the before/after pair stays
    the same detections, as without TTA.

    Args: as ``DetTTAModel`` (``tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)``).

    Raises:
        ValueError: a view without ``bboxes_init`` (the wrapped model is not an EBM refine detector).
    """

    def _merge_single_sample(self, data_samples) -> DetDataSample:
        preds = [s.pred_instances for s in data_samples]
        metas = [s.metainfo for s in data_samples]
        if any('bboxes_init' not in p for p in preds):
            raise ValueError('EBMDetTTAModel merges the before/after fields of an EBMRefineDetector; a view has no '
                             "bboxes_init: wrap the model with mmdet's DetTTAModel instead")
        bboxes, scores = self.merge_aug_bboxes([p.bboxes for p in preds], [p.scores for p in preds], metas)
        if bboxes.numel() == 0:
            return data_samples[0]
        init = self.merge_aug_bboxes([p.bboxes_init for p in preds], None, metas)
        labels = torch.cat([p.labels for p in preds])
        _, keep = batched_nms(bboxes, scores, labels, self.tta_cfg.nms)
        keep = keep[:self.tta_cfg.max_per_img]
        merged = InstanceData(bboxes=bboxes[keep], scores=scores[keep], labels=labels[keep], bboxes_init=init[keep])
        for field in ('scores_init', 'ebm_scores', 'ebm_init_scores'):
            if all(field in p for p in preds):
                merged[field] = torch.cat([p[field] for p in preds])[keep]
        result = data_samples[0]
        result.pred_instances = merged
        return result
