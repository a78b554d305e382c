"""A StandardRoIHead that trains and applies an EBM box head (the Faster R-CNN family)."""
from typing import List, Tuple

import torch
from mmcv.ops import batched_nms
from mmdet.models.roi_heads import StandardRoIHead
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox_overlaps
from mmdet.utils import ConfigType, InstanceList
from torch import Tensor

from ebm_det.core import RefineConfig
from .refine_detector import detector_num_classes, refine_instances, rescale_to_original


@MODELS.register_module()
class EBMRoIHead(StandardRoIHead):
    """StandardRoIHead + ``EBMBoxHead``: the EBM loss on samples around each GT box in training,
    and refinement of the final boxes in prediction.

    Args:
        ebm_head: config of an ``EBMBoxHead``; a per-class head must score every class of
            ``bbox_head`` (else a ValueError when built). A checkpoint without its weights (a plain
            Faster R-CNN's) is refused by the head when loaded for inference (``BaseEBMHead``).
        ebm_test_cfg: refinement settings, a ``RefineConfig`` as ``EBMRefineDetector``'s
            ``test_cfg`` (checked when built).
        nms_by_ebm: the paper's order (False by default): the per-class boxes before NMS are
            suppressed ranked by f (IoU ``nms_iou``), each kept box taking the maximum class
            score of its cluster, and only then refined.
        nms_iou: IoU threshold of that NMS (0.5).
        **kwargs: StandardRoIHead's arguments.
    """

    def __init__(self, ebm_head: ConfigType, ebm_test_cfg: dict = None, nms_by_ebm: bool = False,
                 nms_iou: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ebm_head = MODELS.build(ebm_head)
        self.ebm_head.check_covers_classes(detector_num_classes(self), f'{type(self).__name__}.bbox_head')
        self.refine_cfg = RefineConfig.build(ebm_test_cfg).check_num_classes(
            getattr(self.ebm_head, 'num_classes', None), 'ebm_test_cfg')
        self.nms_by_ebm = nms_by_ebm
        self.nms_iou = nms_iou

    def loss(self, x: Tuple[Tensor], rpn_results_list: InstanceList, batch_data_samples: SampleList) -> dict:
        losses = super().loss(x, rpn_results_list, batch_data_samples)
        losses.update(self.ebm_head.loss(x, [s.gt_instances.bboxes for s in batch_data_samples],
                                         [s.gt_instances.labels for s in batch_data_samples]))
        return losses

    def predict_bbox(self, x: Tuple[Tensor], batch_img_metas: List[dict], rpn_results_list: InstanceList,
                     rcnn_test_cfg: ConfigType, rescale: bool = False) -> InstanceList:
        if self.nms_by_ebm:
            raw = super().predict_bbox(x, batch_img_metas, rpn_results_list, None, rescale=False)
            results = [self._nms_by_ebm(x, r, i, rcnn_test_cfg) for i, r in enumerate(raw)]
        else:
            results = super().predict_bbox(x, batch_img_metas, rpn_results_list, rcnn_test_cfg, rescale=False)
        refine_instances(self.ebm_head, x, results, batch_img_metas, self.refine_cfg)
        if rescale:
            for r, meta in zip(results, batch_img_metas):
                rescale_to_original(r, meta['scale_factor'])
        return results

    def _nms_by_ebm(self, x, raw, img_id: int, rcnn_test_cfg):
        """Per-class candidates -> NMS ranked by f -> each kept box takes its cluster's maximum
        class score (the official ebms_regression order)."""
        num_classes = self.bbox_head.num_classes
        boxes = raw.bboxes.reshape(len(raw), -1, 4)
        if boxes.shape[1] == 1:  # class-agnostic regression
            boxes = boxes.expand(-1, num_classes, -1)
        scores = raw.scores[:, :num_classes]
        keep = scores > rcnn_test_cfg.score_thr
        cand, cls_scores = boxes[keep], scores[keep]
        labels = keep.nonzero()[:, 1]
        feats = self.ebm_head.prepare_features(x)
        with torch.no_grad():
            f = self.ebm_head.score(feats, cand, torch.full_like(labels, img_id), labels,
                                    levels=self.ebm_head.map_levels(cand))
        _, kept = batched_nms(cand, f, labels, dict(type='nms', iou_threshold=self.nms_iou))
        kept = kept[:rcnn_test_cfg.max_per_img]
        iou = bbox_overlaps(cand[kept], cand)
        same = (labels[kept][:, None] == labels[None]) & (iou > self.nms_iou)
        cluster_max = torch.where(same, cls_scores[None], torch.zeros_like(iou)).amax(1)
        out = raw.__class__()
        out.bboxes, out.scores, out.labels = cand[kept], torch.maximum(cluster_max, cls_scores[kept]), labels[kept]
        return out
