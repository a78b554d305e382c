"""What the benchmarks share: a trained model through the stack's own loader (mmdet's
``init_detector``, mmdet3d's ``init_model``), the first test batches of its config, a test pass of
a checkpoint through the mmengine Runner (``tools/test.py``), timing (``torch.utils.benchmark``) and
writing the report.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch.utils.benchmark import Measurement, Timer
from torch.utils.benchmark.utils.timer import timer as synchronized_clock

ROOT = Path(__file__).resolve().parents[2]


def parse_options(options: Sequence[str]) -> dict:
    """``key=value`` strings, parsed as ``tools/test.py --cfg-options`` parses them (mmengine's
    ``DictAction``): ``['model.test_cfg.num_steps=10']`` -> ``{'model.test_cfg.num_steps': 10}``."""
    from mmengine.config import DictAction
    namespace = argparse.Namespace()
    DictAction(option_strings=[], dest='options')(None, namespace, list(options))
    return namespace.options


def load_model(config, checkpoint: Optional[str] = None, device: str = 'cpu', options: Optional[dict] = None,
               lidar: bool = False) -> torch.nn.Module:
    """The model of ``config`` (a path, relative to the repository, or a ``Config``) with
    ``checkpoint`` (None: the config's initial weights, ``init_weights`` not called, so nothing is
    downloaded) and config ``options`` merged, in eval mode on ``device``: mmdet's
    ``init_detector``, or mmdet3d's ``init_model`` for a LiDAR config (``lidar``). Its config is
    ``model.cfg``."""
    import ebm_det  # noqa: F401  (registers the modules)
    if isinstance(config, (str, Path)):
        config = str(ROOT / config)
    if str(device) == 'cuda':
        device = f'cuda:{torch.cuda.current_device()}'  # init_model's torch.cuda.set_device needs an index
    if lidar:
        from mmdet3d.apis import init_model
        return init_model(config, checkpoint, device=device, cfg_options=options)
    from mmdet.apis import init_detector
    return init_detector(config, checkpoint, device=device, cfg_options=options)


def test_batches(model: torch.nn.Module, num_batches: int) -> list:
    """The first ``num_batches`` batches of the test loader of ``model.cfg`` (mmengine's
    ``Runner.build_dataloader``), through the model's data preprocessor."""
    from mmengine.runner import Runner
    loader = Runner.build_dataloader(model.cfg.test_dataloader)
    return [model.data_preprocessor(b, False) for _, b in zip(range(num_batches), loader)]


def run_demo(env: Optional[dict] = None, **variables) -> None:
    """``tools/demo.sh`` (generate the shapes set, train a detector, then an EBM head on it; each step
    skipped when its output exists) with ``env`` (default: this process's) and its ``variables``
    (``WORK``, ``DET_ITERS``, ``EBM_OPTS``, ...)."""
    env = dict(os.environ if env is None else env, **{k: str(v) for k, v in variables.items()})
    subprocess.run(['bash', 'tools/demo.sh'], check=True, cwd=ROOT, env=env)


def write_coco_subset(full: dict, image_ids, path: Path) -> None:
    """The images ``image_ids`` of the COCO-format annotations ``full`` and their annotations, written
    to ``path`` (left as it is when it already holds them)."""
    keep = set(image_ids)
    text = json.dumps(dict(full, images=[im for im in full['images'] if im['id'] in keep],
                           annotations=[a for a in full['annotations'] if a['image_id'] in keep]))
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def calibrate_gate(config: str, checkpoint: str, ann_file: str, data_root: str, img_prefix: str, out: Path,
                   options: Sequence[str] = (), per_class: bool = False):
    """The refinement gate's margin ``min_gain`` (a float, or a list per class with ``per_class``),
    calibrated by ``tools/calibrate_gate.py`` on the images of ``ann_file`` under ``data_root`` /
    ``img_prefix`` (on the CPU), and written to ``out``; read back from ``out`` when it exists."""
    if not out.exists():
        subprocess.run([sys.executable, 'tools/calibrate_gate.py', config, checkpoint, '--ann-file', str(ann_file),
                        '--data-root', data_root, '--img-prefix', img_prefix, '--out', str(out), '--device', 'cpu',
                        *(['--per-class'] if per_class else []), *(['--cfg-options', *options] if options else [])],
                       check=True, cwd=ROOT)
    margin = json.loads(out.read_text())['min_gain']
    return float(margin) if isinstance(margin, (str, int, float)) else [float(m) for m in margin]


