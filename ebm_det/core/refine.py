"""Batched gradient-ascent refinement of boxes on a learned score f(x, y), and the one refinement
step (``refine_boxes``) on any head that keeps the ``RefinableHead`` contract."""
import contextlib
from typing import Any, Callable, Dict, NamedTuple, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import torch
from torch import Tensor

from .box_codecs import BoxCodec
from .box_spaces import IdentitySpace, check_finite
from .settings import RefineConfig

# score_fn(boxes (n, D), index (n,)) -> scores (n,). ``index`` gives each row's position in the
# caller's full box list, so the caller can look up per-box context (image, FPN level, class).
IndexedScoreFn = Callable[[Tensor, Tensor], Tensor]


class RefineResult(NamedTuple):
    boxes: Tensor  # (N, D) refined boxes, in the input dtype
    scores: Tensor  # (N,) f at the refined boxes
    init_scores: Tensor  # (N,) f at the input boxes
    steps: int  # steps actually run (< num_steps when every box converged)
    accepted: Optional[Tensor] = None  # (N,) long: steps of each box that raised f (the rest were reverted)
    attempted: Optional[Tensor] = None  # (N,) long: steps each box took part in

    PER_BOX = ('boxes', 'scores', 'init_scores', 'accepted', 'attempted')

    def take(self, index: Tensor) -> 'RefineResult':
        """The per-box fields at ``index`` (a permutation or a selection)."""
        return self._replace(**{f: getattr(self, f)[index] for f in self.PER_BOX if getattr(self, f) is not None})


def _score_and_grad(score_fn: IndexedScoreFn, space, y: Tensor, ref: Optional[Tensor],
                    index: Tensor):
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        scores = score_fn(space.decode(y, ref), index)
        # at least float32 (half-precision scores are too coarse to compare), but float64 scores
        # stay float64: rounding them to float32 would let a box's true score drop by an ulp
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
        # Gradients w.r.t. the boxes only: parameters' .grad stay untouched.
        grad, = torch.autograd.grad(scores.sum(), y)
    return scores.detach(), grad


