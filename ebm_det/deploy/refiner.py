"""An ``EBMBoxHead``'s refinement as one fixed-shape module: forward ops only (no autograd), no host
sync, no data-dependent shape; so it runs under ``torch.compile(fullgraph=True)`` and CUDA graphs,
and exports to ONNX.

The head is read, not copied: the module holds it and builds the fc weights from it at every call,
so a head loaded or trained afterwards is what runs. It imports no OpenMMLab package.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ebm_det.core import RefineConfig
from ebm_det.core.static_refine import (MLPWeights, flatten_pyramid, map_fpn_levels, mlp_score_and_grad,
                                        roi_grid_box_grad, roi_grid_features, static_refine_boxes)

INPUT_NAMES = ('boxes', 'scores', 'labels', 'batch_idx', 'img_shapes')
OUTPUT_NAMES = ('refined_boxes', 'ebm_scores', 'ebm_init_scores', 'refined')


class StaticBoxRefiner(nn.Module):
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

    def __init__(self, head: nn.Module, cfg: Optional[RefineConfig] = None) -> None:
        super().__init__()
        if getattr(head, 'pooling', None) != 'grid_sample':
            raise NotImplementedError(f"StaticBoxRefiner needs an EBMBoxHead with pooling='grid_sample' (got "
                                      f"{getattr(head, 'pooling', None)!r}); Precise RoI Pooling's box gradient "
                                      'exists only through autograd: refine with EBMRefineDetector.refine')
        extra = [m for m in head.fcs.modules() if not isinstance(m, (nn.Sequential, nn.Linear, nn.ReLU, nn.Dropout))]
        if extra:
            raise NotImplementedError(f'StaticBoxRefiner knows fc stacks of Linear, ReLU and Dropout; got {extra}')
        self.head = head
        self.cfg = RefineConfig.build(cfg)
        if self.cfg.autocast is not None:
            raise ValueError('StaticBoxRefiner runs in the head dtype; set autocast=None')
        self.cfg.step_sizes_for(head.codec.dim, head.codec.default_step_sizes)  # a ValueError now
        self.cfg.check_num_classes(head.num_classes)

    @property
    def num_levels(self) -> int:
        return len(self.head.featmap_strides)

    def mlp(self) -> MLPWeights:
        """The head's fc stack, the first layer's columns reordered from (C, S, S) to (S, S, C)
        (the order ``roi_grid_features`` gives)."""
        layers: List[nn.Linear] = [m for m in self.head.fcs.modules() if isinstance(m, nn.Linear)]
        layers.append(self.head.fc_score)
        s = self.head.roi_size
        w1 = layers[0].weight
        w1 = w1.reshape(w1.shape[0], -1, s, s).permute(0, 2, 3, 1).reshape(w1.shape[0], -1)
        return MLPWeights((w1, ) + tuple(m.weight for m in layers[1:]), tuple(m.bias for m in layers))

    def prepare(self, feats: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """The levels the head reads, in its dtype, channel-reduced if it is configured so."""
        dtype = self.head.fc_score.weight.dtype
        feats = tuple(f.to(dtype) for f in feats[:self.num_levels])
        reduce = self.head.reduce
        return tuple(reduce(f) for f in feats) if reduce is not None else feats

    def forward(self, feats: Sequence[Tensor], boxes: Tensor, scores: Optional[Tensor], labels: Tensor,
                batch_idx: Tensor, img_shapes: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        head = self.head
        pyramid = flatten_pyramid(self.prepare(feats), head.featmap_strides)
        mlp = self.mlp()
        agnostic = head.fc_score.out_features == 1
        finest = float(head.level_mapper.finest_scale)
        s, r = head.roi_size, head.sampling_ratio

        def energy(b: Tensor, context: Tensor, need_grad: bool):
            levels = map_fpn_levels(context, self.num_levels, finest)
            samples = roi_grid_features(pyramid, b, batch_idx, levels, s, r)
            f, g = mlp_score_and_grad(mlp, samples.features.flatten(1), None if agnostic else labels, need_grad)
            if not need_grad:
                return f, None
            return f, roi_grid_box_grad(samples, g.reshape(samples.features.shape), r)

        out = static_refine_boxes(energy, boxes, batch_idx, labels, self.cfg, head.codec, scores, img_shapes)
        return out.boxes, out.ebm_scores, out.init_scores, out.refined


def example_inputs(refiner: StaticBoxRefiner, num_images: int = 2, boxes_per_image: int = 3,
                   image_size: Tuple[int, int] = (128, 160), channels: Optional[int] = None,
                   seed: int = 0) -> tuple:
    """Inputs of ``refiner.forward`` of the right kinds and shapes (random features and boxes), for
    tracing and for tests. ``channels``: the neck's (default: the head's first conv or fc input)."""
    head = refiner.head
    g = torch.Generator().manual_seed(seed)
    if channels is None:
        channels = head.reduce.in_channels if head.reduce is not None else \
            head.fcs[0].in_features // (head.roi_size * head.roi_size)
    h, w = image_size
    dtype = head.fc_score.weight.dtype
    feats = [torch.randn(num_images, channels, -(-h // s), -(-w // s), generator=g, dtype=dtype)
             for s in head.featmap_strides]
    n = num_images * boxes_per_image
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5]) + 4
    boxes = torch.cat([xy, xy + wh], 1).to(dtype)
    scores = torch.rand(n, generator=g)
    labels = torch.randint(0, head.num_classes, (n, ), generator=g)
    batch_idx = torch.arange(num_images).repeat_interleave(boxes_per_image)
    img_shapes = torch.tensor([[h, w]] * num_images)
    device = head.fc_score.weight.device
    return tuple([f.to(device) for f in feats]), boxes.to(device), scores.to(device), labels.to(device), \
        batch_idx.to(device), img_shapes.to(device)


def export_onnx(refiner: StaticBoxRefiner, path: str, inputs: Optional[tuple] = None, opset: int = 18) -> str:
    """Write ``refiner`` as an ONNX graph at ``path``, with the number of images, of boxes and the map
    sizes dynamic. Inputs ``feat_0 .. feat_{L-1}`` and ``INPUT_NAMES``; outputs ``OUTPUT_NAMES``.
    Traced by ``torch.export`` (``torch.onnx.export(dynamo=True)``, which needs onnxscript).
    Returns ``path``."""
    refiner = refiner.eval()
    if inputs is None:
        inputs = example_inputs(refiner)
    num_levels = len(inputs[0])
    images, boxes = torch.export.Dim('images', min=1), torch.export.Dim('boxes', min=0)
    feat_dims = [{0: images, 2: torch.export.Dim(f'h{i}', min=1), 3: torch.export.Dim(f'w{i}', min=1)}
                 for i in range(num_levels)]
    dynamic_shapes = (type(inputs[0])(feat_dims), {0: boxes}, {0: boxes}, {0: boxes}, {0: boxes}, {0: images})
    names = [f'feat_{i}' for i in range(num_levels)] + list(INPUT_NAMES)
    with torch.no_grad():
        torch.onnx.export(refiner, inputs, path, input_names=names, output_names=list(OUTPUT_NAMES),
                          opset_version=opset, dynamo=True, dynamic_shapes=dynamic_shapes, external_data=False)
    return path
