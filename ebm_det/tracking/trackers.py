"""mmdet trackers that refine each track's box on the current frame before association. They override
only where track boxes come from and call mmdet's own association."""
import contextlib
import dataclasses
from typing import Dict, List, Optional, Union

import numpy as np
import torch
from mmdet.models.trackers import ByteTracker, SORTTracker
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_cxcyah_to_xyxy, bbox_xyxy_to_cxcyah

from ebm_det.core import strict_fields


@strict_fields
@dataclasses.dataclass(frozen=True)
class TrackRefineOptions:
    """Which track boxes an EBM tracker refines (a tracker config's ``ebm=dict(...)``), checked when
    built.

    Args:
        enabled: refine track boxes at all.
        refine_tentative: also tentative tracks (whose box is last frame's).
        refine_lost: also tracks unmatched last frame.
        write_back: False: refined boxes are used for association only; True: they also replace
            the Kalman state's position, a pseudo-measurement for unmatched tracks (ByteTrack).

    Raises:
        ValueError: an unknown key (naming the valid ones) or a value that is not True / False.
    """
    enabled: bool = True
    refine_tentative: bool = True
    refine_lost: bool = True
    write_back: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not isinstance(getattr(self, f.name), bool):
                raise ValueError(f'ebm.{f.name} must be True or False, got {getattr(self, f.name)!r}')

    @classmethod
    def build(cls, cfg: Union[None, dict, 'TrackRefineOptions'] = None) -> 'TrackRefineOptions':
        """From None (the defaults), a mapping or a ``TrackRefineOptions``."""
        return cfg if isinstance(cfg, TrackRefineOptions) else cls(**dict(cfg or {}))

    def replace(self, **changes) -> 'TrackRefineOptions':
        """A copy with ``changes`` (checked like the constructor)."""
        return dataclasses.replace(self, **changes)


class EBMTrackRefineMixin:
    """Refinement of track boxes on the current frame's features, for mmdet trackers.

    ``track(..., feats=...)`` takes the frame's neck features (the MOT models pass what their
    detector computed on the frame); without features nothing is refined. Each frame, the boxes
    a tracker is about to associate (ByteTrack: the Kalman prediction; SORT: the last box) are
    refined in one batched call by the bound ``EBMBoxRefiner`` (``bind_ebm``), with the track's
    class, and kept for that frame. A box the refiner leaves unrefined (invalid, or degenerate
    after clipping) keeps the tracker's own box.

    ``ebm``: a ``TrackRefineOptions`` (or its dict), held as ``self.ebm``.
    """

    def _init_ebm(self, ebm: Union[None, dict, TrackRefineOptions]) -> None:
        self.ebm = TrackRefineOptions.build(ebm)
        self.refiner = None
        self._frame: Optional[dict] = None
        self.last_refinement: Dict[str, object] = {}

    def bind_ebm(self, refiner) -> None:
        """Refine track boxes with ``refiner`` (an ``EBMBoxRefiner``)."""
        self.refiner = refiner

    @contextlib.contextmanager
    def _ebm_frame(self, metainfo: dict, feats):
        """The frame's refinement context; nothing of a frame outlives it."""
        on = self.ebm.enabled and self.refiner is not None and feats is not None
        self._frame = dict(feats=feats, img_shape=metainfo.get('img_shape'),
                           scale_factor=metainfo.get('scale_factor'), frame_id=metainfo.get('frame_id', -1),
                           boxes={}, tried=set()) if on else None
        self.last_refinement = {}
        try:
            yield
        finally:
            self._frame = None

    def _eligible(self, ids: List[int]) -> List[int]:
        frame_id = self._frame['frame_id']
        out = []
        for i in ids:
            t = self.tracks[i]
            if getattr(t, 'tentative', False) and not self.ebm.refine_tentative:
                continue
            if t.frame_ids[-1] != frame_id - 1 and not self.ebm.refine_lost:
                continue
            out.append(i)
        return out

    def _refine_ids(self, ids: List[int], boxes: torch.Tensor) -> None:
        """Refine ``boxes`` (len(ids), 4) in original-image pixels; keep the refined ones per id."""
        fr = self._frame
        if not ids:
            return
        labels = torch.stack([torch.as_tensor(self.tracks[i]['labels'][-1]).reshape(()) for i in ids]).long()
        refined, scores = self.refiner.refine(fr['feats'], boxes.float(), fr['img_shape'][:2], labels=labels,
                                              scale_factor=fr['scale_factor'])
        refined = refined.to(boxes)
        fr['tried'].update(ids)
        done = torch.isfinite(scores).tolist()  # -inf: left as the tracker's box
        for k, i in enumerate(ids):
            if done[k]:
                fr['boxes'][i] = refined[k]
        self.last_refinement = dict(ids=list(ids), boxes_in=boxes.detach().cpu(), boxes=refined.detach().cpu(),
                                    scores=scores.detach().cpu())


