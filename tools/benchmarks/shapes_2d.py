"""The long version of the demo: COCO AP of a frozen Faster R-CNN's boxes before and after NCE+
refinement on the generated shapes set, plus test-time variants, as a markdown table.

    python tools/benchmarks/shapes_2d.py [--det-iters 2400] [--ebm-iters 600] [--num-train 600]
        [--num-val 150] [--work work_dirs/bench_2d] [--out docs/figures/shapes_2d.md]
        [--reduced-channels 16 ...]

Trains through tools/demo.sh (skipping what its work dir already holds), then runs tools/test.py
once per variant: the paper's settings, step sizes x10, and score fusion with f (rescore_weight);
with --reduced-channels, also EBM heads with a 1x1 channel reduction (a speed lever), trained on
the same frozen detector. Ends with the detector's and the refinement's time per image.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EBM_CFG = 'configs/faster-rcnn_r18_fpn_ebm-nceplus_shapes.py'
KEYS = ['bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l']
VARIANTS = {
    'paper (T=10, lambda=(8e-4, 3.2e-3))': [],
    'lambda x10': ['model.test_cfg.step_sizes=[8e-3,8e-3,3.2e-2,3.2e-2]'],
    'paper + score fusion w=0.5': ['model.test_cfg.rescore_weight=0.5'],
}


def run_test(work: Path, data: str, options: list, ebm_dir: str = 'ebm') -> dict:
    out = work / f'metrics_{len(list(work.glob("metrics_*.json")))}.json'
    ann = f'{data}/annotations/instances_val.json'
    cmd = [sys.executable, 'tools/test.py', EBM_CFG, (work / ebm_dir / 'last_checkpoint').read_text().strip(),
           '--work-dir', str(work / 'test'), '--out-json', str(out), '--cfg-options',
           f'test_dataloader.dataset.data_root={data}/', f'test_evaluator.0.ann_file={ann}',
           f'test_evaluator.1.metric.ann_file={ann}', *options]
    t = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    metrics = json.loads(out.read_text())
    metrics['test_seconds'] = time.time() - t
    return metrics


def time_refinement(work: Path, data: str, num_batches: int = 25) -> dict:
    """Detector inference vs refinement time on the first val batches, in this process (no
    evaluation or data loading inside the timed region)."""
    import torch
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(str(ROOT / EBM_CFG))
    cfg.work_dir = str(work / 'timing')
    cfg.load_from = (work / 'ebm' / 'last_checkpoint').read_text().strip()
    cfg.test_dataloader.dataset.data_root = f'{data}/'
    cfg.test_evaluator[0].ann_file = cfg.test_evaluator[1].metric.ann_file = f'{data}/annotations/instances_val.json'
    runner = Runner.from_cfg(cfg)
    runner.load_or_resume()
    model = runner.model.eval()
    batches = [model.data_preprocessor(b, False) for _, b in zip(range(num_batches), runner.test_dataloader)]
    totals = dict(det=0.0, det_and_refine=0.0)
    with torch.no_grad():
        for key, fn in (('det', model.detector.predict), ('det_and_refine', model.predict)):
            fn(batches[0]['inputs'], batches[0]['data_samples'])  # warm-up
            t = time.perf_counter()
            outputs = [fn(b['inputs'], b['data_samples']) for b in batches]
            totals[key] = time.perf_counter() - t
        results = [r for out in outputs for r in out]  # the refined pass's results
    # localisation of the same detections before and after: each detection scoring >= 0.3 whose
    # initial box overlaps a GT box of its class with IoU >= 0.5, against that GT box
    from mmdet.structures.bbox import bbox_overlaps
    before, after = [], []
    for r in results:
        p, gt = r.pred_instances, r.gt_instances
        same = p.labels[:, None] == gt.labels[None]
        iou0 = torch.where(same, bbox_overlaps(p.bboxes_init, gt.bboxes), -1.0)
        best, j = iou0.max(1) if len(gt) else (torch.full_like(p.scores, -1.0), None)
        keep = (p.scores_init >= 0.3) & (best >= 0.5)
        if keep.any():
            before.append(best[keep])
            after.append(bbox_overlaps(p.bboxes[keep], gt.bboxes[j[keep]], is_aligned=True))
    images = sum(len(b['data_samples']) for b in batches)
    det_ms = 1000 * totals['det'] / images
    refine_ms = 1000 * (totals['det_and_refine'] - totals['det']) / images
    before, after = torch.cat(before), torch.cat(after)
    return dict(images=images, det_ms=det_ms, refine_ms=refine_ms, ratio=refine_ms / det_ms, matched=len(before),
                iou_before=float(before.mean()), iou_after=float(after.mean()),
                improved=float((after > before).float().mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--det-iters', type=int, default=2400)
    parser.add_argument('--ebm-iters', type=int, default=600)
    parser.add_argument('--num-train', type=int, default=600)
    parser.add_argument('--num-val', type=int, default=150)
    parser.add_argument('--data', default='data/shapes_bench')
    parser.add_argument('--work', default='work_dirs/bench_2d')
    parser.add_argument('--out', default='docs/figures/shapes_2d.md')
    parser.add_argument('--reduced-channels', type=int, nargs='*', default=[],
                        help='also train EBM heads with a 1x1 reduction to these channels (a speed lever) and test them')
    args = parser.parse_args()
    work = ROOT / args.work
    env = dict(os.environ, DATA=args.data, WORK=args.work, NUM_TRAIN=str(args.num_train), NUM_VAL=str(args.num_val),
               DET_ITERS=str(args.det_iters), EBM_ITERS=str(args.ebm_iters))
    t = time.time()
    subprocess.run(['bash', 'tools/demo.sh'], check=True, cwd=ROOT, env=env)
    train_s = time.time() - t
    rows = [f'Command: `python tools/benchmarks/shapes_2d.py {" ".join(sys.argv[1:])}` '
            f'({args.num_train} train / {args.num_val} val images, detector {args.det_iters} it, '
            f'EBM {args.ebm_iters} it; tools/demo.sh took {train_s / 60:.1f} min, skipping the steps whose '
            f'outputs {args.work} already held)', '',
            '| boxes | ' + ' | '.join(k.replace('bbox_', '') for k in KEYS) + ' |',
            '|---|' + '---|' * len(KEYS)]
    for i, (name, options) in enumerate(VARIANTS.items()):
        m = run_test(work, args.data, options)
        if i == 0:
            rows.append('| detector (before) | ' + ' | '.join(f"{100 * m['coco_init/' + k]:.1f}" for k in KEYS) + ' |')
        rows.append(f'| refined: {name} | ' + ' | '.join(f"{100 * m['coco/' + k]:.1f}" for k in KEYS) + ' |')
    for r in args.reduced_channels:  # the speed lever: its own EBM head, trained on the same frozen detector
        ebm_dir, option = f'ebm_reduced{r}', f'model.ebm_head.reduced_channels={r}'
        subprocess.run(['bash', 'tools/demo.sh'], check=True, cwd=ROOT,
                       env=dict(env, EBM_DIR=ebm_dir, EBM_OPTS=option, RUN_TEST='0'))
        for name, options in list(VARIANTS.items())[:2]:
            m = run_test(work, args.data, [option, *options], ebm_dir)
            rows.append(f'| refined, 1x1 reduction to {r} ch: {name} | ' +
                        ' | '.join(f"{100 * m['coco/' + k]:.1f}" for k in KEYS) + ' |')
    t = time_refinement(work, args.data)
    rows += ['', f"Time per image ({t['images']} val images, batch 2, CPU threads {os.cpu_count()}): detector "
             f"{t['det_ms']:.0f} ms, refinement (T=10) {t['refine_ms']:.0f} ms, ratio {t['ratio']:.2f}", '',
             f"Localisation on the same images: {t['matched']} detections (score >= 0.3, IoU >= 0.5 with a GT box of "
             f"their class): mean IoU {t['iou_before']:.3f} -> {t['iou_after']:.3f} after refinement; "
             f"{100 * t['improved']:.0f}% of them improved"]
    text = '\n'.join(rows) + '\n'
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    (ROOT / args.out).write_text(text)


if __name__ == '__main__':
    main()
