"""Score the detector's original boxes beside the refined ones, in the same test run."""
from typing import Optional, Sequence

from mmengine.evaluator import BaseMetric
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


@METRICS.register_module()
class InitialPredictionMetric(BaseMetric):
    """Wraps any metric (CocoMetric, KittiMetric, ...) and evaluates it on the predictions as
    they were before EBM refinement (the ``*_init`` fields written by the refine detectors).

    Args:
        metric: config of the wrapped metric.
        prefix: key prefix of the results; defaults to the wrapped metric's prefix + '_init'
            (e.g. ``coco_init/bbox_mAP`` beside ``coco/bbox_mAP``).
    """

    def __init__(self, metric: dict, prefix: Optional[str] = None, collect_device: str = 'cpu') -> None:
        self.metric = METRICS.build(metric)
        super().__init__(collect_device=collect_device, prefix=prefix or f'{self.metric.prefix}_init')

    @property
    def dataset_meta(self) -> Optional[dict]:
        return self.metric.dataset_meta

    @dataset_meta.setter
    def dataset_meta(self, meta: dict) -> None:
        self.metric.dataset_meta = meta

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Raises ValueError (``require_initial_fields``) for a prediction without ``*_init`` fields."""
        for sample in data_samples:
            require_initial_fields(sample)
        self.metric.results = self.results  # the wrapped metric appends to our list
        self.metric.process(data_batch, [swap_initial_fields(s) for s in data_samples])

    def compute_metrics(self, results: list) -> dict:
        return self.metric.compute_metrics(results)
