"""Test-time speed levers of refinement, each measured for AP and time in one run, on the 2D
benchmark's trained detector and EBM head (``tools/benchmarks/shapes_2d.py`` must have run).

    python -m tools.benchmarks.refine_levers [--levers float32 bf16 tol_1e-4 tol_1e-3 bf16+tol_1e-3 T=7 T=5
        bf16+T=7 bf16+T=5]
        [--work work_dirs/bench_2d_v2] [--data data/shapes_bench] [--out docs/figures/refine_levers.md]

Per lever: one tools/test.py pass over the 150 val images (COCO AP before/after, matched mean IoU)
and, in this process, the detector's and the refinement's time per image on the first val batches
(``shapes_2d.time_refinement``: no data loading or evaluation in the timed region).
"""
import argparse

from tools.benchmarks.common import ROOT, command_line, test_checkpoint, write_report
from tools.benchmarks.shapes_2d import EBM_CFG, WORK, require_detector, time_refinement

LEVERS = {  # each sets T, so that a lever means the same whatever the config's default T
    'float32': ['model.test_cfg.num_steps=10'],
    'bf16': ['model.test_cfg.autocast=bfloat16', 'model.test_cfg.num_steps=10'],
    'tol_1e-4': ['model.test_cfg.tol=1e-4', 'model.test_cfg.num_steps=10'],
    'tol_1e-3': ['model.test_cfg.tol=1e-3', 'model.test_cfg.num_steps=10'],
    'bf16+tol_1e-3': ['model.test_cfg.autocast=bfloat16', 'model.test_cfg.tol=1e-3', 'model.test_cfg.num_steps=10'],
    'T=7': ['model.test_cfg.num_steps=7'],
    'T=5': ['model.test_cfg.num_steps=5'],
    'bf16+T=7': ['model.test_cfg.autocast=bfloat16', 'model.test_cfg.num_steps=7'],
    'bf16+T=5': ['model.test_cfg.autocast=bfloat16', 'model.test_cfg.num_steps=5'],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--levers', nargs='+', default=list(LEVERS), choices=list(LEVERS),
                   help='test-time settings to measure (LEVERS; default: all), one table row each; float32, bf16 '
                   'and tol_* refine with the papers\' T = 10, T=7 / T=5 with that T (the 2D configs\' default: 5)')
    p.add_argument('--work', default=WORK, help="shapes_2d.py's work dir (its det/ must exist)")
    p.add_argument('--data', default='data/shapes_bench', help="shapes_2d.py's generated data set")
    p.add_argument('--ebm-dir', default='ebm', help="the EBM head's folder under --work (ebm: shapes_2d.py's)")
    p.add_argument('--head-options', nargs='*', default=[],
                   help='config options the head was trained with (e.g. model.ebm_head.fc_channels=512)')
    p.add_argument('--out', default='docs/figures/refine_levers.md', help='markdown table')
    args = p.parse_args()
    require_detector(args.work)
    work = ROOT / args.work
    ckpt = (work / args.ebm_dir / 'last_checkpoint').read_text().strip()
    lines = [f'Command: `{command_line("tools.benchmarks.refine_levers")}` (head: '
             f'{args.work}/{args.ebm_dir}; AP on the 150 val images, time per image on the first val batches)', '',
             '| lever | AP | AP75 | matched mean IoU | detector ms | refinement ms | ratio |', '|---|---|---|---|---|---|---|']
    for name in args.levers:
        options = [*args.head_options, *LEVERS[name]]
        prefix = 'levers' if args.ebm_dir == 'ebm' else f'levers_{args.ebm_dir}'  # one file per head and lever
        m = test_checkpoint(EBM_CFG, ckpt, work / f'{prefix}_{name}.json', options, work / 'test', data=args.data)
        t = time_refinement(work, args.data, args.ebm_dir, options)
        if name == args.levers[0]:
            lines.append(f"| detector | {100 * m['coco_init/bbox_mAP']:.1f} | {100 * m['coco_init/bbox_mAP_75']:.1f} | "
                         f"{m['refine/iou_init']:.4f} | | | |")
        lines.append(f"| {name} | {100 * m['coco/bbox_mAP']:.1f} | {100 * m['coco/bbox_mAP_75']:.1f} | "
                     f"{m['refine/iou']:.4f} | {t['det_ms']:.0f} | {t['refine_ms']:.0f} | {t['ratio']:.2f} |")
    write_report('\n'.join(lines) + '\n', args.out)


if __name__ == '__main__':
    main()
