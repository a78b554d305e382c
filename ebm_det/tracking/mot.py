"""MOT models (mmdet's ByteTrack / DeepSORT) that refine detections and track boxes with an EBM head.

Per frame, the detector runs once and hands its features over explicitly
(``EBMRefineDetector.detect``, or ``detect_with_features`` for any mmdet detector); the tracker
gets them as an argument.
"""
from typing import Optional

from mmdet.models.mot import ByteTrack, DeepSORT
from mmdet.registry import MODELS

from ebm_det.core import RefineConfig
from ebm_det.models.refine_detector import EBMRefineDetector, detect_with_features, detector_num_classes
from .refiner import EBMBoxRefiner


class EBMTrackingMixin:
    """The EBM half of a MOT model: the refiner for track boxes, and mmdet's per-frame loop with
    the features handed from detector to tracker.

    The head is the detector's ``ebm_head`` (an ``EBMRefineDetector``, whose detections are then
    refined too unless its ``test_cfg.enabled=False``) or a separate ``ebm_head`` config (any mmdet
    detector: only track boxes are refined). ``track_refine_cfg`` (a ``RefineConfig``) defaults to
    the refine detector's ``test_cfg``.
    """

    def _bind_ebm(self, ebm_head: Optional[dict], track_refine_cfg: Optional[dict]) -> None:
        det = self.detector
        if ebm_head is not None:
            self.ebm_head = MODELS.build({'_scope_': 'mmdet', **ebm_head})
            head = self.ebm_head
            head.check_covers_classes(detector_num_classes(det), type(det).__name__)  # ValueError
        elif isinstance(det, EBMRefineDetector):
            head = det.ebm_head
        else:
            raise ValueError('EBM tracking needs an EBMRefineDetector as detector or an ebm_head config')
        base = det.refine_cfg if isinstance(det, EBMRefineDetector) else RefineConfig()
        # a plain object referencing the head: no second registration of its parameters
        self.refiner = EBMBoxRefiner(head, base.replace(**(track_refine_cfg or {})), detector=det)
        if hasattr(self.tracker, 'bind_ebm'):
            self.tracker.bind_ebm(self.refiner)

    def detect_frame(self, img, data_sample, rescale: bool = True):
        """(det_results, feats) of one frame: the detector's (refined) detections and its features."""
        if isinstance(self.detector, EBMRefineDetector):
            return self.detector.detect(img, [data_sample], rescale=rescale)
        return detect_with_features(self.detector, img, [data_sample], rescale=rescale)

    def track_frame(self, img, det_result, feats, rescale: bool, **kwargs):
        """The tracker's ``track`` on one frame's detections and features."""
        raise NotImplementedError

    def predict(self, inputs, data_samples, rescale: bool = True, **kwargs):
        """mmdet's MOT predict loop (ByteTrack / DeepSORT), with the detector's features handed
        to the tracker each frame. ``inputs`` (1, T, C, H, W); one video per batch."""
        assert inputs.dim() == 5 and inputs.size(0) == 1 and len(data_samples) == 1, \
            f'{type(self).__name__} takes one video per batch: inputs (1, T, C, H, W)'
        track_data_sample = data_samples[0]
        for frame_id in range(len(track_data_sample)):
            img_data_sample = track_data_sample[frame_id]
            single_img = inputs[:, frame_id].contiguous()
            det_results, feats = self.detect_frame(single_img, img_data_sample, rescale)
            img_data_sample.pred_track_instances = self.track_frame(single_img, det_results[0], feats, rescale,
                                                                    **kwargs)
        return [track_data_sample]


@MODELS.register_module()
class EBMByteTrack(EBMTrackingMixin, ByteTrack):
    """ByteTrack with EBM refinement of track boxes (``EBMByteTracker``) and, with an
    ``EBMRefineDetector``, of detections.

    Args:
        detector, tracker, data_preprocessor, init_cfg: as ``ByteTrack``.
        ebm_head: optional separate ``EBMBoxHead`` config (when the detector has none).
        track_refine_cfg: refinement settings for track boxes (default: the detector's).
    """

    def __init__(self, detector: dict, tracker: dict, ebm_head: Optional[dict] = None,
                 track_refine_cfg: Optional[dict] = None, data_preprocessor=None, init_cfg=None) -> None:
        super().__init__(detector=detector, tracker=tracker, data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self._bind_ebm(ebm_head, track_refine_cfg)

    def track_frame(self, img, det_result, feats, rescale: bool, **kwargs):
        return self.tracker.track(data_sample=det_result, feats=feats, **kwargs)


@MODELS.register_module()
class EBMDeepSORT(EBMTrackingMixin, DeepSORT):
    """SORT/DeepSORT with EBM refinement of track boxes (``EBMSORTTracker``) and, with an
    ``EBMRefineDetector``, of detections. Args as ``EBMByteTrack`` plus DeepSORT's ``reid``."""

    def __init__(self, detector: dict, tracker: dict, reid: Optional[dict] = None, ebm_head: Optional[dict] = None,
                 track_refine_cfg: Optional[dict] = None, data_preprocessor=None, init_cfg=None) -> None:
        super().__init__(detector=detector, reid=reid, tracker=tracker, data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        self._bind_ebm(ebm_head, track_refine_cfg)

    def predict(self, inputs, data_samples, rescale: bool = True, **kwargs):
        if data_samples[0][0].frame_id == 0:
            self.tracker.reset()  # as DeepSORT.predict
        return super().predict(inputs, data_samples, rescale, **kwargs)

    def track_frame(self, img, det_result, feats, rescale: bool, **kwargs):
        return self.tracker.track(model=self, img=img, data_sample=det_result, data_preprocessor=self.preprocess_cfg,
                                  rescale=rescale, ebm_feats=feats, **kwargs)
