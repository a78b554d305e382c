"""Per-box-type codecs: what differs between 2D image boxes and 7-D LiDAR boxes, in one object.

A codec owns, for its box type:

- ``to_tensor`` / ``from_tensor``: the (N, D) float tensor the refiner works on, from and back to
  the detector's box object (a tensor, mmdet's ``HorizontalBoxes``, mmdet3d's
  ``LiDARInstance3DBoxes``; duck-typed, so this module imports no OpenMMLab package);
- ``valid``: the one validity rule, applied to ground truth in training and to detections (or
  track boxes) before and after refinement;
- ``clip``: what keeps a refined box inside its frame (2D: the image; LiDAR: nothing, the box
  space already wraps yaw and keeps sizes positive);
- the box space and the papers' default step sizes and noise;
- the names mmdet / mmdet3d give the prediction and ground-truth fields.
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .box_spaces import Box3DSpace, IdentitySpace, RelativeBox2DSpace


class BoxCodec:
    """Base class; see the module docstring. Subclasses set the class attributes below."""

    dim: int
    space: IdentitySpace
    default_step_sizes: Tuple[float, ...]
    default_sigmas: Sequence[Sequence[float]]
    size_dims: slice  # the columns that are sizes
    min_size: float  # sizes below this (in the box's unit) make a box invalid
    clips_to_image: bool = False  # ``clip`` needs each box's image shape
    # a box of unit sizes at the origin: a fixed-shape graph (``static_refine``) climbs it in place
    # of each box it did not select, so every row stays encodable; its results are dropped
    stand_in: Tuple[float, ...]
    # InstanceData field names of the predictions and of the ground truth
    pred_field, gt_field = 'pred_instances', 'gt_instances'
    box_field, score_field, label_field = 'bboxes', 'scores', 'labels'

    def to_tensor(self, boxes) -> Tensor:
        """(N, >= D) boxes (a tensor or a box object with ``.tensor``) -> (N, D) float tensor, float32
        unless the input is float64 (half-precision boxes are too coarse to refine)."""
        t = boxes.tensor if hasattr(boxes, 'tensor') else torch.as_tensor(boxes)
        t = t[:, :self.dim]
        return t if t.dtype == torch.float64 else t.float()

    def from_tensor(self, tensor: Tensor, like):
        """(N, D) tensor -> a box object of the type and dtype of ``like`` (N boxes)."""
        raise NotImplementedError

    def valid(self, boxes: Tensor) -> Tensor:
        """(N, D) -> (N,) bool: finite, with every size at least ``min_size`` and positive."""
        sizes = self.sizes(boxes)
        return torch.isfinite(boxes).all(-1) & (sizes >= self.min_size).all(-1) & (sizes > 0).all(-1)

    def sizes(self, boxes: Tensor) -> Tensor:
        return boxes[:, self.size_dims]

    def in_frame(self, boxes: Tensor, img_shapes: Tensor) -> Tensor:
        """(N,) bool: the (N, D) boxes that overlap their frame (``img_shapes`` (N, 2) (h, w)), so
        have features to be refined on; every box by default (a LiDAR box has no frame)."""
        return torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)

    def clip(self, boxes: Tensor, img_shapes: Optional[Tensor], ref: Optional[Tensor] = None) -> Tensor:
        """Keep (N, D) boxes inside their frame; ``img_shapes`` (N, 2) are (h, w) per box; ``ref``
        (N, D), the boxes before refinement: a coordinate may stay as far outside the frame as
        ``ref``'s was, so clipping alone never moves a box the detector put there."""
        return boxes


