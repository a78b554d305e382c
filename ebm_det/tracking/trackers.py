"""Trackers that refine each track's predicted box on the current frame before association."""
from typing import Dict, List, Optional

import numpy as np
import torch
from mmdet.models.trackers import ByteTracker, SORTTracker
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_cxcyah_to_xyxy, bbox_overlaps, bbox_xyxy_to_cxcyah

try:
    import lap
except ImportError:  # ByteTracker itself raises a clear error then
    lap = None


class EBMTrackRefineMixin:
    """Refinement of track boxes on the current frame's features, for mmdet trackers.

    The MOT model binds an ``EBMBoxRefiner`` and the list its neck hook fills
    (``bind_ebm``); ``track`` then finds the current frame's features there (the detector has
    just run on the frame), or takes them as ``feats=``. Each frame, the boxes a tracker is about
    to associate (ByteTrack: the Kalman prediction; SORT: the last box) are refined in one
    batched call, with the track's class, and kept for that frame.

    Args of ``ebm`` (a dict): enabled (True), refine_tentative (True: also tentative tracks,
    whose box is last frame's), refine_lost (True: also tracks unmatched last frame),
    write_back (False: refined boxes are used for association only; True: they also replace the
    Kalman state's position, a pseudo-measurement for unmatched tracks).
    """
    default_ebm = dict(enabled=True, refine_tentative=True, refine_lost=True, write_back=False)

    def _init_ebm(self, ebm: Optional[dict]) -> None:
        unknown = set(ebm or {}) - set(self.default_ebm)
        if unknown:
            raise KeyError(f'unknown ebm options {sorted(unknown)}; valid: {sorted(self.default_ebm)}')
        self.ebm = {**self.default_ebm, **(ebm or {})}
        self.refiner = None
        self._feat_store: Optional[list] = None
        self._frame: Optional[dict] = None
        self.last_refinement: Dict[str, object] = {}

    def bind_ebm(self, refiner, feat_store: Optional[list] = None) -> None:
        """Use ``refiner``; read each frame's features from ``feat_store[0]`` (a neck hook's list)."""
        self.refiner = refiner
        self._feat_store = feat_store

    def _ebm_begin_frame(self, metainfo: dict, feats=None) -> None:
        if feats is None and self._feat_store:
            feats = self._feat_store[0]
        on = bool(self.ebm['enabled']) and self.refiner is not None and feats is not None
        self._frame = dict(feats=feats, img_shape=metainfo.get('img_shape'),
                           scale_factor=metainfo.get('scale_factor'), frame_id=metainfo.get('frame_id', -1),
                           cache={}, done=False) if on else None
        self.last_refinement = {}

    def _ebm_end_frame(self) -> None:
        self._frame = None  # drop the features: nothing of a frame outlives it

    def _eligible(self, ids: List[int], frame_id: int) -> List[int]:
        out = []
        for i in ids:
            t = self.tracks[i]
            if getattr(t, 'tentative', False) and not self.ebm['refine_tentative']:
                continue
            if t.frame_ids[-1] != frame_id - 1 and not self.ebm['refine_lost']:
                continue
            out.append(i)
        return out

    def _refine_ids(self, ids: List[int], boxes: torch.Tensor) -> None:
        """Refine ``boxes`` (len(ids), 4) in original-image pixels; cache them per id."""
        fr = self._frame
        if not ids:
            return
        labels = torch.stack([torch.as_tensor(self.tracks[i]['labels'][-1]).reshape(()) for i in ids]).long()
        refined, scores = self.refiner.refine(fr['feats'], boxes.float(), fr['img_shape'][:2], labels=labels,
                                              scale_factor=fr['scale_factor'])
        refined = refined.to(boxes)
        for k, i in enumerate(ids):
            fr['cache'][i] = refined[k]
        self.last_refinement = dict(ids=list(ids), boxes_in=boxes.detach().cpu(), boxes=refined.detach().cpu(),
                                    scores=scores.detach().cpu())
        if self.ebm['write_back']:
            for k, i in enumerate(ids):
                if hasattr(self.tracks[i], 'mean'):
                    self.tracks[i].mean[:4] = bbox_xyxy_to_cxcyah(refined[k:k + 1].double().cpu())[0].numpy()


