"""Cascade R-CNN side by side with EBM refinement, at equal total training time, on the 2D
benchmark's data and backbone (the half-width R18-FPN of the shapes configs):

* Faster R-CNN + EBM: the 2D benchmark's frozen detector and its NCE+ head
  (``tools/benchmarks/shapes_2d.py``'s training, reused when its work dir holds it);
* Cascade R-CNN (3 stages, ``configs/cascade-rcnn_r18_fpn_shapes.py``) trained for the time the
  Faster R-CNN and its head took together;
* Cascade R-CNN + EBM: a Cascade R-CNN trained for the Faster R-CNN's time, frozen, then the same
  NCE+ head (``configs/cascade-rcnn_r18_fpn_ebm-nceplus_shapes.py``) with the same iterations.

    python -m tools.benchmarks.cascade_2d [--work work_dirs/bench_2d_v2] [--data data/shapes_bench]
        [--out docs/figures/cascade_2d.md]

Training time is the sum of mmengine's logged iteration times (``vis_data/scalars.json``: ``time``
times the iterations since the previous record), so start-up and checkpoint writing are left out
for every model alike. The Cascade R-CNN's iterations are set from its own time per iteration,
measured on a short run first (``--probe-iters``). Each model is tested once with CocoMetric on the
val images (an EBM model's pass scores the detector's and the refined boxes together), and timed in
this process on the first val batches (``shapes_2d.TIMING_BATCHES``, batch 2): detector, and
refinement where there is one.
"""
import argparse
import json
from pathlib import Path

from tools.benchmarks.common import ROOT, command_line, median_seconds, run_demo, test_checkpoint, write_report
from tools.benchmarks.shapes_2d import (EBM_CFG, KEYS, TIMING_BATCHES, WORK, demo_env, load_model_and_batches,
                                        time_refinement)

CASCADE_CFG = 'configs/cascade-rcnn_r18_fpn_shapes.py'
CASCADE_EBM_CFG = 'configs/cascade-rcnn_r18_fpn_ebm-nceplus_shapes.py'


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work', default=WORK, help="shapes_2d.py's work dir (Faster R-CNN + EBM)")
    p.add_argument('--data', default='data/shapes_bench', help="shapes_2d.py's generated data set")
    p.add_argument('--det-iters', type=int, default=2400, help="the Faster R-CNN's iterations (shapes_2d.py's)")
    p.add_argument('--ebm-iters', type=int, default=800, help="EBM head iterations, both heads (shapes_2d.py's)")
    p.add_argument('--num-train', type=int, default=600, help='generated training images (shapes_2d.py\'s)')
    p.add_argument('--num-val', type=int, default=150, help='generated val images, all scored')
    p.add_argument('--probe-iters', type=int, default=60, help='Cascade R-CNN iterations timed to set its budget')
    p.add_argument('--out', default='docs/figures/cascade_2d.md', help='markdown table')
    return p.parse_args()


def training_records(work_dir: Path) -> list:
    """(iteration, logged seconds per iteration) of every training record of the newest run in
    ``work_dir`` (mmengine's ``vis_data/scalars.json``; ``time`` is averaged over the logging
    window; validation records carry no loss)."""
    runs = sorted(work_dir.glob('*/vis_data/scalars.json'))
    if not runs:
        raise SystemExit(f'no training log in {work_dir}')
    records = [json.loads(line) for line in runs[-1].read_text().splitlines()]
    return [(r['iter'], r['time']) for r in records if 'time' in r and 'loss' in r]


def train_seconds(work_dir: Path) -> float:
    """Training time of the newest run in ``work_dir``: each record's time per iteration x the
    iterations since the previous record, summed."""
    records = training_records(work_dir)
    return sum(t * (it - prev) for (it, t), prev in zip(records, [0] + [it for it, _ in records]))


def seconds_per_iteration(work_dir: Path, skip: int = 20) -> float:
    """Mean logged time per training iteration of the newest run in ``work_dir`` after the first
    ``skip`` iterations (warm-up: allocations, the first data loads)."""
    times = [t for it, t in training_records(work_dir) if it > skip]
    if not times:
        raise SystemExit(f'{work_dir}: no training record after iteration {skip}')
    return sum(times) / len(times)


def time_detector(work: Path, data: str, config: str) -> float:
    """ms per image of a plain detector's ``predict`` on the first val batches (in this process)."""
    import torch
    model, batches = load_model_and_batches(work, data, TIMING_BATCHES, 'det', config=config)

    def predict_all():
        for b in batches:
            model.predict(b['inputs'], b['data_samples'])

    with torch.no_grad():
        seconds = median_seconds(predict_all, repeats=1)
    return 1000 * seconds / sum(len(b['data_samples']) for b in batches)