class Box2DCodec(BoxCodec):
    """Axis-aligned image boxes (x1, y1, x2, y2) in pixels.

    Valid: finite, width and height >= ``min_size`` pixels (1 px by default: a sub-pixel box has
    no RoI features to score). Refinement happens in ``RelativeBox2DSpace`` (cx/w0, cy/h0, log w,
    log h); clipping is to [0, w] x [0, h] of each box's image.
    """

    dim = 4
    clips_to_image = True
    stand_in = (0.0, 0.0, 1.0, 1.0)
    space = RelativeBox2DSpace()
    # ECCV 2020, NCE+: lambda (centre, size) = (8e-4, 3.2e-3); K = 3 noise sigmas per component
    default_step_sizes = (8e-4, 8e-4, 3.2e-3, 3.2e-3)
    default_sigmas = ((0.075, ) * 4, (0.15, ) * 4, (0.3, ) * 4)

    def __init__(self, min_size: float = 1.0) -> None:
        if not min_size > 0:
            raise ValueError(f'min_size must be positive, got {min_size!r}')
        self.min_size = min_size

    def sizes(self, boxes: Tensor) -> Tensor:
        return boxes[:, 2:4] - boxes[:, 0:2]

    def from_tensor(self, tensor: Tensor, like):
        ref = like.tensor if hasattr(like, 'tensor') else like
        out = tensor.to(device=ref.device, dtype=ref.dtype)
        return type(like)(out) if hasattr(like, 'tensor') else out

    def in_frame(self, boxes: Tensor, img_shapes: Tensor) -> Tensor:
        """(N,) bool: the (N, 4) boxes that overlap their image, [0, w] x [0, h] of ``img_shapes``
        (N, 2) (h, w), with a positive area (a track predicted wholly out of the frame does not)."""
        wh = img_shapes.to(boxes).flip(-1)
        return (boxes[:, :2] < wh).all(-1) & (boxes[:, 2:4] > 0).all(-1)

    def clip(self, boxes: Tensor, img_shapes: Optional[Tensor], ref: Optional[Tensor] = None) -> Tensor:
        """(N, 4) boxes clipped to [0, w] x [0, h] of ``img_shapes`` (N, 2) (h, w). With ``ref`` (N, 4),
        the boxes before refinement, each coordinate may stay as far outside the image as ``ref``'s
        was: a detector that does not clip (YOLOX) may put a box past the border, and clipping
        alone then never moves it, so the refined box differs from the detector's by refinement
        only; a coordinate inside the image stays inside."""
        if img_shapes is None:
            return boxes
        hi = img_shapes.to(boxes).flip(-1).repeat(1, 2)  # (N, 4) (w, h, w, h)
        lo = torch.zeros_like(hi)
        if ref is not None:
            ref = ref.to(boxes)
            lo, hi = torch.minimum(lo, ref), torch.maximum(hi, ref)
        return torch.minimum(torch.maximum(boxes, lo), hi)


class LiDARBoxCodec(BoxCodec):
    """7-D LiDAR boxes (x, y, z, l, w, h, yaw) in metres and radians (mmdet3d's LiDAR frame).

    Valid: finite with positive sizes. Refinement happens in ``Box3DSpace`` (absolute, as
    ebms_3dod, or ``normalized``); the space wraps yaw to [-pi, pi) and clamps sizes to at least
    ``Box3DSpace.min_size``, so nothing is clipped afterwards. Columns past the 7th of a box object
    (velocities) pass through unchanged.
    """

    dim = 7
    size_dims = slice(3, 6)
    stand_in = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0)
    min_size = 0.0
    pred_field, gt_field = 'pred_instances_3d', 'gt_instances_3d'
    box_field, score_field, label_field = 'bboxes_3d', 'scores_3d', 'labels_3d'
    # ebms_3dod: lambda 2e-4 on every dimension; K = 3 sigmas (x, y | z, l, w, h | yaw), x 1.25
    default_step_sizes = (2e-4, )
    default_sigmas = tuple(tuple(1.25 * v for v in (c, c, s, s, s, s, r))
                           for c, s, r in ((0.05, 0.025, 0.0125), (0.1, 0.05, 0.025), (0.2, 0.1, 0.05)))

    def __init__(self, normalized: bool = False) -> None:
        self.space = Box3DSpace(normalized=normalized)

    def from_tensor(self, tensor: Tensor, like):
        if not hasattr(like, 'tensor'):
            return torch.cat([tensor.to(like), like[:, self.dim:]], dim=1)
        full = torch.cat([tensor.to(like.tensor), like.tensor[:, self.dim:]], dim=1)
        return type(like)(full, box_dim=like.box_dim, with_yaw=like.with_yaw)

