"""Metrics of the refinement itself, for the Runner's logs, ``save_best`` and early stopping."""
from typing import Optional, Sequence, Tuple

import torch
from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS

from .initial_metric import require_initial_fields, warn_if_worse


@METRICS.register_module()
class EBMLossMetric(BaseMetric):
    """The EBM's loss on fixed noise samples around the evaluated set's ground truth
    (``EBMRefineDetector(val_loss=True)`` writes it per image): ``ebm/val_loss``, the mean over
    the valid ground-truth boxes. Lower is better (mmengine's ``CheckpointHook(save_best=
    'ebm/val_loss')`` infers ``rule='less'`` from the name; give ``EarlyStoppingHook``
    ``rule='less'``).

    One result per data sample, in the order of the samples (an image without ground truth gives
    ``(0.0, 0)``), as mmengine expects: under a distributed sampler the padding copies at the end
    are cut off by ``collect_results``, so the value is the same for any number of processes (and,
    each image's loss being computed on its own, for any batch size).

    Raises:
        ValueError: at the first sample that has ground truth but no loss (the model's
            ``val_loss`` is off, or it is not an ``EBMRefineDetector``); at the end, when no sample
            carried a loss (the test pipeline does not load ground truth).
    """
    default_prefix = 'ebm'

    def __init__(self, collect_device: str = 'cpu', prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            has_gt = any(len(sample.get(k, {}).get(b, ()))
                         for k, b in (('gt_instances', 'bboxes'), ('gt_instances_3d', 'bboxes_3d')))
            if has_gt and 'ebm_val_num_gt' not in sample:
                raise ValueError('EBMLossMetric: the predictions carry no EBM validation loss: set model.val_loss=True '
                                 '(an EBMRefineDetector)')
            num_gt = int(sample.get('ebm_val_num_gt', 0)) if 'ebm_val_loss' in sample else 0
            self.results.append((float(sample['ebm_val_loss']) if num_gt else 0.0, num_gt))

    def compute_metrics(self, results: list) -> dict:
        total = sum(n for _, n in results)
        if not total:
            raise ValueError('EBMLossMetric: no prediction carried ebm_val_loss: set model.val_loss=True (an '
                             'EBMRefineDetector) and load ground truth in the test pipeline (LoadAnnotations after '
                             'Resize, as mmdet does)')
        return dict(val_loss=sum(loss * n for loss, n in results) / total)


@METRICS.register_module()
class RefinementLocalisationMetric(BaseMetric):
    """How refinement moved the detections that found an object (2D boxes): each prediction whose
    detector score (``scores_init``) is at least ``score_thr`` and whose initial box
    (``bboxes_init``) overlaps a ground-truth box of its class with IoU >= ``iou_thr`` is matched
    to that box (the highest IoU); its IoU with it before and after refinement is compared.

    Results (prefix ``refine``): ``matched`` (count), ``iou_init`` and ``iou`` (mean IoU of the
    matched detections before and after), ``iou_gain`` (their difference), ``worse`` and
    ``better`` (the share whose IoU fell or rose). A WARNING is logged when refinement lowers the
    mean IoU. Ground truth comes from each data sample's ``gt_instances`` in the original image
    frame, as mmdet's ``VOCMetric`` reads it (test pipelines load annotations after ``Resize``);
    IoU is mmdet's ``bbox_overlaps``.

    Raises:
        ValueError: a prediction without ``*_init`` fields (not from an EBM refine detector) or a
            sample without ``gt_instances``.
    """
    default_prefix = 'refine'

    def __init__(self, score_thr: float = 0.3, iou_thr: float = 0.5, collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.score_thr, self.iou_thr = score_thr, iou_thr

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            matched = match_refined_detections(sample, self.score_thr, self.iou_thr)
            self.results.append((matched['iou_init'], matched['iou']))

    def compute_metrics(self, results: list) -> dict:
        before = torch.cat([b for b, _ in results]) if results else torch.zeros(0)
        after = torch.cat([a for _, a in results]) if results else torch.zeros(0)
        if not len(before):
            nan = float('nan')
            return dict(matched=0, iou_init=nan, iou=nan, iou_gain=nan, worse=nan, better=nan)
        out = dict(matched=len(before), iou_init=float(before.mean()), iou=float(after.mean()),
                   worse=float((after < before).float().mean()), better=float((after > before).float().mean()))
        out['iou_gain'] = out['iou'] - out['iou_init']
        warn_if_worse([('the mean IoU of matched detections', out['iou_init'], out['iou'])],
                      f"{out['matched']} detections, {100 * out['worse']:.0f}% moved away from their object")
        return out


def best_overlaps(boxes: torch.Tensor, others: torch.Tensor,
                  allowed: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each box's best partner among ``others`` by IoU (mmdet's ``bbox_overlaps``): the matching
    rule of ``match_refined_detections``, also the tracking benchmark's (GT boxes against
    detections) and its single-object tracker's (predictions against detections).

    Args:
        boxes: (N, 4) and others: (M, 4), M >= 1, both (x1, y1, x2, y2) in the same pixels.
        allowed: (N, M) bool, the pairs that may match (e.g. the same class); None: every pair.
    Returns:
        (N,) the best IoU (-1 where no pair is allowed) and (N,) the index into ``others`` of that
        partner.
    """
    from mmdet.structures.bbox import bbox_overlaps
    ious = bbox_overlaps(boxes, others)
    if allowed is not None:
        ious = torch.where(allowed, ious, torch.tensor(-1.0, dtype=ious.dtype))
    return ious.max(1)


def match_refined_detections(sample: dict, score_thr: float = 0.3, iou_thr: float = 0.5) -> dict:
    """The detections of one data-sample dict (2D, ``to_dict()`` of a refine detector's result with
    ``gt_instances``) that found an object: detector score (``scores_init``) >= ``score_thr`` and
    initial box IoU >= ``iou_thr`` with a ground-truth box of the same class (the best one).

    Returns:
        dict of (K,) CPU tensors for the K matched detections: ``index`` (into the predictions),
        ``labels``, ``iou_init`` and ``iou`` (IoU with the matched box before and after
        refinement, mmdet's ``bbox_overlaps``) and ``gain`` (f at the refined box minus f at the
        detector's box, from ``ebm_scores``/``ebm_init_scores``; -inf where not refined, NaN if the
        prediction has no ``ebm_init_scores``).
    Raises:
        ValueError: no ``*_init`` fields, or no ``gt_instances``.
    """
    from mmdet.structures.bbox import bbox_overlaps
    require_initial_fields(sample)
    if 'gt_instances' not in sample:
        raise ValueError('matching refined detections needs gt_instances in the data samples: load annotations in '
                         'the test pipeline (after Resize, as mmdet does)')
    pred, gt = sample['pred_instances'], sample['gt_instances']
    gt_boxes = gt['bboxes'].tensor if hasattr(gt['bboxes'], 'tensor') else torch.as_tensor(gt['bboxes'])
    gt_boxes = gt_boxes.reshape(-1, 4).float().cpu()
    init, boxes = pred['bboxes_init'].float().cpu().reshape(-1, 4), pred['bboxes'].float().cpu().reshape(-1, 4)
    labels = pred['labels'].cpu()
    if len(gt_boxes) and len(init):
        best, j = best_overlaps(init, gt_boxes, labels[:, None] == torch.as_tensor(gt['labels']).cpu()[None])
        keep = (pred['scores_init'].cpu() >= score_thr) & (best >= iou_thr)
    else:
        best, j = torch.zeros(len(init)), torch.zeros(len(init), dtype=torch.long)
        keep = torch.zeros(len(init), dtype=torch.bool)
    index = keep.nonzero()[:, 0]
    after = bbox_overlaps(boxes[index], gt_boxes[j[index]], is_aligned=True) if len(index) else torch.zeros(0)
    if 'ebm_init_scores' in pred:
        gain = (pred['ebm_scores'].float().cpu() - pred['ebm_init_scores'].float().cpu())[index]
        gain = torch.where(torch.isfinite(pred['ebm_scores'].cpu()[index]), gain, torch.tensor(float('-inf')))
    else:
        gain = torch.full((len(index), ), float('nan'))
    return dict(index=index, labels=labels[index], iou_init=best[index], iou=after, gain=gain)
