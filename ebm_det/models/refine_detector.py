"""A wrapper that adds EBM box refinement to any MMDetection detector, and the one refinement path
every caller uses: ``detect`` (features and detections in one pass) -> ``refine_instances``."""
import collections
import contextlib
import copy
import hashlib
import os
from typing import Callable, Optional, Sequence, Tuple

import torch
from mmdet.models.detectors.base import BaseDetector
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.structures.bbox import scale_boxes
from mmdet.utils import ConfigType, OptConfigType
from mmengine.runner import load_checkpoint
from torch import Tensor

from ebm_det.core import RefineConfig, RefinedBoxes, refine_boxes


def feature_module(detector: torch.nn.Module) -> torch.nn.Module:
    """The module whose output the EBM reads: the detector's neck, or its backbone without one; for
    mmdet3d's MVX family (``MVXTwoStageDetector``: CenterPoint, MVXNet), which names them
    ``pts_neck`` / ``pts_backbone``, those of its point branch (its BEV map)."""
    if hasattr(detector, 'pts_backbone'):
        return detector.pts_neck if getattr(detector, 'with_pts_neck', False) else detector.pts_backbone
    return detector.neck if getattr(detector, 'with_neck', False) else detector.backbone


def detector_num_classes(detector: torch.nn.Module) -> Optional[int]:
    """The number of classes a detector (or an RoI head) predicts: the largest ``num_classes`` of
    its box heads (``roi_head.bbox_head``, ``bbox_head``, mmdet3d's ``pts_bbox_head``; every stage
    of a cascade; a list per task, as CenterPoint's, is summed, its labels being global); None when
    it has none."""
    found = []
    for owner in (detector, getattr(detector, 'roi_head', None)):
        for name in ('bbox_head', 'pts_bbox_head'):
            head = getattr(owner, name, None)
            for h in (head if isinstance(head, torch.nn.ModuleList) else [head]):
                n = getattr(h, 'num_classes', None)
                n = sum(n) if isinstance(n, (list, tuple)) else n
                if isinstance(n, int) and not isinstance(n, bool):
                    found.append(n)
    return max(found) if found else None


@contextlib.contextmanager
def capture_output(module: torch.nn.Module):
    """Within the block, the list yielded holds ``module``'s latest output; the hook is removed
    on exit, so nothing outlives the call that needed it."""
    store: list = []
    handle = module.register_forward_hook(lambda _mod, _inp, out: store.__setitem__(slice(None), [out]))
    try:
        yield store
    finally:
        handle.remove()


def detect_with_features(detector, *args, **kwargs) -> Tuple[SampleList, Tuple[Tensor, ...]]:
    """``detector.predict(*args, **kwargs)`` of any mmdet/mmdet3d detector and the features its
    neck computed on the way: one forward pass. Returns (results, feats)."""
    with capture_output(feature_module(detector)) as store:
        results = detector.predict(*args, **kwargs)
    if not store:
        raise RuntimeError(f'{type(detector).__name__}.predict did not run its '
                           f'{type(feature_module(detector)).__name__}: no features to refine on')
    return results, store[0]


def batch_slice(feats, i: int):
    """Image ``i`` of a batch of features (a tensor, or a list / tuple of them, batch first), with
    its batch dimension kept."""
    if isinstance(feats, (list, tuple)):
        return type(feats)(batch_slice(f, i) for f in feats)
    return feats[i:i + 1]


