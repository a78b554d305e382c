"""Score the detector's original boxes beside the refined ones, in the same test run."""
from typing import Optional, Sequence

from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmengine.registry import METRICS


def swap_initial_fields(sample: dict, suffix: str = '_init') -> dict:
    """A copy of a data-sample dict in which every prediction field ``F`` with a ``F_init``
    sibling (``bboxes``/``bboxes_init``, ``scores``/``scores_init``, ``bboxes_3d``/...) is
    replaced by the sibling. Works for any prediction key (``pred_instances``,
    ``pred_instances_3d``, ...)."""
    out = dict(sample)
    for key, value in sample.items():
        if key.startswith('pred') and isinstance(value, dict):
            value = dict(value)
            for field in [f for f in value if f.endswith(suffix)]:
                value[field[:-len(suffix)]] = value.pop(field)
            out[key] = value
    return out


def require_initial_fields(sample: dict) -> None:
    """Raise unless some prediction of a data-sample dict has a ``*_init`` field.

    Raises:
        ValueError: none has: the predictions did not come from an EBM refine detector, or a
            wrapper rebuilt them and dropped the fields (mmdet's ``DetTTAModel`` does;
            ``EBMDetTTAModel`` keeps them). Scoring the refined boxes as the detector's would make
            a silently wrong before/after table.
    """
    preds = [v for k, v in sample.items() if k.startswith('pred') and isinstance(v, dict)]
    if not any(f.endswith('_init') for pred in preds for f in pred):
        name = sample.get('img_path', sample.get('lidar_path', sample.get('sample_idx', '?')))
        raise ValueError(f'InitialPredictionMetric: the predictions of {name} have no *_init fields (the '
                         "detector's boxes before refinement): they did not come from an EBM refine detector, or "
                         'a wrapper rebuilt them without those fields (for test-time augmentation use '
                         "tta_model=dict(type='EBMDetTTAModel', ...) instead of DetTTAModel).")


def file_prefix_keys(metric: dict) -> list:
    """The arguments of a metric config that name where it writes result files: every
    ``*_prefix`` (``outfile_prefix``, ``pklfile_prefix``, ``submission_prefix``, ...) but the key
    prefix ``prefix``, that is set (not None)."""
    return [k for k, v in metric.items() if k.endswith('_prefix') and k != 'prefix' and v is not None]


def _suffixed(path: str, suffix: str) -> str:
    """``path`` + ``suffix``; a folder prefix ('results/') becomes 'results<suffix>'."""
    return (str(path).rstrip('/') or str(path)) + suffix


MIN_DROP = 1e-3  # drops of at most this (0.1 AP point, 0.001 IoU) are noise to the warnings


def dropped(before: float, after: float, min_drop: float = MIN_DROP) -> bool:
    """Whether ``after`` is below ``before`` by more than ``min_drop``, compared at 1e-9 so that a
    drop of exactly ``min_drop`` in float (0.385 - 0.384 = 0.0010000000000000009) is not one."""
    return before - after > min_drop + 1e-9


def warn_if_worse(results: Sequence[tuple], scope: str, min_drop: float = MIN_DROP) -> list:
    """One WARNING line naming every ``(name, before, after)`` that refinement lowered by more than
    ``min_drop``; returns those names."""
    worse = [(name, b, a) for name, b, a in results if dropped(b, a, min_drop)]
    if worse:
        print_log('!!! EBM refinement lowered ' + '; '.join(f'{n} {b:.4f} -> {a:.4f}' for n, b, a in worse) +
                  f' ({scope}). If the head was trained on few images it may not generalise to these: see '
                  "the README's 'Training on a small data set' (gate with test_cfg.min_gain).",
                  logger='current', level=30)
    return [n for n, _, _ in worse]