def refine_by_gradient_ascent(score_fn: IndexedScoreFn,
                              boxes: Tensor,
                              step_sizes: Union[float, Sequence[float], Tensor],
                              cfg: RefineConfig,
                              space=None,
                              ref: Optional[Tensor] = None) -> RefineResult:
    """T steps of y <- y + lambda * grad_y f in ``space``, for every box at once.

    A box whose score would drop keeps its previous value and multiplies its own lambda by
    ``cfg.decay`` (eta), so no box's score ever decreases. Non-finite scores count as drops.

    Args:
        score_fn: (boxes (n, D), index (n,)) -> (n,) scores; differentiable in the boxes. It is
            called inside ``torch.enable_grad()``, so this works when the caller is under
            ``torch.no_grad()``; only the boxes get gradients.
        boxes: (N, D) native boxes (finite, else ValueError). Half-precision boxes are refined in
            float32 and returned in their dtype.
        step_sizes: lambda per dimension of the space: a float, a (D,) sequence, or (N, D)
            (``cfg.step_sizes`` resolved by the caller, who knows the box type).
        cfg: a ``RefineConfig`` (or a mapping of its fields); read here: ``num_steps`` (T),
            ``decay`` (eta), ``tol`` (a box has converged once its proposed step is below ``tol``
            in every dimension, max |lambda * grad|; converged boxes leave the active set and the
            loop stops when none is active; 0: exactly T steps) and ``chunk_size`` (refine at most
            this many boxes at a time, bounding memory for huge inputs).
        space: a box space (``box_spaces``); the identity when None.
        ref: reference boxes for the space, (N, D'); the initial boxes when None.
    Returns:
        RefineResult(boxes, scores, init_scores, steps).
    """
    cfg = RefineConfig.build(cfg)
    space = space or IdentitySpace()
    check_finite(boxes)
    n = boxes.shape[0]
    chunk_size = cfg.chunk_size
    if chunk_size is not None and n > chunk_size:
        # (N, D) per-box step sizes are sliced with their boxes; shared ones pass through
        lam_all = torch.as_tensor(step_sizes, dtype=torch.float64)
        per_box = lam_all.dim() == 2 and lam_all.shape[0] == n
        parts = [
            refine_by_gradient_ascent(
                lambda b, i, s=start: score_fn(b, i + s), boxes[start:start + chunk_size],
                lam_all[start:start + chunk_size] if per_box else step_sizes, cfg, space,
                None if ref is None else ref[start:start + chunk_size])
            for start in range(0, n, chunk_size)
        ]
        return RefineResult(*(torch.cat([getattr(p, f) for p in parts]) for f in ('boxes', 'scores', 'init_scores')),
                            steps=max(p.steps for p in parts),
                            accepted=torch.cat([p.accepted for p in parts]),
                            attempted=torch.cat([p.attempted for p in parts]))
    work = boxes.float() if boxes.dtype in (torch.float16, torch.bfloat16) else boxes
    ref = (work if ref is None else ref.to(work.dtype)).detach()
    # clone: IdentitySpace.encode returns its input, which the loop below updates in place
    y = space.encode(work.detach(), ref).clone()
    lam = torch.as_tensor(step_sizes, dtype=y.dtype, device=y.device).expand_as(y).clone()
    index = torch.arange(n, device=y.device)
    counts = torch.zeros(n, dtype=torch.long, device=y.device)
    if n == 0:
        empty = y.new_zeros(0)
        return RefineResult(boxes.clone(), empty, empty, 0, counts, counts.clone())
    accepted, attempted = counts, counts.clone()

    scores, grad = _score_and_grad(score_fn, space, y, ref, index)
    init_scores = scores.clone()
    active = index  # rows still refining
    steps = 0
    decay, tol = cfg.decay, cfg.tol
    for steps in range(1, cfg.num_steps + 1):
        ya, ra = y[active], ref[active]
        step = lam[active] * grad[active]
        cand = space.project(ya + step)
        cand_scores, cand_grad = _score_and_grad(score_fn, space, cand, ra, active)
        better = cand_scores >= scores[active]  # False for NaN
        keep = better[:, None]
        y[active] = torch.where(keep, cand, ya)
        scores[active] = torch.where(better, cand_scores, scores[active])
        grad[active] = torch.where(keep, cand_grad, grad[active])
        lam[active] = torch.where(keep, lam[active], lam[active] * decay)
        accepted[active] += better.long()
        attempted[active] += 1
        if tol > 0:
            moving = (lam[active] * grad[active]).abs().amax(-1) >= tol
            active = active[moving]  # one host sync per step, never per box
            if active.numel() == 0:
                break
    out = space.decode(space.project(y), ref).to(boxes.dtype)
    return RefineResult(out.detach(), scores, init_scores, steps, accepted, attempted)


def select_for_refinement(scores: Tensor, valid: Tensor, batch_idx: Tensor, num_images: int, score_thr: float,
                          max_per_img: int) -> Tensor:
    """(N,) bool: the boxes that get refined: ``valid`` ones scoring at least ``score_thr``, at most
    the ``max_per_img`` best of each image (vectorised; no per-box loop).

    Args:
        scores: (N,) detection scores; NaN scores rank last.
        valid: (N,) bool.
        batch_idx: (N,) long, the image of each box, in [0, num_images).
    """
    ok = valid & (scores >= score_thr)
    # rank the eligible boxes of each image by score: sort by (image, not ok, -score)
    key = batch_idx.double() * 4.0 + (~ok).double() * 2.0 - torch.sigmoid(scores.double().nan_to_num(0.0))
    order = key.argsort()
    counts = torch.bincount(batch_idx, minlength=num_images)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device) - starts[batch_idx[order]]
    return ok & (rank < max_per_img)


@runtime_checkable
class RefinableHead(Protocol):
    """What the refinement step needs from an EBM head: its box type, its features and f.
    ``refine_boxes``, ``refine_on_head`` and ``score_on_head`` call these and nothing else, so calls
    go one way, from the loop to the head (``BaseEBMHead`` implements them; so do the tests'
    stand-ins).

    Attributes:
        codec: the box type (``BoxCodec``): box space, validity rule, clipping, default lambda.
    """

    codec: BoxCodec

    def prepare_features(self, feats: Any) -> Any:
        """The detector's features -> what ``score`` reads; called once per refinement."""

    def box_context(self, boxes: Tensor, batch_idx: Tensor) -> Dict[str, Tensor]:
        """Per-box (N,) tensors held fixed while (N, D) boxes are scored or refined (2D: the FPN
        level); ``{}`` when there are none."""

    def group_order(self, prepared: Any, batch_idx: Tensor, context: Dict[str, Tensor]) -> Optional[Tensor]:
        """(N,) an order of the boxes that makes ``score`` cheaper, or None."""

    def score(self, prepared: Any, boxes: Tensor, batch_idx: Tensor, labels: Tensor, **context: Tensor) -> Tensor:
        """f(x, y): (N,) at (N, D) boxes of images ``batch_idx`` and classes ``labels`` ((N,) long)
        on prepared features; differentiable in the boxes."""


