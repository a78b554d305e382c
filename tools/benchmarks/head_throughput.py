"""AP gain against training wall-clock for K head updates per frozen-detector forward
(``EBMRefineDetector(head_updates=K)``) and for the head's optimiser, on the 2D benchmark's frozen
detector.

    python -m tools.benchmarks.head_throughput [--updates 1 2 4 8] [--optimizers adam_1e-4 ...]
        [--iters 600] [--every 150] [--feature-cache 1200] [--work work_dirs/bench_2d_v2]
        [--data data/shapes_bench] [--out docs/figures/head_throughput.md]

For each K and optimiser (``OPTIMIZERS``) an NCE+ head is trained by tools/demo.sh on the detector that ``tools/benchmarks/
shapes_2d.py`` trained into ``--work`` (it must exist), with a checkpoint every ``--every``
iterations; each checkpoint is tested once (tools/test.py: COCO AP of the detector's and of the
refined boxes from one pass). Training time at a checkpoint is the checkpoint file's time since the
run started (so it includes start-up). Writes a markdown table and a plot (``.png`` beside it).
"""
import argparse
import time
from pathlib import Path

from tools.benchmarks.common import ROOT, command_line, figure, run_demo, test_checkpoint, write_report
from tools.benchmarks.shapes_2d import EBM_CFG, WORK, require_detector

METRICS = ('bbox_mAP', 'bbox_mAP_75')
# the head's optimiser on the shapes config's 600-iteration step schedule (no warm-up)
OPTIMIZERS = {
    'adam_1e-4': '',  # the CPU configs' own: Adam, lr 1e-4
    'adam_1e-3': 'optim_wrapper.optimizer.lr=1e-3',
    'sgd_paper': ('optim_wrapper.optimizer.type=SGD optim_wrapper.optimizer.lr=1e-3 '
                  'optim_wrapper.optimizer.momentum=0.9 optim_wrapper.optimizer.weight_decay=1e-4'),  # ECCV 2020
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--updates', type=int, nargs='+', default=[1, 2, 4, 8], help='K values')
    p.add_argument('--optimizers', nargs='+', default=['adam_1e-4'], choices=sorted(OPTIMIZERS),
                   help="the head's optimisers (OPTIMIZERS; adam_1e-4: the config's own), each run with every K")
    p.add_argument('--iters', type=int, default=600, help='EBM training iterations (batches) per run')
    p.add_argument('--every', type=int, default=150, help='checkpoint (and test) interval')
    p.add_argument('--feature-cache', type=int, default=1200, help='images whose features are cached (0: off)')
    p.add_argument('--work', default=WORK, help="shapes_2d.py's work dir (its det/ must exist); the heads train here")
    p.add_argument('--data', default='data/shapes_bench', help="shapes_2d.py's generated data set")
    p.add_argument('--out', default='docs/figures/head_throughput.md', help='markdown table (the .png plot beside it)')
    return p.parse_args()


def train(args, k: int, optimizer: str) -> tuple:
    """Train the head with K updates and ``optimizer`` (skipped when its last checkpoint exists);
    (work dir name, start time)."""
    name = f'ebm_k{k}_cache{args.feature_cache}' + ('' if optimizer == 'adam_1e-4' else f'_{optimizer}')
    if (ROOT / args.work / name / 'last_checkpoint').exists():
        return name, None
    options = (f'model.head_updates={k} model.feature_cache={args.feature_cache} '
               f'default_hooks.checkpoint.interval={args.every} default_hooks.checkpoint.max_keep_ckpts=100 '
               f'{OPTIMIZERS[optimizer]}').strip()
    start = time.time()
    run_demo(WORK=args.work, DATA=args.data, EBM_DIR=name, EBM_ITERS=args.iters, EBM_OPTS=options, RUN_TEST=0)
    (ROOT / args.work / name / 'start_time').write_text(str(start))
    return name, start


def test(args, checkpoint: Path) -> dict:
    """COCO metrics of one checkpoint (refined ``coco/``, the detector's ``coco_init/``)."""
    return test_checkpoint(EBM_CFG, checkpoint, checkpoint.with_suffix('.metrics.json'),
                           work_dir=ROOT / args.work / 'test', data=args.data, reuse=True)


def curve(args, k: int, optimizer: str) -> list:
    """[(iteration, minutes, AP gain, AP75 gain, AP, AP75)] at each checkpoint of one run."""
    name, _ = train(args, k, optimizer)
    folder = ROOT / args.work / name
    start = float((folder / 'start_time').read_text())
    rows = []
    for it in range(args.every, args.iters + 1, args.every):
        ckpt = folder / f'iter_{it}.pth'
        if not ckpt.exists():  # a run cut short (its last_checkpoint is an earlier one): the points it has
            continue
        m = test(args, ckpt)
        gains = [100 * (m[f'coco/{key}'] - m[f'coco_init/{key}']) for key in METRICS]
        rows.append((it, (ckpt.stat().st_mtime - start) / 60, *gains, 100 * m['coco/bbox_mAP'],
                     100 * m['coco/bbox_mAP_75']))
    return rows


def plot(curves: dict, path: Path) -> None:
    with figure(path) as axes:
        for k, rows in curves.items():
            minutes = [r[1] for r in rows]
            for ax, col in zip(axes, (2, 3)):
                ax.plot(minutes, [r[col] for r in rows], 'o-', label=k)
        for ax, name in zip(axes, ('AP', 'AP75')):
            ax.set_xlabel('EBM training time (min, 2 CPU cores)')
            ax.set_ylabel(f'{name} gain over the detector (points)')
            ax.grid(alpha=0.3)
            ax.legend()


def main() -> None:
    args = parse_args()
    require_detector(args.work)
    curves = {f'K = {k}' + ('' if len(args.optimizers) == 1 else f', {opt}'): curve(args, k, opt)
              for opt in args.optimizers for k in args.updates}
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(curves, out.with_suffix('.png'))
    command = command_line('tools.benchmarks.head_throughput')
    lines = [f'Command: `{command.strip()}` (feature cache {args.feature_cache} images, checkpoint every '
             f'{args.every} iterations of batch 4)', '',
             '| run | iterations | training min | AP gain | AP75 gain | AP | AP75 |', '|---|---|---|---|---|---|---|']
    for k, rows in curves.items():
        lines += [f'| {k} | {it} | {mins:.1f} | {ap:+.1f} | {ap75:+.1f} | {a:.1f} | {a75:.1f} |'
                  for it, mins, ap, ap75, a, a75 in rows]
    lines += ['', f'![AP gain against training time]({out.with_suffix(".png").name})']
    write_report('\n'.join(lines) + '\n', out)


if __name__ == '__main__':
    main()
