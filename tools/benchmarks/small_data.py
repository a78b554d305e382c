"""Small training sets: does the EBM head still help on unseen images when it is trained on few?

    python -m tools.benchmarks.small_data [--sizes 50 100 200 550] [--variants paper dropout ...]
        [--calib 50] [--iters 600] [--no-gate] [--work work_dirs/bench_2d_v2] [--data data/shapes_bench]
        [--out docs/figures/small_data.md]

On the frozen detector of ``tools/benchmarks/shapes_2d.py`` (it must have run: ``--work``/det),
for each head variant and training-set size N an NCE+ head is trained by tools/demo.sh for
``--iters`` iterations (batch 4, the same budget at every N) on the first N images of the
benchmark's training set, after holding out its last ``--calib`` images. Each head is tested on the
benchmark's 150 val images (tools/test.py: COCO AP of the detector's and of the refined boxes in
one pass, ``RefinementLocalisationMetric``, ``ebm/val_loss``), then the refinement gate
(``test_cfg.min_gain``) is calibrated on the held-out images (tools/calibrate_gate.py; never on
val) and the head is tested again with it. Writes a markdown table and a plot (``.png`` beside it).
"""
import argparse
import json
from pathlib import Path

from tools.benchmarks.common import (ROOT, calibrate_gate, command_line, figure, run_demo, test_checkpoint, write_coco_subset,
                                     write_report)
from tools.benchmarks.shapes_2d import EBM_CFG, WORK, require_detector

# head variants: config options applied to the head's training and its tests
VARIANTS = {
    'paper': '',
    'dropout': 'model.ebm_head.dropout=0.5',
    'weight_decay': 'optim_wrapper.optimizer.type=AdamW optim_wrapper.optimizer.weight_decay=10.0',  # lr x wd = 1e-3 a step
    'narrow': 'model.ebm_head.fc_channels=256',
    'agnostic': 'model.ebm_head.class_agnostic=True',
    'reduced': 'model.ebm_head.reduced_channels=16',
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sizes', type=int, nargs='+', default=[50, 100, 200, 550], help='training images')
    p.add_argument('--variants', nargs='+', default=['paper'],
                   help=f'head variants, of {sorted(VARIANTS)}; join several with + to combine them (dropout+narrow)')
    p.add_argument('--calib', type=int, default=50, help='training images held out to calibrate the gate')
    p.add_argument('--iters', type=int, default=600, help='EBM training iterations (batch 4) at every size')
    p.add_argument('--work', default=WORK, help="shapes_2d.py's work dir (its det/ must exist); the heads train here")
    p.add_argument('--data', default='data/shapes_bench',
                   help="shapes_2d.py's generated data set (the subsets' annotation files are written into it)")
    p.add_argument('--no-gate', action='store_true', help='skip the gate (calibration and the second test pass)')
    p.add_argument('--per-class-gate', action='store_true', help='calibrate one margin per class')
    p.add_argument('--out', default='docs/figures/small_data.md', help='markdown table (the .png plot beside it)')
    return p.parse_args()


def variant_options(variant: str) -> str:
    """Config options of a variant name; 'a+b' combines variants a and b."""
    parts = variant.split('+')
    unknown = [v for v in parts if v not in VARIANTS]
    if unknown:
        raise SystemExit(f'unknown variant(s) {unknown}: choose from {sorted(VARIANTS)}')
    return ' '.join(VARIANTS[v] for v in parts).strip()


def split(args) -> dict:
    """Annotation files (relative to the data root): 'train_<N>' for each size, 'calib' the held-out
    images; written once from ``instances_train.json`` (images in id order)."""
    ann = ROOT / args.data / 'annotations'
    full = json.loads((ann / 'instances_train.json').read_text())
    ids = sorted(im['id'] for im in full['images'])
    pool, held_out = ids[:len(ids) - args.calib], ids[len(ids) - args.calib:]
    too_many = [n for n in args.sizes if n > len(pool)]
    if too_many:
        raise SystemExit(f'sizes {too_many} exceed the {len(pool)} training images left after holding out {args.calib}')
    out = {}
    for name, keep in [(f'train_{n}', pool[:n]) for n in args.sizes] + [('calib', held_out)]:
        write_coco_subset(full, keep, ann / f'instances_{name}.json')
        out[name] = f'annotations/instances_{name}.json'
    return out


def train(args, name: str, ann_file: str, options: str) -> Path:
    """Train one head through tools/demo.sh (skipped when it exists); its work dir."""
    run_demo(WORK=args.work, DATA=args.data, EBM_DIR=name, EBM_ITERS=args.iters, RUN_TEST=0,
             EBM_OPTS=f'train_dataloader.dataset.ann_file={ann_file} {options}'.strip())
    return ROOT / args.work / name


def test(args, folder: Path, options: list, tag: str) -> dict:
    """Metrics of one tools/test.py pass over the val images (cached beside the checkpoint)."""
    return test_checkpoint(EBM_CFG, (folder / 'last_checkpoint').read_text().strip(), folder / f'test_{tag}.json',
                           options, ROOT / args.work / 'test', data=args.data, reuse=True)


def calibrate(args, folder: Path, options: list, calib_ann: str):
    """The gate's margin (per class with ``--per-class-gate``) from the held-out training images
    (cached)."""
    return calibrate_gate(EBM_CFG, (folder / 'last_checkpoint').read_text().strip(), calib_ann, f'{args.data}/',
                          'train/', folder / ('gate_per_class.json' if args.per_class_gate else 'gate.json'), options,
                          args.per_class_gate)


def row(variant: str, n: int, m: dict, g: dict, margin) -> dict:
    pct = lambda key, d: 100 * d[key]  # noqa: E731
    return dict(variant=variant, n=n, ap0=pct('coco_init/bbox_mAP', m), ap=pct('coco/bbox_mAP', m),
                ap75_0=pct('coco_init/bbox_mAP_75', m), ap75=pct('coco/bbox_mAP_75', m),
                iou0=m['refine/iou_init'], iou=m['refine/iou'], worse=m['refine/worse'], matched=m['refine/matched'],
                val_loss=m['ebm/val_loss'], margin=margin, gated_ap=pct('coco/bbox_mAP', g),
                gated_ap75=pct('coco/bbox_mAP_75', g), gated_iou=g['refine/iou'], gated_worse=g['refine/worse'])


def plot(rows: list, path: Path) -> None:
    import matplotlib.ticker
    with figure(path) as axes:
        for variant in dict.fromkeys(r['variant'] for r in rows):
            rs = [r for r in rows if r['variant'] == variant]
            n = [r['n'] for r in rs]
            axes[0].plot(n, [r['ap'] - r['ap0'] for r in rs], 'o-', label=f'{variant}')
            axes[0].plot(n, [r['gated_ap'] - r['ap0'] for r in rs], 'x--', label=f'{variant} + gate')
            axes[1].plot(n, [100 * r['worse'] for r in rs], 'o-', label=f'{variant}')
            axes[1].plot(n, [100 * r['gated_worse'] for r in rs], 'x--', label=f'{variant} + gate')
        axes[0].axhline(0, color='k', lw=0.8)
        axes[0].set_ylabel('AP gain on 150 unseen val images (points)')
        axes[1].set_ylabel('matched detections moved away (%)')
        sizes = sorted({r['n'] for r in rows})
        for ax in axes:
            ax.set_xscale('log')
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_xticks(sizes, [str(n) for n in sizes])
            ax.set_xlabel('training images of the EBM head')
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)


