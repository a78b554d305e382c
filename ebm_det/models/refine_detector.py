"""A wrapper that adds EBM box refinement to any MMDetection detector."""
import copy
import os
from typing import List, Optional, Tuple

import torch
from mmdet.models.detectors.base import BaseDetector
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.structures.bbox import get_box_tensor
from mmdet.utils import ConfigType, OptConfigType
from mmengine.runner import load_checkpoint
from torch import Tensor


def capture_features(module: torch.nn.Module) -> list:
    """Keep the latest output of ``module`` (the neck, or the backbone without one) in a list,
    so the inner detector runs once and its features feed the EBM."""
    store = []

    def hook(_mod, _inp, out):
        store[:] = [out]

    module.register_forward_hook(hook)
    return store


def select_for_refinement(scores: Tensor, valid: Tensor, batch_idx: Tensor, num_images: int, score_thr: float,
                          max_per_img: int) -> Tensor:
    """(N,) bool: the boxes that get refined: ``valid`` ones scoring at least ``score_thr``,
    at most the ``max_per_img`` best of each image. The rest are kept as the detector gave them
    (documented behaviour, never an error in predict)."""
    ok = valid & (scores >= score_thr)
    # rank the eligible boxes of each image by score, vectorised: sort by (image, not ok, -score)
    key = batch_idx.double() * 4.0 + (~ok).double() * 2.0 - torch.sigmoid(scores.double().nan_to_num(0.0))
    order = key.argsort()
    counts = torch.bincount(batch_idx, minlength=num_images)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device) - starts[batch_idx[order]]
    return ok & (rank < max_per_img)


def refine_instances(ebm_head, feats, preds: list, img_metas: List[dict], scale_factors: Optional[list],
                     cfg: dict) -> None:
    """Refine the boxes of every image of a batch in one call, in place.

    Args:
        ebm_head: an ``EBMBoxHead``.
        feats: the neck's features of the batch.
        preds: per image an InstanceData with bboxes (n, 4), scores, labels.
        img_metas: per image, with 'img_shape'.
        scale_factors: per image (w, h) factors from the boxes' frame to the network input's
            (``metainfo['scale_factor']`` for boxes rescaled to the original image), or None
            when the boxes are already in input pixels.
        cfg: num_steps, step_sizes, decay, tol, max_per_img, score_thr, min_size, chunk_size,
            rescore_weight; missing keys take ``EBMRefineDetector.default_test_cfg``.
    Adds ``bboxes_init``, ``scores_init`` and ``ebm_scores`` to each InstanceData.
    """
    cfg = {**EBMRefineDetector.default_test_cfg, **cfg}  # one set of defaults
    device = feats[0].device
    factors = [feats[0].new_tensor(f if scale_factors else (1.0, 1.0)).repeat(2)
               for f in (scale_factors or [None] * len(preds))]
    boxes = torch.cat([get_box_tensor(p.bboxes).to(device) * f for p, f in zip(preds, factors)]).float()
    scores = torch.cat([p.scores for p in preds]).to(device)
    labels = torch.cat([p.labels for p in preds]).to(device)
    counts = [len(p) for p in preds]
    batch_idx = torch.repeat_interleave(torch.arange(len(preds), device=device), torch.tensor(counts, device=device))
    # non-finite or (near) zero-size boxes have no relative box space: left unrefined
    valid = torch.isfinite(boxes).all(-1) & ((boxes[:, 2:] - boxes[:, :2]) > cfg['min_size']).all(-1)
    sel = select_for_refinement(scores, valid, batch_idx, len(preds), cfg['score_thr'],
                                cfg['max_per_img'])
    img_shapes = torch.tensor([m['img_shape'][:2] for m in img_metas], device=device)
    refined, ebm = boxes.clone(), torch.full_like(scores, float('-inf'))
    res = ebm_head.refine(feats, boxes[sel], batch_idx[sel], labels[sel], img_shapes,
                          cfg['step_sizes'], cfg['num_steps'],
                          cfg['decay'], cfg['tol'], cfg['chunk_size'])
    refined[sel], ebm[sel] = res.boxes, res.scores
    new_scores = scores.clone()
    w = cfg['rescore_weight']
    if w > 0:
        new_scores[sel] = scores[sel].clamp(min=1e-12)**(1 - w) * torch.sigmoid(res.scores)**w
    for p, f, b, e, s in zip(preds, factors, refined.split(counts), ebm.split(counts), new_scores.split(counts)):
        p.bboxes_init, p.scores_init = p.bboxes, p.scores
        p.bboxes, p.ebm_scores, p.scores = (b / f).to(p.bboxes.dtype), e, s.to(p.scores)


