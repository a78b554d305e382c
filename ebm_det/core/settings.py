"""Settings objects checked when they are built: ``RefineConfig`` and the ``strict_fields`` rule.

A config typo (``num_step=5``, ``bet=0.1``) must fail when the model is built, naming the valid
keys, not silently fall back to a default or fail deep inside a test run.
"""
import dataclasses
import functools
import math
from typing import Optional, Sequence, Tuple, Union

StepSizes = Union[float, Sequence[float]]


def strict_fields(cls):
    """Class decorator for a dataclass: unknown keyword arguments raise ``ValueError`` naming the
    valid ones (Python's own TypeError names only the first bad one and not the choices)."""
    init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls) if f.init]

    @functools.wraps(init)
    def checked_init(self, *args, **kwargs):
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise ValueError(f'{cls.__name__}: unknown argument(s) {unknown}; valid: {names}')
        init(self, *args, **kwargs)

    cls.__init__ = checked_init
    return cls


def check_step_sizes(step_sizes: StepSizes, dim: Optional[int] = None, name: str = 'step_sizes') -> Tuple[float, ...]:
    """(D,) or scalar step sizes -> a tuple of positive finite floats; ValueError otherwise, or when
    a sequence does not have ``dim`` entries."""
    values = (float(step_sizes), ) if isinstance(step_sizes, (int, float)) else tuple(float(s) for s in step_sizes)
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f'{name} must be positive and finite, got {step_sizes!r}')
    if dim is not None and len(values) not in (1, dim):
        raise ValueError(f'{name} needs 1 or {dim} values (one per box-space dimension), got {len(values)}')
    return values