def row(label: str, minutes: float, metrics: dict, prefix: str, ms: float) -> str:
    return (f'| {label} | {minutes:.1f} | ' + ' | '.join(f"{100 * metrics[f'{prefix}/{k}']:.1f}" for k in KEYS)
            + f' | {ms:.0f} |')


def main() -> None:
    args = parse_args()
    work = ROOT / args.work
    env = demo_env(args)
    run_demo(env)  # Faster R-CNN + its EBM head (skipped when shapes_2d.py trained them)
    t_det, t_ebm = train_seconds(work / 'det'), train_seconds(work / 'ebm')
    budget = t_det + t_ebm

    probe = Path(f'{args.work}_cascade_probe')
    run_demo(dict(env, WORK=str(probe)), DET_CFG=CASCADE_CFG, DET_ITERS=args.probe_iters, EBM_ITERS=0)
    per_iter = seconds_per_iteration(ROOT / probe / 'det')
    full_iters, short_iters = round(budget / per_iter), round(t_det / per_iter)

    full, short = f'{args.work}_cascade_{full_iters}', f'{args.work}_cascade_{short_iters}'
    run_demo(dict(env, WORK=full), DET_CFG=CASCADE_CFG, DET_ITERS=full_iters, EBM_ITERS=0)
    run_demo(dict(env, WORK=short), DET_CFG=CASCADE_CFG, EBM_CFG=CASCADE_EBM_CFG, DET_ITERS=short_iters)

    def checkpoint(folder: str, sub: str) -> str:
        return (ROOT / folder / sub / 'last_checkpoint').read_text().strip()

    faster = test_checkpoint(EBM_CFG, checkpoint(args.work, 'ebm'), work / 'cascade_faster_ebm.json', data=args.data)
    cascade = test_checkpoint(CASCADE_CFG, checkpoint(full, 'det'), ROOT / full / 'metrics.json', data=args.data)
    cascade_ebm = test_checkpoint(CASCADE_EBM_CFG, checkpoint(short, 'ebm'), ROOT / short / 'metrics.json',
                                  data=args.data)
    t_faster = time_refinement(work, args.data)
    t_cascade_ebm = time_refinement(ROOT / short, args.data, config=CASCADE_EBM_CFG)
    ms_cascade = time_detector(ROOT / full, args.data, CASCADE_CFG)
    t_cascade_short, t_cascade_ebm_train = train_seconds(ROOT / short / 'det'), train_seconds(ROOT / short / 'ebm')

    rows = [f'Command: `{command_line("tools.benchmarks.cascade_2d")}` ({args.num_train} train / '
            f'{args.num_val} val generated images, 256 px; half-width R18-FPN, AdamW, batch 4; training time = the sum '
            f'of logged iteration times; Cascade R-CNN {1000 * per_iter:.0f} ms/iteration against the Faster '
            f"R-CNN's {1000 * t_det / args.det_iters:.0f}; the EBM head {args.ebm_iters} iterations on either)", '',
            '| model | training min | ' + ' | '.join(k.replace('bbox_', '') for k in KEYS) + ' | ms / image |',
            '|---|---|' + '---|' * (len(KEYS) + 1),
            row(f'Faster R-CNN ({args.det_iters} it)', t_det / 60, faster, 'coco_init', t_faster['det_ms']),
            row(f'Faster R-CNN + EBM ({args.ebm_iters} it)', budget / 60, faster, 'coco',
                t_faster['det_ms'] + t_faster['refine_ms']),
            row(f'Cascade R-CNN ({full_iters} it)', train_seconds(ROOT / full / 'det') / 60, cascade, 'coco', ms_cascade),
            row(f'Cascade R-CNN ({short_iters} it)', t_cascade_short / 60, cascade_ebm, 'coco_init',
                t_cascade_ebm['det_ms']),
            row(f'Cascade R-CNN ({short_iters} it) + EBM ({args.ebm_iters} it)', (t_cascade_short + t_cascade_ebm_train) / 60,
                cascade_ebm, 'coco', t_cascade_ebm['det_ms'] + t_cascade_ebm['refine_ms'])]
    for label, t in (('Faster R-CNN + EBM', t_faster), ('Cascade R-CNN + EBM', t_cascade_ebm)):
        rows += ['', f"{label}: {t['matched']} matched detections, mean IoU {t['iou_before']:.3f} -> "
                     f"{t['iou_after']:.3f}, {100 * t['improved']:.0f}% improved; refinement {t['refine_ms']:.0f} ms / "
                     f"image against the detector's {t['det_ms']:.0f}"]
    write_report('\n'.join(rows) + '\n', args.out)


if __name__ == '__main__':
    main()