@MODELS.register_module()
class EBMRefineDetector(BaseDetector):
    """Any mmdet detector plus an ``EBMBoxHead`` that refines its boxes by gradient ascent.

    Args:
        detector: config of the inner detector (two-stage, one-stage or DETR-family). To freeze a
            trained detector, give it ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
        ebm_head: config of an ``EBMBoxHead``.
        detector_checkpoint: a trained checkpoint of the inner detector (a plain mmdet
            checkpoint), loaded by ``init_weights`` instead of the detector's own init (which
            would fetch ImageNet weights).
        freeze_detector: the paper's setting: the inner detector stays in eval mode, gets no
            gradient and only the EBM head trains. False trains both jointly.
        train_cfg: unused (kept for config symmetry).
        test_cfg: refinement settings: num_steps (T=10), step_sizes (lambda per dimension of
            (cx/w0, cy/h0, log w, log h), NCE+: (8e-4, 8e-4, 3.2e-3, 3.2e-3)), decay (eta=0.5),
            tol (early stop, 0 = off), max_per_img (100), score_thr (0.0), min_size (1e-2 px),
            chunk_size (None), rescore_weight (0: scores unchanged; w > 0 replaces each refined
            score s by s^(1-w) * sigmoid(f)^w), enabled (True).
        data_preprocessor: defaults to the inner detector's.

    Prediction: ``pred_instances.bboxes`` are the refined boxes; ``bboxes_init`` and
    ``scores_init`` keep the detector's, so ``InitialPredictionMetric`` scores both in one run;
    ``ebm_scores`` holds f at the refined box (-inf for boxes left unrefined).
    """
    default_test_cfg = dict(num_steps=10, step_sizes=(8e-4, 8e-4, 3.2e-3, 3.2e-3), decay=0.5, tol=0.0, max_per_img=100,
                            score_thr=0.0, min_size=1e-2, chunk_size=None, rescore_weight=0.0, enabled=True)

    def __init__(self,
                 detector: ConfigType,
                 ebm_head: ConfigType,
                 detector_checkpoint: Optional[str] = None,
                 freeze_detector: bool = True,
                 train_cfg: OptConfigType = None,
                 test_cfg: OptConfigType = None,
                 data_preprocessor: OptConfigType = None,
                 init_cfg: OptConfigType = None) -> None:
        detector = copy.deepcopy(detector)
        if data_preprocessor is None:
            data_preprocessor = detector.pop('data_preprocessor', None)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.detector = MODELS.build(detector)
        self.ebm_head = MODELS.build(ebm_head)
        self.freeze_detector = freeze_detector
        self.detector_checkpoint = detector_checkpoint
        self.test_cfg = {**self.default_test_cfg, **(test_cfg or {})}
        feat_module = self.detector.neck if getattr(self.detector, 'with_neck', False) else self.detector.backbone
        self._feats = capture_features(feat_module)
        if freeze_detector:
            self.detector.requires_grad_(False)

    def init_weights(self) -> None:
        if self.detector_checkpoint is None:
            return super().init_weights()
        self.ebm_head.init_weights()
        path = self.detector_checkpoint
        if '://' not in path and not os.path.isfile(path):
            raise FileNotFoundError(f'{type(self).__name__}: detector_checkpoint {path!r} does not exist. Train the '
                                    'detector first (tools/train.py with its own config) or set '
                                    'model.detector_checkpoint to its checkpoint.')
        try:
            load_checkpoint(self.detector, path, map_location='cpu', strict=True)
        except RuntimeError as err:  # mmengine's strict load: missing / unexpected / mis-shaped keys
            raise RuntimeError(f'{type(self).__name__}: detector_checkpoint {path!r} does not fit the detector '
                               f'config ({type(self.detector).__name__}): {err}') from err

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_detector:
            self.detector.eval()  # frozen BN statistics and no dropout, as in the paper
        return self

    def extract_feat(self, batch_inputs: Tensor) -> Tuple[Tensor, ...]:
        return self.detector.extract_feat(batch_inputs)

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> dict:
        gt_boxes = [s.gt_instances.bboxes for s in batch_data_samples]
        gt_labels = [s.gt_instances.labels for s in batch_data_samples]
        if self.freeze_detector:
            with torch.no_grad():
                feats = self.detector.extract_feat(batch_inputs)
            return self.ebm_head.loss(feats, gt_boxes, gt_labels)
        losses = self.detector.loss(batch_inputs, batch_data_samples)
        losses.update(self.ebm_head.loss(self._feats[0], gt_boxes, gt_labels))
        return losses

    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList, rescale: bool = True) -> SampleList:
        results = self.detector.predict(batch_inputs, batch_data_samples, rescale=rescale)
        cfg = dict(self.test_cfg)
        if cfg.pop('enabled'):
            metas = [r.metainfo for r in results]
            factors = [m['scale_factor'] for m in metas] if rescale else None
            refine_instances(self.ebm_head, self._feats[0], [r.pred_instances for r in results], metas, factors, cfg)
        self._feats.clear()
        return results

    def _forward(self, batch_inputs: Tensor, batch_data_samples: OptConfigType = None):
        return self.detector._forward(batch_inputs, batch_data_samples)
