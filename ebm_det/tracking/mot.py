"""MOT models (mmdet's ByteTrack / DeepSORT) wired to refine track boxes with an EBM head."""
from typing import Optional

from mmdet.models.mot import ByteTrack, DeepSORT
from mmdet.registry import MODELS

from ebm_det.models.refine_detector import capture_features
from .refiner import EBMBoxRefiner

_REFINE_KEYS = ('num_steps', 'step_sizes', 'decay', 'tol', 'chunk_size', 'min_size')


class EBMTrackingMixin:
    """Binds an ``EBMBoxRefiner`` and the detector's neck features to the tracker.

    The head is the detector's ``ebm_head`` (an ``EBMRefineDetector``, whose detections are then
    refined too unless its ``test_cfg.enabled=False``) or a separate ``ebm_head`` config (any mmdet
    detector: only track boxes are refined). The neck's output of each frame is captured by a
    forward hook, so the detector runs once per frame, and the tracker (``EBMByteTracker``,
    ``EBMSORTTracker``) reads it. ``track_refine_cfg`` (num_steps, step_sizes, decay, tol,
    chunk_size, min_size) defaults to the refine detector's ``test_cfg``.
    """

    def _bind_ebm(self, ebm_head: Optional[dict], track_refine_cfg: Optional[dict]) -> None:
        det = self.detector
        if ebm_head is not None:
            self.ebm_head = MODELS.build({'_scope_': 'mmdet', **ebm_head})
            head = self.ebm_head
        elif hasattr(det, 'ebm_head'):
            head = det.ebm_head
        else:
            raise ValueError('EBM tracking needs an EBMRefineDetector as detector or an ebm_head config')
        inner = getattr(det, 'detector', det)
        feat_module = inner.neck if getattr(inner, 'with_neck', False) else inner.backbone
        self._track_feats = capture_features(feat_module)
        cfg = {k: v for k, v in (getattr(det, 'test_cfg', None) or {}).items() if k in _REFINE_KEYS and v is not None}
        cfg.update(track_refine_cfg or {})
        unknown = set(cfg) - set(_REFINE_KEYS)
        if unknown:
            raise KeyError(f'unknown track_refine_cfg keys {sorted(unknown)}; valid: {_REFINE_KEYS}')
        # a plain object referencing the head: no second registration of its parameters
        self.refiner = EBMBoxRefiner(head, detector=det, **cfg)
        if hasattr(self.tracker, 'bind_ebm'):
            self.tracker.bind_ebm(self.refiner, self._track_feats)

    def predict(self, inputs, data_samples, **kwargs):
        try:
            return super().predict(inputs, data_samples, **kwargs)
        finally:
            self._track_feats.clear()  # no frame's features outlive the video


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


@MODELS.register_module()
class EBMDeepSORT(EBMTrackingMixin, DeepSORT):
    """SORT/DeepSORT with EBM refinement of track boxes (``EBMSORTTracker``) and, with an
    ``EBMRefineDetector``, of detections. Args as ``EBMByteTrack`` plus DeepSORT's ``reid``."""

    def __init__(self, detector: dict, tracker: dict, reid: Optional[dict] = None, ebm_head: Optional[dict] = None,
                 track_refine_cfg: Optional[dict] = None, data_preprocessor=None, init_cfg=None) -> None:
        super().__init__(detector=detector, reid=reid, tracker=tracker, data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        self._bind_ebm(ebm_head, track_refine_cfg)