def group_for_scoring(head: RefinableHead, prepared: Any, boxes: Tensor, batch_idx: Tensor, labels: Tensor
                      ) -> Tuple[Tensor, Tensor, Tensor, Dict[str, Tensor], Optional[Tensor]]:
    """(N, D) boxes, (N,) batch_idx and labels, and their context, in the head's ``group_order``;
    and that order ((N,) long; None: unchanged)."""
    context = head.box_context(boxes, batch_idx)
    order = head.group_order(prepared, batch_idx, context)
    if order is None:
        return boxes, batch_idx, labels, context, None
    return boxes[order], batch_idx[order], labels[order], {k: v[order] for k, v in context.items()}, order


def score_on_head(head: RefinableHead, prepared: Any, boxes: Tensor, batch_idx: Tensor, labels: Tensor,
                  context_boxes: Optional[Tensor] = None) -> Tensor:
    """f at (N, D) boxes on prepared features, without gradient: (N,) as ``head.score`` gives it.
    The per-box context (2D: the FPN level) comes from ``context_boxes`` when given, so a box is
    scored where it was refined."""
    with torch.no_grad():
        context = head.box_context(boxes if context_boxes is None else context_boxes, batch_idx)
        return head.score(prepared, boxes, batch_idx, labels, **context)


def refine_on_head(head: RefinableHead, prepared: Any, boxes: Tensor, batch_idx: Tensor, labels: Tensor,
                   cfg: RefineConfig, step_sizes: Optional[Tensor] = None) -> RefineResult:
    """Gradient ascent on a head's f for (N, D) boxes of several images in one batched call, in
    ``head.codec.space`` (no selection, no clipping: ``refine_boxes`` does those around it).

    Args:
        head: a ``RefinableHead``.
        prepared: ``head.prepare_features`` of the detector's features.
        boxes: (N, D) valid boxes (``codec.valid``), in the frame of the features.
        batch_idx, labels: (N,) long.
        cfg: a ``RefineConfig``; lambda is ``cfg.step_sizes`` or the codec's default.
        step_sizes: optional (N, D) per-box lambdas, overriding ``cfg.step_sizes``.
    Returns:
        ``RefineResult`` in the input order.
    """
    codec = head.codec
    lam = step_sizes if step_sizes is not None else torch.tensor(
        cfg.step_sizes_for(codec.dim, codec.default_step_sizes), dtype=torch.float64)
    boxes, batch_idx, labels, context, order = group_for_scoring(head, prepared, boxes, batch_idx, labels)
    if order is not None and lam.dim() == 2:
        lam = lam[order.to(lam.device)]  # per-box steps follow their boxes

    def score_fn(b: Tensor, idx: Tensor) -> Tensor:
        return head.score(prepared, b, batch_idx[idx], labels[idx], **{k: v[idx] for k, v in context.items()})

    res = refine_by_gradient_ascent(score_fn, boxes, lam, cfg, space=codec.space)
    if order is None:
        return res
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return res.take(inverse)


class RefinedBoxes(NamedTuple):
    boxes: Tensor  # (N, D) every input box: the refined one where ``refined``, else the input box
    ebm_scores: Tensor  # (N,) f at the output box; -inf where the box was not refined
    init_scores: Tensor  # (N,) f at the input box; -inf where the box was not selected
    refined: Tensor  # (N,) bool: refined, clipped, still valid and f gained >= min_gain (0: no worse), so written back