def refine_instances(head, feats, preds: Sequence, img_metas: Sequence[dict], cfg: RefineConfig) -> None:
    """Refine the predictions of every image of a batch in one call, in place.

    Args:
        head: an EBM head (``EBMBoxHead``, ``EBMBoxHead3D``); ``head.codec`` names the fields
            (``bboxes`` / ``bboxes_3d``, ``scores`` / ``scores_3d``, ``labels`` / ``labels_3d``).
        feats: the detector's features of the batch.
        preds: per image an InstanceData in the frame of ``feats`` (2D: network-input pixels).
        img_metas: per image its metainfo; 2D boxes are clipped to ``img_shape``.
        cfg: ``RefineConfig``; with ``enabled=False`` the fields below are written, boxes unchanged.

    Each InstanceData gains ``<boxes>_init`` and ``<scores>_init`` (the detector's),
    ``ebm_scores`` (f at the output box, -inf where not refined) and ``ebm_init_scores`` (f at
    the detector's box, -inf where not selected for refinement); ``<boxes>`` holds the refined
    boxes, of the detector's box type and dtype. Boxes that are not valid (``codec.valid``), not
    selected, that refinement or clipping made degenerate, or that gained less than
    ``cfg.min_gain`` keep the detector's box.
    """
    codec = head.codec
    device = head.fc_score.weight.device
    boxes = torch.cat([codec.to_tensor(getattr(p, codec.box_field)).to(device) for p in preds]) if preds else \
        torch.zeros(0, codec.dim, device=device)
    scores = torch.cat([getattr(p, codec.score_field).to(device).float() for p in preds]) if preds else boxes.new_zeros(0)
    labels = torch.cat([getattr(p, codec.label_field).to(device).long() for p in preds]) if preds else \
        torch.zeros(0, dtype=torch.long, device=device)
    counts = [len(p) for p in preds]
    batch_idx = torch.repeat_interleave(torch.arange(len(preds), device=device), torch.tensor(counts, device=device))
    img_shapes = None
    if codec.clips_to_image:
        img_shapes = torch.tensor([m['img_shape'][:2] for m in img_metas], device=device)
    if cfg.enabled:
        out = refine_boxes(head, feats, boxes, batch_idx, labels, cfg, scores=scores, img_shapes=img_shapes,
                           num_images=len(preds))
    else:  # refinement off: the before/after fields still say what happened (nothing)
        none = torch.full_like(scores, float('-inf'))
        out = RefinedBoxes(boxes, none, none, torch.zeros_like(scores, dtype=torch.bool))
    new_scores = scores
    if cfg.rescore_weight > 0:
        w = cfg.rescore_weight
        fused = scores.clamp(min=1e-12)**(1 - w) * torch.sigmoid(out.ebm_scores)**w
        new_scores = torch.where(out.refined, fused, scores)
    for p, b, e, e0, s in zip(preds, out.boxes.split(counts), out.ebm_scores.split(counts),
                              out.init_scores.split(counts), new_scores.split(counts)):
        init_boxes, init_scores = getattr(p, codec.box_field), getattr(p, codec.score_field)
        setattr(p, codec.box_field + '_init', init_boxes)
        setattr(p, codec.score_field + '_init', init_scores)
        setattr(p, codec.box_field, codec.from_tensor(b, init_boxes))
        setattr(p, codec.score_field, s.to(init_scores))
        p.ebm_scores = e
        p.ebm_init_scores = e0


def rescale_to_original(pred, scale_factor: Sequence[float]) -> None:
    """An InstanceData's boxes, ``bboxes`` and ``bboxes_init`` (refined and the detector's), from
    network-input pixels to the original image, in place: mmdet's ``scale_boxes`` with
    ``1 / scale_factor`` ((w, h), as ``metainfo['scale_factor']``)."""
    inv = [1 / s for s in scale_factor]
    for key in ('bboxes', 'bboxes_init'):
        if key in pred:
            setattr(pred, key, scale_boxes(getattr(pred, key), inv))