@METRICS.register_module()
class InitialPredictionMetric(BaseMetric):
    """Wraps any metric (CocoMetric, KittiMetric, ...) and evaluates it on the predictions as
    they were before EBM refinement (the ``*_init`` fields written by the refine detectors).

    Args:
        metric: config of the wrapped metric.
        prefix: key prefix of the results; defaults to the wrapped metric's prefix + '_init'
            (e.g. ``coco_init/bbox_mAP`` beside ``coco/bbox_mAP``).
        report_gain: also evaluate the wrapped metric on the refined predictions and report, for
            every numeric result, refined minus initial under the wrapped metric's prefix +
            '_gain' (``coco_gain/bbox_mAP``), a key mmengine's ``CheckpointHook(save_best=...)``
            and ``EarlyStoppingHook(monitor=...)`` can watch (give them ``rule='greater'``). It
            costs a second evaluation of the wrapped metric. A WARNING is logged for every AP-like
            result (name containing 'AP') that refinement lowered. Off under ``format_only``
            (the wrapped metric then computes nothing to compare).
        file_suffix: appended to every file prefix of the wrapped metric (``outfile_prefix`` of
            ``CocoMetric``, ``pklfile_prefix`` / ``submission_prefix`` of ``KittiMetric``: every
            argument named ``*_prefix`` but ``prefix``), so that the detector's boxes are written
            beside the refined ones instead of over them: with the README's evaluator pattern and
            ``outfile_prefix=P``, ``P.bbox.json`` holds the refined boxes and ``P_init.bbox.json``
            the detector's. The copy that ``report_gain`` evaluates writes no file (a temporary
            folder, as the wrapped metric without a prefix).

    Raises:
        ValueError: ``file_suffix`` is empty while the wrapped metric writes files (the two
            results would go to the same files).
    """

    def __init__(self, metric: dict, prefix: Optional[str] = None, collect_device: str = 'cpu',
                 report_gain: bool = False, file_suffix: str = '_init') -> None:
        files = file_prefix_keys(metric)
        if files and not file_suffix:
            raise ValueError(f'InitialPredictionMetric: the wrapped metric writes files ({", ".join(files)}); '
                             "file_suffix='' would write the detector's boxes over the refined ones")
        self.metric = METRICS.build({**metric, **{k: _suffixed(metric[k], file_suffix) for k in files}})
        report_gain = report_gain and not metric.get('format_only', False)
        self.refined_metric = METRICS.build({**metric, **{k: None for k in files}}) if report_gain else None
        super().__init__(collect_device=collect_device, prefix=prefix or f'{self.metric.prefix}_init')
        self.gain_prefix = f'{self.metric.prefix}_gain'

    @property
    def dataset_meta(self) -> Optional[dict]:
        return self.metric.dataset_meta

    @dataset_meta.setter
    def dataset_meta(self, meta: dict) -> None:
        self.metric.dataset_meta = meta
        if self.refined_metric is not None:
            self.refined_metric.dataset_meta = meta

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Raises ValueError (``require_initial_fields``) for a prediction without ``*_init`` fields."""
        for sample in data_samples:
            require_initial_fields(sample)
        initial = []
        self.metric.results = initial  # the wrapped metric appends to this list
        self.metric.process(data_batch, [swap_initial_fields(s) for s in data_samples])
        if self.refined_metric is None:
            self.results.extend(initial)
            return
        refined = []
        self.refined_metric.results = refined
        self.refined_metric.process(data_batch, data_samples)
        self.results.extend(zip(initial, refined))

    def compute_metrics(self, results: list) -> dict:
        if self.refined_metric is None:
            return self.metric.compute_metrics(results)
        before = self.metric.compute_metrics([r[0] for r in results])
        after = self.refined_metric.compute_metrics([r[1] for r in results])
        gains = {k: after[k] - v for k, v in before.items() if isinstance(v, (int, float)) and k in after}
        warn_if_worse([(k, before[k], after[k]) for k in gains if 'AP' in k],
                      f'{self.metric.prefix}, refined vs initial boxes')
        return {**before, **{GAIN_TAG + k: v for k, v in gains.items()}}

    def evaluate(self, size: int) -> dict:
        """mmengine's evaluate; the gains go under ``<wrapped prefix>_gain/``."""
        metrics = super().evaluate(size)
        tag = f'{self.prefix}/{GAIN_TAG}'
        return {(f'{self.gain_prefix}/{k[len(tag):]}' if k.startswith(tag) else k): v for k, v in metrics.items()}


GAIN_TAG = 'refined_minus_initial:'
