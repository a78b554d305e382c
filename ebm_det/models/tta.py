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

    The merged predictions are in the original, unflipped image, so the merged data sample is the
    first unflipped view's (``metainfo['flip']`` False): its ground truth, metainfo and validation
    loss (``ebm_val_loss``) are those of a test without TTA. mmdet's ``DetTTAModel`` returns the
    first view's, which under mmdet's default flip TTA (``RandomFlip(prob=1.)`` first) carries the
    mirrored ground truth, so every metric that reads it (``RefinementLocalisationMetric``,
    ``ebm/val_loss``) would compare against the wrong boxes.

    Args: as ``DetTTAModel`` (``tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)``).

    Raises:
        ValueError: a view without ``bboxes_init`` (the wrapped model is not an EBM refine
            detector); no unflipped view (add ``RandomFlip(prob=0.)`` to the TTA pipeline's flips).
    """

    def _merge_single_sample(self, data_samples) -> DetDataSample:
        preds = [s.pred_instances for s in data_samples]
        metas = [s.metainfo for s in data_samples]
        if any('bboxes_init' not in p for p in preds):
            raise ValueError('EBMDetTTAModel merges the before/after fields of an EBMRefineDetector; a view has no '
                             "bboxes_init: wrap the model with mmdet's DetTTAModel instead")
        result = self.reference_view(data_samples)
        bboxes, scores = self.merge_aug_bboxes([p.bboxes for p in preds], [p.scores for p in preds], metas)
        if bboxes.numel() == 0:
            return result
        init = self.merge_aug_bboxes([p.bboxes_init for p in preds], None, metas)
        labels = torch.cat([p.labels for p in preds])
        _, keep = batched_nms(bboxes, scores, labels, self.tta_cfg.nms)
        keep = keep[:self.tta_cfg.max_per_img]
        merged = InstanceData(bboxes=bboxes[keep], scores=scores[keep], labels=labels[keep], bboxes_init=init[keep])
        for field in ('scores_init', 'ebm_scores', 'ebm_init_scores'):
            if all(field in p for p in preds):
                merged[field] = torch.cat([p[field] for p in preds])[keep]
        result.pred_instances = merged
        return result

    @staticmethod
    def reference_view(data_samples) -> DetDataSample:
        """The first view that is not flipped (``metainfo.get('flip', False)``): the frame of the
        merged predictions. Raises ValueError if every view is flipped."""
        for sample in data_samples:
            if not sample.metainfo.get('flip', False):
                return sample
        raise ValueError(f'EBMDetTTAModel: all {len(data_samples)} views of an image are flipped, so none carries the '
                         'ground truth and metainfo of the original image that the merged predictions are in; add '
                         "dict(type='RandomFlip', prob=0.) to the flips of the TTA pipeline")