class FeatureCache:
    """A frozen detector's features per image, kept on the CPU, keyed by the exact network input.

    Args:
        max_images: at most this many images; the least recently used one goes first.
    """

    def __init__(self, max_images: int) -> None:
        self.max_images = max_images
        self.store: 'collections.OrderedDict[str, Tuple[Tensor, ...]]' = collections.OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def key(image: Tensor) -> str:
        """A digest of one image's input tensor (C, H, W): pixels, shape and dtype."""
        data = image.detach().contiguous().cpu()
        return hashlib.blake2b(data.view(torch.uint8).numpy().tobytes() + str((data.shape, data.dtype)).encode(),
                               digest_size=16).hexdigest()

    def features(self, batch_inputs: Tensor, extract: Callable) -> Tuple[Tensor, ...]:
        """Features of the batch: each image's from the cache if it is there; ``extract`` (under
        no_grad) runs on the images that are not (a frozen detector in eval mode treats the images
        of a batch independently), whose features are then kept."""
        if not isinstance(batch_inputs, Tensor):
            raise ValueError('feature_cache works on image batches (a Tensor of network inputs)')
        keys = [self.key(img) for img in batch_inputs]
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        found = {k: self.store[k] for k in keys if k in self.store}
        if missing:
            with torch.no_grad():
                feats = tuple(extract(batch_inputs[missing]))
            for j, i in enumerate(missing):
                found[keys[i]] = self.store[keys[i]] = tuple(f[j].detach().cpu() for f in feats)
        for k in keys:
            self.store.move_to_end(k)
        while len(self.store) > self.max_images:
            self.store.popitem(last=False)
        device = batch_inputs.device
        return tuple(torch.stack(level).to(device) for level in zip(*(found[k] for k in keys)))