def refine_boxes(head: RefinableHead, feats, boxes: Tensor, batch_idx: Tensor, labels: Tensor, cfg: RefineConfig,
                 scores: Optional[Tensor] = None, img_shapes: Optional[Tensor] = None,
                 num_images: Optional[int] = None) -> RefinedBoxes:
    """The one refinement step of every box type and caller: select -> refine in the box space ->
    clip (or wrap) -> keep the refined box only where it is still valid and no worse than the input
    (at least ``cfg.min_gain`` better, when the refinement gate is set).

    Args:
        head: a ``RefinableHead`` (an ``EBMBoxHead``, ``EBMBoxHead3D``); its features are
            prepared once per call.
        feats: the detector's features (its neck output), as ``head.prepare_features`` takes them.
        boxes: (N, D) boxes in the frame of ``feats`` (2D: network-input pixels x1, y1, x2, y2;
            LiDAR: metres and radians).
        batch_idx: (N,) long, each box's image.
        labels: (N,) long, the class whose f is climbed.
        cfg: the settings; ``score_thr`` and ``max_per_img`` apply only when ``scores`` is given.
        scores: (N,) detection scores; None refines every valid box.
        img_shapes: (B, 2) (h, w) per image for 2D clipping; None: no clipping.
        num_images: B (default: ``img_shapes``' length, else max(batch_idx) + 1).
    Returns:
        ``RefinedBoxes``. For every written-back box ``ebm_scores`` is f at the box returned (a
        box that clipping changed is scored again, with the context (FPN level) of its refinement)
        and at least ``init_scores``. A box that is invalid (``codec.valid``: non-finite, too small),
        wholly outside its image (``codec.in_frame``), not selected, made invalid by refinement or
        clipping, or that clipping leaves scoring below its input (below its input +
        ``cfg.min_gain``), or that no step moved (``num_steps=0``, every step reverted), comes back
        exactly as given, with ``ebm_scores`` -inf and ``refined`` False: no degenerate box is ever
        written back, and T = 0 changes nothing. Clipping keeps each coordinate inside the image,
        or as far outside as the input box's was (``codec.clip`` with ``ref``): a box the detector
        put past the border is not pulled in by clipping alone.
    """
    codec = head.codec
    n = boxes.shape[0]
    if num_images is None:
        num_images = len(img_shapes) if img_shapes is not None else (int(batch_idx.max()) + 1 if n else 0)
    valid = codec.valid(boxes)
    if img_shapes is not None and n:  # a box wholly outside its image has no features to climb
        valid &= codec.in_frame(boxes, img_shapes.to(boxes.device)[batch_idx])
    if scores is None:
        sel = valid
    else:
        sel = select_for_refinement(scores, valid, batch_idx, num_images, cfg.score_thr, cfg.max_per_img)
    start, sel_idx, sel_labels = boxes[sel], batch_idx[sel], labels[sel]
    amp = (torch.autocast(boxes.device.type, dtype=getattr(torch, cfg.autocast)) if cfg.autocast else
           contextlib.nullcontext())
    with amp:
        prepared = head.prepare_features(feats)
        res = refine_on_head(head, prepared, start, sel_idx, sel_labels, cfg)
    shapes = None if img_shapes is None else img_shapes.to(boxes.device)[sel_idx]
    out = codec.clip(res.boxes, shapes, ref=start)
    out_scores = res.scores.float()
    clipped = (out != res.boxes).any(-1)
    if bool(clipped.any()):  # one host sync per call, after the ascent
        # the same f as the ascent's: its features, precision and the context of the start box
        with amp:
            out_scores[clipped] = score_on_head(head, prepared, out[clipped], sel_idx[clipped], sel_labels[clipped],
                                                context_boxes=start[clipped]).float()
    init = res.init_scores.float()
    # refinement or clipping made it degenerate or worse, or it gained less than the gate's margin;
    # a box no step moved (T = 0, every step reverted) comes back exactly, not round-tripped
    # through the box space
    moved = res.accepted > 0
    kept = moved & codec.valid(out) & (out_scores >= init + cfg.gain_margin(sel_labels))
    refined = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    refined[sel] = kept
    new_boxes = boxes.clone()
    new_boxes[sel] = torch.where(kept[:, None], out.to(boxes.dtype), start)
    ebm = torch.full((n, ), float('-inf'), device=boxes.device, dtype=torch.float32)
    ebm[sel] = torch.where(kept, out_scores, ebm[sel])
    init_all = torch.full_like(ebm, float('-inf'))
    init_all[sel] = init
    return RefinedBoxes(new_boxes, ebm, init_all, refined)