def test_checkpoint(config: str, checkpoint, out: Path, options: Sequence[str] = (), work_dir=None,
                    data: Optional[str] = None, reuse: bool = False) -> dict:
    """The metrics of one ``tools/test.py`` run (the mmengine Runner's test loop, the config's
    evaluator) of ``checkpoint`` of ``config`` with config ``options``, also written to ``out``;
    with ``reuse``, those of ``out`` when it exists. ``data``: a COCO-format root whose val images
    (``annotations/instances_val.json``) replace the config's test set, for each metric of its
    evaluator. For an EBM config the metrics are ``coco/...`` (refined), ``coco_init/...`` (the
    detector's), ``refine/...`` and ``ebm/val_loss``; for a plain detector config ``coco/...``."""
    from mmengine.config import Config
    if not (reuse and out.exists()):
        evaluator = []
        if data is not None:
            ann = f'{data}/annotations/instances_val.json'
            ebm = isinstance(Config.fromfile(str(ROOT / config)).test_evaluator, list)  # CocoMetric + the EBM's
            evaluator = [f'test_dataloader.dataset.data_root={data}/', *(
                [f'test_evaluator.0.ann_file={ann}', f'test_evaluator.1.metric.ann_file={ann}'] if ebm else
                [f'test_evaluator.ann_file={ann}'])]
        options = [*evaluator, *options]
        subprocess.run([sys.executable, 'tools/test.py', config, str(checkpoint), '--work-dir',
                        str(work_dir or out.parent / 'test'), '--out-json', str(out),
                        *(['--cfg-options', *options] if options else [])], check=True, cwd=ROOT)
    return json.loads(out.read_text())


def median_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` timed runs, by
    ``torch.utils.benchmark.Timer`` (its warm-up first; the accelerator synchronised; this
    process's torch threads, not the Timer's default of one)."""
    timer = Timer('fn()', globals=dict(fn=fn), num_threads=torch.get_num_threads())
    first = timer.blocked_autorange(min_run_time=0)  # its warm-up, then one timed run
    if repeats < 2:
        return first.median
    # runs until (repeats - 1.5) runs' time has passed: repeats - 1 more runs
    rest = timer.blocked_autorange(min_run_time=(repeats - 1.5) * first.median)
    return Measurement.merge([first, rest])[0].median


def timed(fn: Callable, *args, **kwargs) -> Tuple[object, float]:
    """(``fn(*args, **kwargs)``, the wall-clock seconds of that one call): for a call whose output
    the benchmark goes on with, which ``median_seconds`` would repeat. The clock is
    ``torch.utils.benchmark``'s (it synchronises the accelerator)."""
    start = synchronized_clock()
    out = fn(*args, **kwargs)
    return out, synchronized_clock() - start


def command_line(module: str, argv: Optional[Sequence[str]] = None) -> str:
    """The command that reproduces this run, as the reports quote it: ``python -m <module>`` and
    ``argv`` (default: this process's arguments), shell-quoted."""
    return ' '.join(['python', '-m', module, *map(shlex.quote, sys.argv[1:] if argv is None else argv)])


def rss_mb() -> float:
    """This process's resident memory now, in MB (Linux ``/proc``)."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def write_report(text: str, out: Union[str, Path]) -> None:
    """Print the markdown ``text`` and write it to ``out`` (relative to the repository), making its
    folder."""
    print(text)
    path = ROOT / out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@contextmanager
def figure(path: Path, columns: int = 2, size: Tuple[float, float] = (10, 4)):
    """A row of ``columns`` matplotlib axes (Agg), saved to ``path`` (100 dpi) after the block."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, columns, figsize=size)
    try:
        yield axes
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