@MODELS.register_module()
class EBMByteTracker(EBMTrackRefineMixin, ByteTracker):
    """ByteTracker whose Kalman-predicted track boxes are refined on the current frame's
    features before each association (high, tentative and low-score matches).

    Args:
        ebm: refinement options, see ``EBMTrackRefineMixin``.
        **kwargs: ``ByteTracker``'s.
    """

    def __init__(self, ebm: Optional[dict] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._init_ebm(ebm)

    def track(self, data_sample: DetDataSample, feats=None, **kwargs):
        self._ebm_begin_frame(data_sample.metainfo, feats)
        try:
            return super().track(data_sample, **kwargs)
        finally:
            self._ebm_end_frame()

    def _kf_boxes(self, ids: List[int]) -> torch.Tensor:
        means = np.stack([self.tracks[i].mean[:4] for i in ids]) if ids else np.zeros((0, 4))
        return bbox_cxcyah_to_xyxy(torch.from_numpy(means))

    def _track_boxes(self, ids: List[int], like: torch.Tensor) -> torch.Tensor:
        fr = self._frame
        if fr is not None and not fr['done']:
            # the first association of a frame runs after every confirmed track's Kalman
            # prediction; tentative tracks are not predicted: all boxes are final here
            fr['done'] = True
            todo = self._eligible(list(self.tracks), fr['frame_id'])
            self._refine_ids(todo, self._kf_boxes(todo).to(like))
        boxes = self._kf_boxes(ids).to(like)
        if fr is not None:
            for k, i in enumerate(ids):
                if i in fr['cache']:
                    boxes[k] = fr['cache'][i].to(like)
        return boxes

    def assign_ids(self, ids, det_bboxes, det_labels, det_scores, weight_iou_with_det_scores=False,
                   match_iou_thr=0.5):
        """``ByteTracker.assign_ids`` with the (refined) track boxes of ``_track_boxes``."""
        track_bboxes = self._track_boxes(list(ids), det_bboxes)
        ious = bbox_overlaps(track_bboxes, det_bboxes)
        if weight_iou_with_det_scores:
            ious *= det_scores
        track_labels = torch.tensor([self.tracks[i]['labels'][-1] for i in ids]).to(det_bboxes.device)
        cate_match = det_labels[None, :] == track_labels[:, None]
        cate_cost = (1 - cate_match.int()) * 1e6
        dists = (1 - ious + cate_cost).cpu().numpy()
        if dists.size > 0:
            _, row, col = lap.lapjv(dists, extend_cost=True, cost_limit=1 - match_iou_thr)
        else:
            row = np.zeros(len(ids)).astype(np.int32) - 1
            col = np.zeros(len(det_bboxes)).astype(np.int32) - 1
        return row, col


@MODELS.register_module()
class EBMSORTTracker(EBMTrackRefineMixin, SORTTracker):
    """SORTTracker whose track boxes used for IoU association (mmdet's SORT compares the last
    box of each track) are refined on the current frame's features first.

    Args:
        ebm: refinement options, see ``EBMTrackRefineMixin`` (``write_back`` does not apply).
        **kwargs: ``SORTTracker``'s.
    """

    def __init__(self, ebm: Optional[dict] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._init_ebm(ebm)

    def track(self, model, img, data_sample: DetDataSample, data_preprocessor=None, rescale: bool = False,
              feats=None, **kwargs):
        self._ebm_begin_frame(data_sample.metainfo, feats)
        try:
            return super().track(model, img, data_sample, data_preprocessor, rescale, **kwargs)
        finally:
            self._ebm_end_frame()

    def get(self, item: str, ids: Optional[list] = None, num_samples: Optional[int] = None,
            behavior: Optional[str] = None) -> torch.Tensor:
        out = super().get(item, ids, num_samples, behavior)
        fr = self._frame
        if item != 'bboxes' or fr is None or ids is None:
            return out
        ids = list(ids)
        todo = [i for i in self._eligible(ids, fr['frame_id']) if i not in fr['cache']]
        if todo:
            self._refine_ids(todo, out[[ids.index(i) for i in todo]])
        out = out.clone()
        for k, i in enumerate(ids):
            if i in fr['cache']:
                out[k] = fr['cache'][i].to(out)
        return out