@strict_fields
@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """Test-time refinement settings: one set of defaults for every box type and caller.

    The step sizes and the reverting rule are those of the ECCV 2020 / BMVC 2020 papers
    (Gustafsson et al.): T steps of y <- y + lambda * grad_y f in the box space; a box whose score
    drops is reverted and its lambda multiplied by ``decay``.

    Args:
        num_steps: T (>= 0; 0 scores the boxes without moving them). 5 by default: on COCO it
            gives the AP of the papers' T = 10 in half the time (docs/figures/refine_levers_steps.md);
            the LiDAR configs take ebms_3dod's 10 from configs/_base_/ebm_refine_3d.py.
        step_sizes: lambda, a scalar or one value per box-space dimension; None takes the box
            type's paper default (``BoxCodec.default_step_sizes``).
        decay: eta in (0, 1].
        tol: early exit: a box stops once its proposed step is below ``tol`` in every dimension;
            0 runs exactly T steps.
        max_per_img: at most this many boxes per image are refined, the highest-scoring first.
        score_thr: boxes scoring below this are not refined.
        chunk_size: refine at most this many boxes at a time (bounds memory); None: all at once.
        rescore_weight: w in [0, 1]; w > 0 replaces a refined box's score s by
            s^(1 - w) * sigmoid(f)^w. 0 leaves the detector's scores unchanged.
        enabled: False skips refinement in ``predict`` (the detector's boxes pass through).
        min_gain: the refinement gate: a refined box is written back only if f rose by at least
            this much over the input box (f(refined) >= f(input) + min_gain); otherwise the input
            box comes back unrefined. A scalar, or one value per class (indexed by the box's label;
            ``inf`` never refines that class). >= 0; 0 (default) keeps every refined box that is
            no worse, as the papers do. Calibrate it on held-out data with
            ``tools/calibrate_gate.py``, never on the images it is scored on.
        autocast: None (default: float32), 'bfloat16' or 'float16': run the head under
            ``torch.autocast`` while refining (a speed lever, mostly for GPUs and CPUs with bf16
            units); the scores are cast to float32 before every accept/revert comparison, so the
            rule is exact for the f that the reduced precision computes.

    Raises:
        ValueError: an unknown key or a value outside its range.
    """
    num_steps: int = 5
    step_sizes: Optional[StepSizes] = None
    decay: float = 0.5
    tol: float = 0.0
    max_per_img: int = 100
    score_thr: float = 0.0
    chunk_size: Optional[int] = None
    rescore_weight: float = 0.0
    enabled: bool = True
    min_gain: Union[float, Sequence[float]] = 0.0
    autocast: Optional[str] = None

    def __post_init__(self) -> None:
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 0:
            raise ValueError(f'num_steps must be an integer >= 0, got {self.num_steps!r}')
        if self.step_sizes is not None:
            values = check_step_sizes(self.step_sizes)
            object.__setattr__(self, 'step_sizes', values[0] if isinstance(self.step_sizes, (int, float)) else values)
        if not 0 < self.decay <= 1:
            raise ValueError(f'decay must be in (0, 1], got {self.decay!r}')
        if not self.tol >= 0:
            raise ValueError(f'tol must be >= 0, got {self.tol!r}')
        if isinstance(self.max_per_img, bool) or not isinstance(self.max_per_img, int) or self.max_per_img < 0:
            raise ValueError(f'max_per_img must be an integer >= 0, got {self.max_per_img!r}')
        if not math.isfinite(self.score_thr):
            raise ValueError(f'score_thr must be finite, got {self.score_thr!r}')
        if self.chunk_size is not None and (not isinstance(self.chunk_size, int) or self.chunk_size < 1):
            raise ValueError(f'chunk_size must be None or an integer >= 1, got {self.chunk_size!r}')
        if not 0 <= self.rescore_weight <= 1:
            raise ValueError(f'rescore_weight must be in [0, 1], got {self.rescore_weight!r}')
        if not isinstance(self.enabled, bool):
            raise ValueError(f'enabled must be True or False, got {self.enabled!r}')
        gains = (self.min_gain, ) if isinstance(self.min_gain, (int, float)) else tuple(self.min_gain)
        if not gains or any(isinstance(g, bool) or not isinstance(g, (int, float)) or not g >= 0 for g in gains):
            raise ValueError(f'min_gain must be a number >= 0 (inf allowed) or a non-empty sequence of them, one per '
                             f'class, got {self.min_gain!r}')
        object.__setattr__(self, 'min_gain', float(self.min_gain) if isinstance(self.min_gain, (int, float)) else
                           tuple(float(g) for g in gains))
        if self.autocast not in (None, 'bfloat16', 'float16'):
            raise ValueError(f"autocast must be None, 'bfloat16' or 'float16', got {self.autocast!r}")

    @classmethod
    def build(cls, cfg=None, **overrides) -> 'RefineConfig':
        """A ``RefineConfig`` from None, a mapping (a config's ``test_cfg``) or a ``RefineConfig``,
        with ``overrides`` on top. Raises ValueError on an unknown key or a bad value."""
        if isinstance(cfg, RefineConfig):
            return dataclasses.replace(cfg, **overrides) if overrides else cfg
        return cls(**{**dict(cfg or {}), **overrides})

    def replace(self, **changes) -> 'RefineConfig':
        """A copy with ``changes`` (checked like the constructor)."""
        return RefineConfig.build(self, **changes)

    def check_num_classes(self, num_classes: Optional[int], owner: str = 'test_cfg') -> 'RefineConfig':
        """ValueError unless a per-class ``min_gain`` has ``num_classes`` values (None: unknown, no
        check). Returns self."""
        if isinstance(self.min_gain, tuple) and num_classes is not None and len(self.min_gain) != num_classes:
            raise ValueError(f'{owner}.min_gain has {len(self.min_gain)} values; a per-class gate needs one per class '
                             f'of the EBM head ({num_classes})')
        return self

    def gain_margin(self, labels: 'torch.Tensor') -> Union[float, 'torch.Tensor']:
        """``min_gain`` for boxes of classes ``labels`` ((N,) long): a float, or an (N,) tensor on
        the labels' device for per-class gates."""
        if isinstance(self.min_gain, (int, float)):
            return float(self.min_gain)
        import torch
        return torch.tensor(self.min_gain, device=labels.device)[labels]

    def step_sizes_for(self, dim: int, default: StepSizes) -> Tuple[float, ...]:
        """The step sizes to use in a ``dim``-dimensional box space (``default`` when unset)."""
        return check_step_sizes(default if self.step_sizes is None else self.step_sizes, dim)
