"""Shared fixtures: generated data (the project's own generators) and tiny config overrides."""
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def shapes_root(tmp_path_factory) -> Path:
    """A small generated COCO-format shapes set: 8 train and 4 val images of 256 px."""
    from ebm_det.synthetic import coco_shapes as gen
    out = tmp_path_factory.mktemp('shapes')
    gen.generate(out, 8, 'train', size=256, seed=0)
    gen.generate(out, 4, 'val', size=256, seed=1)
    return out


class QuadraticHead:
    """f(b) = -|b - target|^2 / 2 for every box: a stand-in EBM head with a known optimum, for exact
    cases of ``ebm_det.core.refine_boxes`` (2D boxes, climbed in the identity space with lambda 1
    unless the config sets one); a ``ebm_det.core.RefinableHead``."""

    def __init__(self, target):
        import torch
        from ebm_det.core import Box2DCodec, IdentitySpace

        class Codec(Box2DCodec):
            space = IdentitySpace()
            default_step_sizes = (1.0, )

        self.codec = Codec()
        self.target = torch.as_tensor(target, dtype=torch.float64)

    def prepare_features(self, feats):
        return feats

    def box_context(self, boxes, batch_idx):
        return {}

    def group_order(self, prepared, batch_idx, context):
        return None

    def score(self, prepared, boxes, batch_idx, labels):
        return -0.5 * ((boxes - self.target.to(boxes))**2).sum(-1)


def tiny_shapes_config(tmp_path: Path, base: str, data_root: Path, max_iters: int = 2, extra: str = '') -> Path:
    """Write a config inheriting ``configs/<base>`` that runs a few iterations on ``data_root``."""
    ann = f'{data_root}/annotations/instances_val.json'
    evaluator = "dict(type='CocoMetric', ann_file=ann, metric='bbox')"
    if 'ebm' in base:
        evaluator = (f"[{evaluator}, dict(type='InitialPredictionMetric', metric={evaluator}), "
                     "dict(type='RefinementLocalisationMetric'), dict(type='EBMLossMetric')]")
    text = f"""
    _base_ = ['{ROOT}/configs/{base}']
    ann = '{ann}'
    train_dataloader = dict(batch_size=2, dataset=dict(data_root='{data_root}/'))
    val_dataloader = dict(dataset=dict(data_root='{data_root}/'))
    test_dataloader = val_dataloader
    val_evaluator = {evaluator}
    test_evaluator = val_evaluator
    train_cfg = dict(max_iters={max_iters}, val_interval={max_iters})
    default_hooks = dict(checkpoint=dict(interval={max_iters}), logger=dict(interval=1))
    """
    path = tmp_path / f'tiny_{Path(base).stem}.py'
    path.write_text(textwrap.dedent(text) + textwrap.dedent(extra))
    return path


def run_config(cfg_path, work_dir, checkpoint=None, test=False, **options):
    """Train (or test, loading ``checkpoint``) a config through the mmengine Runner."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(str(cfg_path))
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = uuid.uuid4().hex  # several runners in one process
    cfg.merge_from_dict(options)
    if checkpoint:
        cfg.load_from = str(checkpoint)
    runner = Runner.from_cfg(cfg)
    return runner.test() if test else runner.train()


def count_forwards_and_steps(model, optim, check_inputs=None) -> dict:
    """Wrap ``model.detector.extract_feat`` and ``optim.step`` to count their calls (in the returned
    dict, keys 'extract' and 'steps'); ``check_inputs(batch_inputs)`` runs on each extract call.
    For the head-updates tests (2D and 3D): K optimiser steps on one frozen-detector forward."""
    calls = dict(extract=0, steps=0)
    extract, step = model.detector.extract_feat, optim.step

    def counted_extract(batch_inputs):
        calls['extract'] += 1
        if check_inputs is not None:
            check_inputs(batch_inputs)
        return extract(batch_inputs)

    def counted_step(*args, **kwargs):
        calls['steps'] += 1
        return step(*args, **kwargs)

    model.detector.extract_feat, optim.step = counted_extract, counted_step
    return calls


class OpRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """The aten ops a call runs (``with OpRecorder() as rec: ...; rec.ops``): what a CUDA-graph
    capture refuses shows on the CPU as ``aten.lift_fresh`` (a tensor from host data) or
    ``aten._local_scalar_dense`` (a read back to the host)."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))