@MODELS.register_module()
class EBMRefineDetector(BaseDetector):
    """Any mmdet detector plus an ``EBMBoxHead`` that refines its boxes by gradient ascent.

    Args:
        detector: config of the inner detector (two-stage, one-stage or DETR-family).
        ebm_head: config of an ``EBMBoxHead``; a per-class head must score every class the
            detector predicts (``detector_num_classes``), else a ValueError when built.
        detector_checkpoint: a trained checkpoint of the inner detector (a plain mmdet
            checkpoint), loaded by ``init_weights`` instead of the detector's own init (which
            would fetch ImageNet weights).
        freeze_detector: the paper's setting: the inner detector stays in eval mode, gets no
            gradient and only the EBM head trains. False trains both jointly.
        backbone: settings merged into the inner detector's ``backbone`` config. It exists because
            ``mmdet.apis.init_detector`` reads ``model.backbone`` of every config (and sets its
            ``init_cfg`` to None, so that nothing is downloaded); the EBM configs set ``dict()``.
        train_cfg: unused (kept for config symmetry).
        head_updates: K, the head's optimiser steps per batch when the detector is frozen, each on
            the same features with fresh noise samples (1: one step per batch, as the paper).
        feature_cache: keep the frozen detector's features of up to this many images in memory
            (CPU) and reuse them when the same network input comes again; keyed by a hash of each
            image's input tensor (after augmentation and padding), so an augmented or differently
            padded view is a new entry, never a stale one. 0 (default): off. Images only.
        val_loss: also compute the EBM's training loss on noise samples around each image's
            ground truth in ``predict`` (validation and test), with fixed noise (seed
            ``VAL_LOSS_SEED`` per image) so that epochs compare; ``EBMLossMetric`` reports it as
            ``ebm/val_loss`` for mmengine's ``save_best`` and ``EarlyStoppingHook``. Needs ground
            truth in the test pipeline, in the original image frame as mmdet's test pipelines load
            it (``LoadAnnotations`` after ``Resize``); boxes go to the input frame by
            ``metainfo['scale_factor']``; batches without any (inference) get no loss.
        test_cfg: refinement settings, a ``ebm_det.core.RefineConfig`` (num_steps, step_sizes,
            decay, tol, max_per_img, score_thr, chunk_size, rescore_weight, enabled, min_gain, autocast),
            checked here: an unknown key or a bad value is a ValueError, as is a per-class
            ``min_gain`` whose length is not the head's ``num_classes``.
        data_preprocessor: defaults to the inner detector's.

    Prediction (``predict`` = ``detect`` with refinement): ``pred_instances.bboxes`` are the
    refined boxes; ``bboxes_init`` and ``scores_init`` keep the detector's, so
    ``InitialPredictionMetric`` scores both in one run; ``ebm_scores`` holds f at the refined box
    (-inf for boxes left unrefined) and ``ebm_init_scores`` f at the detector's box.
    """
    VAL_LOSS_SEED = 0

    def __init__(self,
                 detector: ConfigType,
                 ebm_head: ConfigType,
                 detector_checkpoint: Optional[str] = None,
                 freeze_detector: bool = True,
                 head_updates: int = 1,
                 feature_cache: int = 0,
                 val_loss: bool = False,
                 backbone: OptConfigType = None,
                 train_cfg: OptConfigType = None,
                 test_cfg: OptConfigType = None,
                 data_preprocessor: OptConfigType = None,
                 init_cfg: OptConfigType = None) -> None:
        detector = copy.deepcopy(detector)
        if backbone:
            detector['backbone'] = {**detector['backbone'], **backbone}
        if data_preprocessor is None:
            data_preprocessor = detector.pop('data_preprocessor', None)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.detector = MODELS.build(detector)
        self.ebm_head = MODELS.build(ebm_head)
        self.freeze_detector = freeze_detector
        if isinstance(head_updates, bool) or not isinstance(head_updates, int) or head_updates < 1:
            raise ValueError(f'head_updates must be an integer >= 1, got {head_updates!r}')
        if isinstance(feature_cache, bool) or not isinstance(feature_cache, int) or feature_cache < 0:
            raise ValueError(f'feature_cache must be an integer >= 0 (images), got {feature_cache!r}')
        if (head_updates > 1 or feature_cache) and not freeze_detector:
            raise ValueError('head_updates > 1 and feature_cache need freeze_detector=True (the features must not change)')
        self.head_updates = head_updates
        self.feature_cache = FeatureCache(feature_cache) if feature_cache else None
        self.detector_checkpoint = detector_checkpoint
        self.refine_cfg = RefineConfig.build(test_cfg)
        codec = self.ebm_head.codec
        self.refine_cfg.step_sizes_for(codec.dim, codec.default_step_sizes)  # a ValueError now, not at test time
        self.refine_cfg.check_num_classes(getattr(self.ebm_head, 'num_classes', None))
        self.ebm_head.check_covers_classes(detector_num_classes(self.detector), type(self.detector).__name__)
        if not isinstance(val_loss, bool):
            raise ValueError(f'val_loss must be True or False, got {val_loss!r}')
        self.val_loss = val_loss
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

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """A checkpoint of the wrapper loads completely or not at all, however it is loaded.

        ``mmdet.apis.init_detector``, ``DetInferencer`` and mmdet3d's ``init_model`` load
        non-strictly, which would leave a missing or mis-shaped weight (say, the whole EBM head)
        random after a mere log line, and refined boxes would look like results. Raises
        RuntimeError naming the missing, unexpected and mis-shaped weights. (The inner detector's
        own ``detector_checkpoint`` is loaded into ``self.detector`` by ``init_weights``, not here.)
        """
        own = {prefix + k: v for k, v in self.state_dict().items()}
        problems = dict(
            missing=[k for k in own if k not in state_dict and not k.endswith('num_batches_tracked')],
            unexpected=[k for k in state_dict if k.startswith(prefix) and k not in own],
            mis_shaped=[k for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)])
        problems = {kind: keys for kind, keys in problems.items() if keys}
        if problems:
            found = '; '.join(f'{kind}: {", ".join(keys[:5])}{" ..." if len(keys) > 5 else ""} ({len(keys)})'
                              for kind, keys in problems.items())
            raise RuntimeError(f'the checkpoint does not fit this {type(self).__name__} config, so some weights would '
                               f'stay random: {found}. A plain detector checkpoint goes to model.detector_checkpoint; '
                               'otherwise the config differs from the one the checkpoint was trained with (e.g. the '
                               "head's reduced_channels, fc_channels or num_classes).")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_detector:
            self.detector.eval()  # frozen BN statistics and no dropout, as in the paper
        return self

    def extract_feat(self, batch_inputs, batch_data_samples: Optional[SampleList] = None) -> Tuple[Tensor, ...]:
        """The inner detector's features of a preprocessed batch (what the EBM head reads);
        ``batch_data_samples`` for detectors whose ``extract_feat`` needs the metainfo."""
        return self.detector.extract_feat(batch_inputs)

    # -------------------------------------------------------------------------------- training
    def _ground_truth(self, batch_data_samples: SampleList):
        codec = self.ebm_head.codec
        gts = [getattr(s, codec.gt_field) for s in batch_data_samples]
        return [getattr(g, codec.box_field) for g in gts], [getattr(g, codec.label_field) for g in gts]

    def frozen_features(self, batch_inputs, batch_data_samples: Optional[SampleList] = None) -> Tuple[Tensor, ...]:
        """The frozen detector's features of a preprocessed batch (``extract_feat``), without
        gradient, through the feature cache when one is configured."""
        if self.feature_cache is not None:
            return self.feature_cache.features(batch_inputs, self.detector.extract_feat)
        with torch.no_grad():
            return self.extract_feat(batch_inputs, batch_data_samples)

    def loss(self, batch_inputs, batch_data_samples: SampleList) -> dict:
        gt_boxes, gt_labels = self._ground_truth(batch_data_samples)
        if self.freeze_detector:
            return self.ebm_head.loss(self.frozen_features(batch_inputs, batch_data_samples), gt_boxes, gt_labels)
        with capture_output(feature_module(self.detector)) as store:  # joint: the loss pass's features
            losses = self.detector.loss(batch_inputs, batch_data_samples)
        losses.update(self.ebm_head.loss(store[0], gt_boxes, gt_labels))
        return losses

    def train_step(self, data, optim_wrapper) -> dict:
        """mmengine's train step; with a frozen detector and ``head_updates`` K > 1, the detector's
        features are computed once per batch and the head takes K optimiser steps on them, each on
        fresh noise samples (the detector's forward is most of an EBM step: 5.2 s of 6.7 s at
        full scale)."""
        if not self.freeze_detector or self.head_updates == 1:
            return super().train_step(data, optim_wrapper)
        with optim_wrapper.optim_context(self):
            data = self.data_preprocessor(data, True)
        feats = self.frozen_features(data['inputs'], data['data_samples'])
        gt_boxes, gt_labels = self._ground_truth(data['data_samples'])
        for _ in range(self.head_updates):
            with optim_wrapper.optim_context(self):
                losses = self.ebm_head.loss(feats, gt_boxes, gt_labels)
            parsed, log_vars = self.parse_losses(losses)
            optim_wrapper.update_params(parsed)
        return log_vars

    # ------------------------------------------------------------------------------ prediction
    def detect(self, batch_inputs, batch_data_samples: SampleList, rescale: bool = True,
               refine: Optional[bool] = None) -> Tuple[SampleList, Tuple[Tensor, ...]]:
        """The inner detector's own prediction and the features it computed, in one pass; then
        refinement; then the boxes go to the original image (``rescale``). Boxes change frame once,
        at the end.

        Args:
            batch_inputs, batch_data_samples: as ``predict`` takes them, i.e. after the data
                preprocessor (``model.data_preprocessor(data, False)``; ``model.test_step`` does it).
            rescale: boxes to the original image (``rescale``; a no-op for LiDAR boxes, which
                have one frame).
            refine: None: as ``test_cfg`` says (``enabled=False`` still writes the before/after
                fields, boxes unchanged); True: refine even if disabled; False: the inner detector's
                raw results, without the before/after fields (to refine later with ``refine``).

        Returns:
            (results, feats): data samples as the inner detector's ``predict`` gives them (plus
            the refinement fields), and its neck's features of the batch.
        """
        results, feats = detect_with_features(self.detector, batch_inputs, batch_data_samples, rescale=False)
        if refine is not False:
            self.refine(feats, results, self.refine_cfg.replace(enabled=True) if refine else None)
        if rescale:
            self.rescale(results)
        return results, feats

    def refine(self, feats, results: SampleList, cfg: Optional[RefineConfig] = None) -> SampleList:
        """Refine, in place, the predictions of ``results`` (in the network-input frame, as
        ``detect(..., rescale=False, refine=False)`` gives them) on ``feats``; ``cfg`` defaults to
        ``test_cfg``. See ``refine_instances``."""
        codec = self.ebm_head.codec
        with torch.no_grad():  # refinement enables the gradients it needs (boxes only)
            refine_instances(self.ebm_head, feats, [getattr(r, codec.pred_field) for r in results],
                             [r.metainfo for r in results], cfg or self.refine_cfg)
        return results

    def rescale(self, results: SampleList) -> SampleList:
        """Boxes (refined and ``*_init``) from the network input to the original image, in place
        (``rescale_to_original``)."""
        for r in results:
            pred = r.pred_instances
            if 'masks' in pred:
                raise NotImplementedError(f'{type(self).__name__} refines boxes only; masks of '
                                          f'{type(self.detector).__name__} would stay in the network-input frame')
            rescale_to_original(pred, r.metainfo['scale_factor'])
        return results

    def predict(self, batch_inputs, batch_data_samples: SampleList, rescale: bool = True) -> SampleList:
        results, feats = self.detect(batch_inputs, batch_data_samples, rescale=rescale)
        return self.attach_val_loss(feats, batch_data_samples, results)

    def ground_truth_in_input_frame(self, boxes, metainfo: dict):
        """Ground-truth boxes of a test-pipeline sample (original image pixels) -> network-input
        pixels (``metainfo['scale_factor']``, mmdet's ``scale_boxes``)."""
        return scale_boxes(self.ebm_head.codec.to_tensor(boxes), metainfo['scale_factor'])

    def attach_val_loss(self, feats, batch_data_samples: SampleList, results: SampleList) -> SampleList:
        """With ``val_loss``: the EBM loss of each image (every valid ground-truth box, no
        ``max_gt_per_batch`` subsampling; noise seeded with ``VAL_LOSS_SEED`` per image, so an
        image's loss does not depend on its batch) on its own result as metainfo ``ebm_val_loss``
        with ``ebm_val_num_gt``, the number of boxes it averages over (0 and no loss when the
        image has none). One value per image is what ``EBMLossMetric`` needs to give the same
        ``ebm/val_loss`` for any batch size and number of processes. Batches without annotations
        (inference: mmdet's pipelines load none) get nothing. Returns ``results``.
        """
        if not self.val_loss or not results:
            return results
        codec = self.ebm_head.codec
        if any(codec.gt_field not in s for s in batch_data_samples):
            return results  # inference without annotations; EBMLossMetric raises if nothing carried the loss
        gt_boxes, gt_labels = self._ground_truth(batch_data_samples)
        for i, (result, sample) in enumerate(zip(results, batch_data_samples)):
            boxes = self.ground_truth_in_input_frame(gt_boxes[i], sample.metainfo)
            num_gt = int(codec.valid(boxes).sum())  # validation only: a host sync is fine
            if num_gt == 0:
                result.set_metainfo(dict(ebm_val_num_gt=0))  # computed, nothing to average
                continue
            image_feats = batch_slice(feats, i)
            device = self.ebm_head.fc_score.weight.device
            # no parameter graph (a loss that needs gradients in the boxes enables them itself)
            with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []), torch.no_grad():
                torch.manual_seed(self.VAL_LOSS_SEED)
                loss = self.ebm_head.loss(image_feats, [boxes], [gt_labels[i]], subsample=False)['loss_ebm']
            result.set_metainfo(dict(ebm_val_loss=float(loss), ebm_val_num_gt=num_gt))
        return results

    def _forward(self, batch_inputs, batch_data_samples: OptConfigType = None):
        return self.detector._forward(batch_inputs, batch_data_samples)