@MODELS.register_module()
class EBMByteTracker(EBMTrackRefineMixin, ByteTracker):
    """ByteTracker whose Kalman-predicted track boxes are refined on the current frame's features
    before each association (high, tentative and low-score matches).

    ``assign_ids`` is mmdet's: for its duration the tracks' Kalman positions are the refined
    boxes, and they are restored afterwards unless ``ebm.write_back``.

    Args:
        ebm: refinement options, see ``EBMTrackRefineMixin``.
        **kwargs: ``ByteTracker``'s.
    """

    def __init__(self, ebm: Optional[dict] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._init_ebm(ebm)

    def track(self, data_sample: DetDataSample, feats=None, **kwargs):
        """``ByteTracker.track``; ``feats``: the frame's neck features (None: no refinement)."""
        with self._ebm_frame(data_sample.metainfo, feats):
            return super().track(data_sample, **kwargs)

    def _kf_boxes(self, ids: List[int]) -> torch.Tensor:
        means = np.stack([self.tracks[i].mean[:4] for i in ids]) if ids else np.zeros((0, 4))
        return bbox_cxcyah_to_xyxy(torch.from_numpy(means))

    @contextlib.contextmanager
    def _refined_positions(self, ids: List[int]):
        """Within the block, the Kalman positions of ``ids`` are their refined boxes."""
        fr = self._frame
        if fr is None:
            yield
            return
        if not fr.get('done'):
            # the first association of a frame runs after every confirmed track's Kalman
            # prediction, and tentative tracks are not predicted: all boxes are final here
            fr['done'] = True
            todo = self._eligible(list(self.tracks))
            self._refine_ids(todo, self._kf_boxes(todo))
        saved = {}
        for i in ids:
            if i in fr['boxes']:
                saved[i] = self.tracks[i].mean[:4].copy()
                self.tracks[i].mean[:4] = bbox_xyxy_to_cxcyah(fr['boxes'][i][None].double().cpu())[0].numpy()
        try:
            yield
        finally:
            if not self.ebm.write_back:
                for i, mean in saved.items():
                    self.tracks[i].mean[:4] = mean

    def assign_ids(self, ids, det_bboxes, det_labels, det_scores, weight_iou_with_det_scores=False,
                   match_iou_thr=0.5):
        """mmdet's ``ByteTracker.assign_ids``, on the refined track boxes."""
        with self._refined_positions(list(ids)):
            return super().assign_ids(ids, det_bboxes, det_labels, det_scores, weight_iou_with_det_scores,
                                      match_iou_thr)


@MODELS.register_module()
class EBMSORTTracker(EBMTrackRefineMixin, SORTTracker):
    """SORTTracker whose track boxes used for IoU association (mmdet's SORT compares the last
    box of each track, ``get('bboxes', ids)``) are refined on the current frame's features first.

    Args:
        ebm: refinement options, see ``EBMTrackRefineMixin`` (``write_back`` does not apply).
        **kwargs: ``SORTTracker``'s.
    """

    def __init__(self, ebm: Optional[dict] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._init_ebm(ebm)

    def track(self, model, img, data_sample: DetDataSample, data_preprocessor=None, rescale: bool = False,
              ebm_feats=None, **kwargs):
        """``SORTTracker.track``; ``ebm_feats``: the frame's neck features (None: no refinement).
        (mmdet's own ``feats`` argument of SORT trackers is unused by SORT and passed through.)"""
        with self._ebm_frame(data_sample.metainfo, ebm_feats):
            return super().track(model, img, data_sample, data_preprocessor, rescale, **kwargs)

    def get(self, item: str, ids: Optional[list] = None, num_samples: Optional[int] = None,
            behavior: Optional[str] = None) -> torch.Tensor:
        out = super().get(item, ids, num_samples, behavior)
        fr = self._frame
        if item != 'bboxes' or fr is None or ids is None:
            return out
        ids = list(ids)
        todo = [i for i in self._eligible(ids) if i not in fr['tried']]
        if todo:
            self._refine_ids(todo, out[[ids.index(i) for i in todo]])
        out = out.clone()
        for k, i in enumerate(ids):
            if i in fr['boxes']:
                out[k] = fr['boxes'][i].to(out)
        return out