def main() -> None:
    args = parse_args()
    require_detector(args.work)
    options_of = {v: variant_options(v) for v in args.variants}
    anns = split(args)
    rows = []
    for variant, options in options_of.items():
        for n in args.sizes:
            folder = train(args, f'small_{variant}_n{n}' + ('' if args.iters == 600 else f'_it{args.iters}'),
                           anns[f'train_{n}'], options)
            opts = options.split()
            m = test(args, folder, opts, 'nogate')
            if args.no_gate:
                margin, g = float('nan'), {k: float('nan') for k in m}
            else:
                margin = calibrate(args, folder, opts, anns['calib'])
                gate = f'model.test_cfg.min_gain={json.dumps(margin)}'.replace('Infinity', 'inf')
                g = test(args, folder, [*opts, gate], 'gate_per_class' if args.per_class_gate else 'gate')
            rows.append(row(variant, n, m, g, margin))
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, out.with_suffix('.png'))
    command = command_line('tools.benchmarks.small_data')
    gate = 'a per-class gate' if args.per_class_gate else 'gate'
    lines = [f'Command: `{command.strip()}` ({args.iters} EBM iterations of batch 4 at every size; {gate} calibrated '
             f'on {args.calib} held-out training images; scored on the 150 val images)', '',
             '| head | train images | AP: detector -> refined | AP75 | mean IoU (matched) | moved away | '
             'ebm/val_loss | gate min_gain | AP with gate | AP75 with gate | moved away with gate |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        margin = f"{r['margin']:.2f}" if isinstance(r['margin'], float) else \
            '[' + ', '.join(f'{v:.2f}' for v in r['margin']) + ']'
        lines.append(f"| {r['variant']} | {r['n']} | {r['ap0']:.1f} -> {r['ap']:.1f} ({r['ap'] - r['ap0']:+.1f}) | "
                     f"{r['ap75_0']:.1f} -> {r['ap75']:.1f} ({r['ap75'] - r['ap75_0']:+.1f}) | "
                     f"{r['iou0']:.3f} -> {r['iou']:.3f} | {100 * r['worse']:.0f}% of {r['matched']:.0f} | "
                     f"{r['val_loss']:.2f} | {margin} | {r['gated_ap']:.1f} ({r['gated_ap'] - r['ap0']:+.1f}) | "
                     f"{r['gated_ap75']:.1f} ({r['gated_ap75'] - r['ap75_0']:+.1f}) | {100 * r['gated_worse']:.0f}% |")
    lines += ['', f'![AP gain and share of boxes made worse against training-set size]({out.with_suffix(".png").name})']
    write_report('\n'.join(lines) + '\n', out)


if __name__ == '__main__':
    main()
