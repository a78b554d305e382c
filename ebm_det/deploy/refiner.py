"""An EBM head's refinement as one fixed-shape module: forward ops only (no autograd), no host sync,
no data-dependent shape; so it runs under ``torch.compile(fullgraph=True)`` and CUDA graphs, and
exports to ONNX. ``StaticBoxRefiner`` takes an ``EBMBoxHead`` (2D image boxes on an FPN),
``StaticBoxRefiner3D`` an ``EBMBoxHead3D`` (LiDAR boxes on a BEV map); both run the one loop
``ebm_det.core.static_refine.static_refine_boxes`` and differ only in the energy they give it.

The head is read, not copied: the module holds it and builds the fc weights from it at every call,
so a head loaded or trained afterwards is what runs. It imports no OpenMMLab package.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ebm_det.core import RefineConfig, RefinedBoxes, refine_boxes
from ebm_det.core.static_refine import (MLPWeights, flatten_pyramid, map_fpn_levels, mlp_score_and_grad, relu_mlp,
                                        relu_mlp_input_grad, roi_grid_box_grad, roi_grid_features,
                                        rotated_bev_box_grad, rotated_bev_features, static_refine_boxes)

INPUT_NAMES = ('boxes', 'scores', 'labels', 'batch_idx', 'img_shapes')
OUTPUT_NAMES = ('refined_boxes', 'ebm_scores', 'ebm_init_scores', 'refined')


def _linear_stack(modules: Sequence[nn.Module], owner: str) -> List[nn.Linear]:
    """The Linear layers of a stack of Linear, ReLU (and Dropout, a no-op in eval mode);
    NotImplementedError on any other module, whose box gradient is not written out."""
    extra = [m for s in modules for m in s.modules()
             if not isinstance(m, (nn.Sequential, nn.Linear, nn.ReLU, nn.Dropout))]
    if extra:
        raise NotImplementedError(f'{owner} knows fc stacks of Linear, ReLU and Dropout; got {extra}')
    return [m for s in modules for m in s.modules() if isinstance(m, nn.Linear)]


class _StaticRefinerBase(nn.Module):
    """What both refiners share: the settings' checks, the fc stack, the example inputs' shape.
    A subclass sets ``input_names`` and implements ``forward``, ``eager`` (``refine_boxes`` on the
    same inputs), ``example_inputs`` and ``dynamic_shapes``."""

    input_names: Tuple[str, ...]

    def __init__(self, head: nn.Module, cfg: Optional[RefineConfig]) -> None:
        super().__init__()
        self.head = head
        self.cfg = RefineConfig.build(cfg)
        if self.cfg.autocast is not None:
            raise ValueError(f'{type(self).__name__} runs in the head dtype; set autocast=None')
        self.cfg.step_sizes_for(head.codec.dim, head.codec.default_step_sizes)  # a ValueError now
        self.cfg.check_num_classes(head.num_classes)
        _linear_stack([head.fcs], type(self).__name__)

    @property
    def dtype(self) -> torch.dtype:
        return self.head.fc_score.weight.dtype

    def _score_stack(self, first_columns) -> MLPWeights:
        """``head.fcs`` + ``head.fc_score``, the first layer's columns reordered by ``first_columns``
        ((out, in) weight -> (out, in) weight in the order the static sampler gives its input)."""
        layers = _linear_stack([self.head.fcs], type(self).__name__) + [self.head.fc_score]
        return MLPWeights((first_columns(layers[0].weight), ) + tuple(m.weight for m in layers[1:]),
                          tuple(m.bias for m in layers))

    def forward(self, *inputs) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def eager(self, *inputs) -> RefinedBoxes:
        """``ebm_det.core.refine_boxes`` (the autograd loop) on the inputs of ``forward``."""
        raise NotImplementedError

    def _run(self, energy, boxes: Tensor, scores: Optional[Tensor], labels: Tensor, batch_idx: Tensor,
             img_shapes: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        out = static_refine_boxes(energy, boxes, batch_idx, labels, self.cfg, self.head.codec, scores, img_shapes)
        return out.boxes, out.ebm_scores, out.init_scores, out.refined

    def _labels_read(self, labels: Tensor) -> Optional[Tensor]:
        return None if self.head.fc_score.out_features == 1 else labels


class StaticBoxRefiner(_StaticRefinerBase):
    """``ebm_det.core.refine_boxes`` with an ``EBMBoxHead`` (``pooling='grid_sample'``), as a graph.

    f's box gradient is written out (``ebm_det.core.static_refine``): the bilinear sampler's x / y
    derivatives from its four corner values, the fc layers' transposed weights and ReLU masks, then
    the codec's box space. The results equal the eager path's (``EBMRefineDetector.refine`` ->
    ``refine_boxes``) up to float rounding.

    Args:
        head: an ``EBMBoxHead`` in eval mode (dropout, if configured, is left out, as eval mode
            does). ``pooling='prroi'`` is refused: Precise RoI Pooling's box gradient exists only
            through autograd.
        cfg: the refinement settings (the detector's ``test_cfg``); ``autocast`` is refused and
            ``chunk_size`` ignored.

    Inputs of ``forward`` (the detector's outputs for a batch of B images, N boxes in all):
        feats: the neck's levels that the head reads (the first ``len(head.featmap_strides)``),
            each (B, C, H_l, W_l).
        boxes: (N, 4) (x1, y1, x2, y2) in network-input pixels (before rescaling to the original
            image); scores: (N,) detection scores; labels, batch_idx: (N,) long;
        img_shapes: (B, 2) long (h, w) of each network input (metainfo ``img_shape``), for clipping.
    Returns:
        (refined_boxes (N, 4), ebm_scores (N,), ebm_init_scores (N,), refined (N,) bool), as
        ``RefinedBoxes``: a box not refined comes back as given, with ebm_scores -inf.
    """

    input_names = INPUT_NAMES

    def __init__(self, head: nn.Module, cfg: Optional[RefineConfig] = None) -> None:
        if getattr(head, 'pooling', None) != 'grid_sample':
            raise NotImplementedError(f"StaticBoxRefiner needs an EBMBoxHead with pooling='grid_sample' (got "
                                      f"{getattr(head, 'pooling', None)!r}); Precise RoI Pooling's box gradient "
                                      'exists only through autograd: refine with EBMRefineDetector.refine')
        super().__init__(head, cfg)

    @property
    def num_levels(self) -> int:
        return len(self.head.featmap_strides)

    def mlp(self) -> MLPWeights:
        """The head's fc stack, the first layer's columns reordered from (C, S, S) to (S, S, C)
        (the order ``roi_grid_features`` gives)."""
        s = self.head.roi_size
        return self._score_stack(lambda w: w.reshape(w.shape[0], -1, s, s).permute(0, 2, 3, 1).reshape(w.shape[0], -1))

    def prepare(self, feats: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """The levels the head reads, in its dtype, channel-reduced if it is configured so."""
        feats = tuple(f.to(self.dtype) for f in feats[:self.num_levels])
        reduce = self.head.reduce
        return tuple(reduce(f) for f in feats) if reduce is not None else feats

    def forward(self, feats: Sequence[Tensor], boxes: Tensor, scores: Optional[Tensor], labels: Tensor,
                batch_idx: Tensor, img_shapes: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        head = self.head
        pyramid = flatten_pyramid(self.prepare(feats), head.featmap_strides)
        mlp = self.mlp()
        read = self._labels_read(labels)
        finest = float(head.level_mapper.finest_scale)
        s, r = head.roi_size, head.sampling_ratio

        def energy(b: Tensor, context: Tensor, need_grad: bool):
            levels = map_fpn_levels(context, self.num_levels, finest)
            samples = roi_grid_features(pyramid, b, batch_idx, levels, s, r)
            f, g = mlp_score_and_grad(mlp, samples.features.flatten(1), read, need_grad)
            if not need_grad:
                return f, None
            return f, roi_grid_box_grad(samples, g.reshape(samples.features.shape), r)

        return self._run(energy, boxes, scores, labels, batch_idx, img_shapes)

    def eager(self, feats, boxes, scores, labels, batch_idx, img_shapes) -> RefinedBoxes:
        num_images = len(img_shapes) if img_shapes is not None else None
        return refine_boxes(self.head, feats, boxes, batch_idx, labels, self.cfg, scores=scores,
                            img_shapes=img_shapes, num_images=num_images)

    def example_inputs(self, num_images: int = 2, boxes_per_image: int = 3, image_size: Tuple[int, int] = (128, 160),
                       channels: Optional[int] = None, seed: int = 0) -> tuple:
        """Inputs of ``forward`` of the right kinds and shapes (random features and boxes, some
        across the image border), for tracing and tests. ``channels``: the neck's (default: the
        head's first conv or fc input)."""
        head = self.head
        g = torch.Generator().manual_seed(seed)
        if channels is None:
            channels = head.reduce.in_channels if head.reduce is not None else \
                head.fcs[0].in_features // (head.roi_size * head.roi_size)
        h, w = image_size
        feats = [torch.randn(num_images, channels, -(-h // s), -(-w // s), generator=g, dtype=self.dtype)
                 for s in head.featmap_strides]
        n = num_images * boxes_per_image
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5]) + 4
        boxes = torch.cat([xy, xy + wh], 1).to(self.dtype)
        scores = torch.rand(n, generator=g)
        labels = torch.randint(0, head.num_classes, (n, ), generator=g)
        batch_idx = torch.arange(num_images).repeat_interleave(boxes_per_image)
        img_shapes = torch.tensor([[h, w]] * num_images)
        device = head.fc_score.weight.device
        return tuple([f.to(device) for f in feats]), boxes.to(device), scores.to(device), labels.to(device), \
            batch_idx.to(device), img_shapes.to(device)

    def dynamic_shapes(self, inputs: tuple) -> tuple:
        """``torch.export`` dims: images B, boxes N, and each level's H_l, W_l."""
        images, boxes = torch.export.Dim('images', min=1), torch.export.Dim('boxes', min=0)
        feats = [{0: images, 2: torch.export.Dim(f'h{i}', min=1), 3: torch.export.Dim(f'w{i}', min=1)}
                 for i in range(len(inputs[0]))]
        return (type(inputs[0])(feats), {0: boxes}, {0: boxes}, {0: boxes}, {0: boxes}, {0: images})


class StaticBoxRefiner3D(_StaticRefinerBase):
    """``ebm_det.core.refine_boxes`` with an ``EBMBoxHead3D``, as a graph.

    f's box gradient is written out: the rotated BEV grid's bilinear x / y derivatives carried to
    the box's x, y, l, w and yaw (``rotated_bev_box_grad``), the z / h encoders' input gradients
    for z and h, the fc layers' transposed weights and ReLU masks, then ``Box3DSpace`` (absolute
    or normalized). Steps are projected as the eager loop projects them (yaw wrapped to [-pi, pi),
    absolute sizes clamped); LiDAR boxes are not clipped. The results equal
    ``EBMRefineDetector3D.refine`` -> ``refine_boxes`` up to float rounding.

    Args:
        head: an ``EBMBoxHead3D`` in eval mode.
        cfg: the refinement settings (the detector's ``test_cfg``); ``autocast`` is refused and
            ``chunk_size`` ignored.

    Inputs of ``forward`` (a batch of B frames, N boxes in all):
        feats: the neck's BEV levels (same H, W), each (B, C_l, H, W); concatenated along channels
            as ``EBMBoxHead3D.prepare_features`` does (one tensor: one level).
        boxes: (N, 7) LiDAR (x, y, z, l, w, h, yaw), metres and radians, in the frame of the map;
        scores: (N,) detection scores; labels, batch_idx: (N,) long (class; frame in [0, B)).
    Returns:
        (refined_boxes (N, 7), ebm_scores (N,), ebm_init_scores (N,), refined (N,) bool).
    """

    input_names = ('boxes', 'scores', 'labels', 'batch_idx')

    def __init__(self, head: nn.Module, cfg: Optional[RefineConfig] = None) -> None:
        if not hasattr(head, 'bev_range'):
            raise NotImplementedError(f'StaticBoxRefiner3D needs an EBMBoxHead3D, got {type(head).__name__}')
        super().__init__(head, cfg)
        _linear_stack([head.z_mlp, head.h_mlp], type(self).__name__)

    def _encoder(self, seq: nn.Sequential) -> MLPWeights:
        layers = _linear_stack([seq], type(self).__name__)
        return MLPWeights(tuple(m.weight for m in layers), tuple(m.bias for m in layers))

    @property
    def encoder_width(self) -> int:
        """Outputs of each of the z / h encoders (the head's ``zh_channels``)."""
        return self._encoder(self.head.z_mlp).weights[-1].shape[0]

    @property
    def grid_channels(self) -> int:
        """Columns of the first fc layer that read the BEV grid (C * n_w * n_l)."""
        return self.head.fcs[0].in_features - 2 * self.encoder_width

    def mlp(self) -> MLPWeights:
        """The head's fc stack, the grid's columns of the first layer reordered from (C, n_w, n_l)
        to (n_w, n_l, C) (the order ``rotated_bev_features`` gives); the z / h columns follow."""
        n_w, n_l = self.head.grid_size
        k = self.grid_channels

        def columns(w: Tensor) -> Tensor:
            grid = w[:, :k].reshape(w.shape[0], -1, n_w, n_l).permute(0, 2, 3, 1).reshape(w.shape[0], k)
            return torch.cat([grid, w[:, k:]], 1)
        return self._score_stack(columns)

    def prepare(self, feats: Sequence[Tensor]) -> Tensor:
        """The BEV map: the levels concatenated, in the head's dtype, channel-reduced if so configured."""
        bev = torch.cat([f.to(self.dtype) for f in feats], dim=1) if isinstance(feats, (list, tuple)) else \
            feats.to(self.dtype)
        return self.head.reduce(bev) if self.head.reduce is not None else bev

    def forward(self, feats: Sequence[Tensor], boxes: Tensor, scores: Optional[Tensor], labels: Tensor,
                batch_idx: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        head = self.head
        pyramid = flatten_pyramid([self.prepare(feats)], [1.0])
        mlp, z_mlp, h_mlp = self.mlp(), self._encoder(head.z_mlp), self._encoder(head.h_mlp)
        read = self._labels_read(labels)
        k, zh = self.grid_channels, self.encoder_width

        def energy(b: Tensor, context: Tensor, need_grad: bool):
            samples = rotated_bev_features(pyramid, b, batch_idx, head.bev_range, head.grid_size)
            z, z_hidden = relu_mlp(z_mlp, b[:, 2:3].to(self.dtype))
            h, h_hidden = relu_mlp(h_mlp, b[:, 5:6].to(self.dtype))
            f, g = mlp_score_and_grad(mlp, torch.cat([samples.features.flatten(1), z, h], 1), read, need_grad)
            if not need_grad:
                return f, None
            grad = rotated_bev_box_grad(samples, g[:, :k].reshape(samples.features.shape))
            d_z = relu_mlp_input_grad(z_mlp, z_hidden, g[:, k:k + zh]).to(grad.dtype)
            d_h = relu_mlp_input_grad(h_mlp, h_hidden, g[:, k + zh:]).to(grad.dtype)
            return f, torch.cat([grad[:, :2], d_z, grad[:, 3:5], d_h, grad[:, 6:]], 1)

        return self._run(energy, boxes, scores, labels, batch_idx, None)

    def eager(self, feats, boxes, scores, labels, batch_idx) -> RefinedBoxes:
        return refine_boxes(self.head, list(feats), boxes, batch_idx, labels, self.cfg, scores=scores,
                            num_images=feats[0].shape[0])

    def example_inputs(self, num_images: int = 2, boxes_per_image: int = 3, image_size: Tuple[int, int] = (64, 80),
                       channels: Optional[int] = None, seed: int = 0) -> tuple:
        """Inputs of ``forward`` (random BEV map of ``image_size`` (H, W) cells, one level; random
        boxes over the head's ``bev_range``, some across its border), for tracing and tests."""
        head = self.head
        g = torch.Generator().manual_seed(seed)
        if channels is None:
            n_w, n_l = head.grid_size
            channels = head.reduce.in_channels if head.reduce is not None else self.grid_channels // (n_w * n_l)
        h, w = image_size
        feats = (torch.randn(num_images, channels, h, w, generator=g, dtype=self.dtype), )
        n = num_images * boxes_per_image
        x0, y0, x1, y1 = head.bev_range
        lo, span = torch.tensor([x0, y0]), torch.tensor([x1 - x0, y1 - y0])
        xy = lo - 0.05 * span + torch.rand(n, 2, generator=g) * span * 1.1
        z = torch.randn(n, 1, generator=g)
        lwh = torch.rand(n, 3, generator=g) * torch.tensor([3.0, 1.0, 1.0]) + torch.tensor([1.5, 1.0, 1.0])
        yaw = (torch.rand(n, 1, generator=g) * 2 - 1) * torch.pi
        boxes = torch.cat([xy, z, lwh, yaw], 1).to(self.dtype)
        scores = torch.rand(n, generator=g)
        labels = torch.randint(0, head.num_classes, (n, ), generator=g)
        batch_idx = torch.arange(num_images).repeat_interleave(boxes_per_image)
        device = head.fc_score.weight.device
        return tuple(f.to(device) for f in feats), boxes.to(device), scores.to(device), labels.to(device), \
            batch_idx.to(device)

    def dynamic_shapes(self, inputs: tuple) -> tuple:
        """``torch.export`` dims: frames B, boxes N, and the map's H, W (shared by its levels)."""
        frames, boxes = torch.export.Dim('frames', min=1), torch.export.Dim('boxes', min=0)
        h, w = torch.export.Dim('h', min=1), torch.export.Dim('w', min=1)
        feats = [{0: frames, 2: h, 3: w} for _ in inputs[0]]
        return (type(inputs[0])(feats), {0: boxes}, {0: boxes}, {0: boxes}, {0: boxes})


def static_refiner_for(head: nn.Module, cfg: Optional[RefineConfig] = None) -> _StaticRefinerBase:
    """The fixed-shape refiner of ``head``: ``StaticBoxRefiner3D`` for an ``EBMBoxHead3D`` (it has a
    ``bev_range``), ``StaticBoxRefiner`` otherwise."""
    return (StaticBoxRefiner3D if hasattr(head, 'bev_range') else StaticBoxRefiner)(head, cfg)


def feed_names(refiner: _StaticRefinerBase, inputs: tuple) -> List[str]:
    """The ONNX input names of ``inputs``: ``feat_0 .. feat_{L-1}``, then ``refiner.input_names``."""
    return [f'feat_{i}' for i in range(len(inputs[0]))] + list(refiner.input_names)


def export_onnx(refiner: _StaticRefinerBase, path: str, inputs: Optional[tuple] = None, opset: int = 18) -> str:
    """Write ``refiner`` as an ONNX graph at ``path``, with the number of images (frames), of boxes
    and the map sizes dynamic. Inputs ``feat_0 .. feat_{L-1}`` and ``refiner.input_names``; outputs
    ``OUTPUT_NAMES``. Traced by ``torch.export`` (``torch.onnx.export(dynamo=True)``, which needs
    onnxscript). Returns ``path``."""
    refiner = refiner.eval()
    if inputs is None:
        inputs = refiner.example_inputs()
    with torch.no_grad():
        torch.onnx.export(refiner, inputs, path, input_names=feed_names(refiner, inputs),
                          output_names=list(OUTPUT_NAMES), opset_version=opset, dynamo=True,
                          dynamic_shapes=refiner.dynamic_shapes(inputs), external_data=False)
    return path
