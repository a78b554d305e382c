"""A wrapper that adds EBM refinement of 7-D boxes to any MMDetection3D detector with a BEV map."""
from typing import List

import torch
from mmdet3d.registry import MODELS
from mmdet3d.structures import Det3DDataSample

from .refine_detector import EBMRefineDetector, select_for_refinement


@MODELS.register_module()
class EBMRefineDetector3D(EBMRefineDetector):
    """Any mmdet3d detector (PointPillars, SECOND, CenterPoint, ...) plus an ``EBMBoxHead3D``.

    Same arguments as ``EBMRefineDetector``; the EBM reads the detector's neck output (its BEV
    map). ``test_cfg``: num_steps (10), step_sizes (lambda per box-space dimension, 2e-4 as
    ebms_3dod), decay (0.5), tol, max_per_img (100), score_thr (0.0), chunk_size, enabled.

    Prediction refines, after the detector's NMS, every box of the batch in one call.
    ``pred_instances_3d.bboxes_3d`` are the refined boxes (the detector's box type, yaw wrapped,
    sizes positive); ``bboxes_3d_init`` keeps the detector's; ``ebm_scores`` holds f (-inf for
    boxes left unrefined).
    """
    default_test_cfg = dict(num_steps=10, step_sizes=2e-4, decay=0.5, tol=0.0, max_per_img=100, score_thr=0.0,
                            chunk_size=None, enabled=True)

    def loss(self, batch_inputs_dict: dict, batch_data_samples: List[Det3DDataSample]) -> dict:
        gt_boxes = [s.gt_instances_3d.bboxes_3d.tensor for s in batch_data_samples]
        gt_labels = [s.gt_instances_3d.labels_3d for s in batch_data_samples]
        if self.freeze_detector:
            with torch.no_grad():
                feats = self.detector.extract_feat(batch_inputs_dict)
            return self.ebm_head.loss(feats, gt_boxes, gt_labels)
        losses = self.detector.loss(batch_inputs_dict, batch_data_samples)
        losses.update(self.ebm_head.loss(self._feats[0], gt_boxes, gt_labels))
        return losses

    def predict(self, batch_inputs_dict: dict, batch_data_samples: List[Det3DDataSample], **kwargs):
        results = self.detector.predict(batch_inputs_dict, batch_data_samples, **kwargs)
        cfg = dict(self.test_cfg)
        if cfg.pop('enabled'):
            self.refine_instances_3d(self._feats[0], [r.pred_instances_3d for r in results], cfg)
        self._feats.clear()
        return results

    def refine_instances_3d(self, feats, preds: list, cfg: dict) -> None:
        """Refine every frame's boxes in one call; adds ``bboxes_3d_init`` and ``ebm_scores``."""
        # the head prepares (concatenates / reduces) the neck's maps itself, inside refine
        device = (feats[0] if isinstance(feats, (list, tuple)) else feats).device
        boxes = torch.cat([p.bboxes_3d.tensor[:, :7] for p in preds]).to(device, torch.float32)
        scores = torch.cat([p.scores_3d for p in preds]).to(device)
        labels = torch.cat([p.labels_3d for p in preds]).to(device)
        counts = [len(p) for p in preds]
        batch_idx = torch.repeat_interleave(torch.arange(len(preds), device=device), torch.tensor(counts, device=device))
        valid = torch.isfinite(boxes).all(-1) & (boxes[:, 3:6] > 0).all(-1)
        sel = select_for_refinement(scores, valid, batch_idx, len(preds), cfg['score_thr'], cfg['max_per_img'])
        res = self.ebm_head.refine(feats, boxes[sel], batch_idx[sel], labels[sel], cfg['step_sizes'], cfg['num_steps'],
                                   cfg['decay'], cfg['tol'], cfg['chunk_size'])
        refined, ebm = boxes.clone(), torch.full_like(scores, float('-inf'))
        refined[sel], ebm[sel] = res.boxes, res.scores.to(ebm.dtype)
        for p, b, e in zip(preds, refined.split(counts), ebm.split(counts)):
            init = p.bboxes_3d
            tensor = torch.cat([b.to(init.tensor), init.tensor[:, 7:]], dim=1)
            p.bboxes_3d_init = init
            p.bboxes_3d = type(init)(tensor, box_dim=init.box_dim, with_yaw=init.with_yaw)
            p.ebm_scores = e
