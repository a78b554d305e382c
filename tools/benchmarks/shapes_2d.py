"""The long version of the demo: COCO AP of a frozen Faster R-CNN's boxes before and after NCE+
refinement on the generated shapes set, plus test-time variants, as a markdown table.

    python -m tools.benchmarks.shapes_2d [--det-iters 2400] [--ebm-iters 800] [--num-train 600]
        [--num-val 150] [--work work_dirs/bench_2d_v2] [--out docs/figures/shapes_2d.md]
        [--reduced-channels 16 ...] [--pooling prroi]

Trains through tools/demo.sh (skipping what its work dir already holds), then runs tools/test.py
once per variant (``VARIANTS``): the configs' default (T = 5), the papers' T = 10, step sizes x10, and
score fusion with f (rescore_weight);
with --reduced-channels, also EBM heads with a 1x1 channel reduction (a speed lever), and with
--pooling prroi a head on Precise RoI Pooling, each trained on the same frozen detector with the
same budget. Ends with the detector's and the refinement's time per image, measured
on one ``detect`` pass (no refinement) followed by ``refine`` on its features, and the localisation
of the same detections before and after refinement.
"""
import argparse
import os
from pathlib import Path

from tools.benchmarks.common import (ROOT, command_line, load_model, parse_options, run_demo, test_batches, test_checkpoint,
                                     timed, write_report)

EBM_CFG = 'configs/faster-rcnn_r18_fpn_ebm-nceplus_shapes.py'
KEYS = ['bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l']
VARIANTS = {
    'default (T=5, lambda=(8e-4, 3.2e-3))': [],
    'paper (T=10)': ['model.test_cfg.num_steps=10'],
    'lambda x10': ['model.test_cfg.step_sizes=[8e-3,8e-3,3.2e-2,3.2e-2]'],
    'default + score fusion w=0.5': ['model.test_cfg.rescore_weight=0.5'],
}
WORK = 'work_dirs/bench_2d_v2'  # the 2D benchmarks' work dir (bench_2d: the frozen-stem detector's)
REDUCED_VARIANTS = 2  # the first variants, also tested with each --reduced-channels head
TIMING_BATCHES = 25  # val batches timed in-process
MATCH_SCORE = 0.3  # localisation: detections scoring at least this (detector's score) ...
MATCH_IOU = 0.5  # ... whose initial box overlaps a GT box of their class at least this much


def require_detector(work: str) -> None:
    """SystemExit unless this benchmark has trained its detector into ``work``/det (the sibling
    benchmarks train EBM heads on it)."""
    if not (ROOT / work / 'det' / 'last_checkpoint').exists():
        raise SystemExit(f'no detector in {work}/det: run python -m tools.benchmarks.shapes_2d first')


def run_test(work: Path, data: str, options: list, ebm_dir: str = 'ebm') -> dict:
    """``test_checkpoint`` of the EBM checkpoint in ``work/<ebm_dir>`` on the val images of ``data``
    with ``options``, and its wall-clock time (``test_seconds``)."""
    out = work / f'metrics_{len(list(work.glob("metrics_*.json")))}.json'
    metrics, seconds = timed(test_checkpoint, EBM_CFG, (work / ebm_dir / 'last_checkpoint').read_text().strip(), out,
                             options, work / 'test', data=data)
    return dict(metrics, test_seconds=seconds)


def load_model_and_batches(work: Path, data: str, num_batches: int, ebm_dir: str = 'ebm', options=(),
                           config: str = EBM_CFG):
    """The trained model of ``config`` in ``work/<ebm_dir>`` (``common.load_model``, CPU, config
    ``options``) and its first ``num_batches`` preprocessed test batches of ``data``."""
    model = load_model(config, (work / ebm_dir / 'last_checkpoint').read_text().strip(),
                       options={'test_dataloader.dataset.data_root': f'{data}/', **parse_options(options)})
    return model, test_batches(model, num_batches)


def timed_detect_and_refine(model, batch: dict):
    """One ``detect`` pass without refinement, then ``refine`` on its features, then ``rescale``:
    (results, detector seconds, refinement seconds)."""
    (results, feats), det_seconds = timed(model.detect, batch['inputs'], batch['data_samples'], rescale=False,
                                          refine=False)
    _, refine_seconds = timed(model.refine, feats, results)
    return model.rescale(results), det_seconds, refine_seconds


def localisation(results) -> dict:
    """The same detections before and after refinement, by ``RefinementLocalisationMetric``
    (score >= MATCH_SCORE, initial IoU >= MATCH_IOU with a GT box of their class): how many, their
    mean IoU before and after, and the share that improved."""
    from ebm_det.evaluation import RefinementLocalisationMetric
    metric = RefinementLocalisationMetric(score_thr=MATCH_SCORE, iou_thr=MATCH_IOU)
    metric.process({}, [r.to_dict() for r in results])
    m = metric.compute_metrics(metric.results)
    return dict(matched=m['matched'], iou_before=m['iou_init'], iou_after=m['iou'], improved=m['better'])


def rejected_share(model, batch: dict) -> tuple:
    """(rejected, attempted) refinement steps of the detector's boxes of one batch: the ascent on f
    in the head's box space (``EBMBoxHead.refine``), untimed, on the valid boxes."""
    import torch
    results, feats = model.detect(batch['inputs'], batch['data_samples'], rescale=False, refine=False)
    head = model.ebm_head
    boxes = torch.cat([r.pred_instances.bboxes for r in results])
    labels = torch.cat([r.pred_instances.labels for r in results])
    batch_idx = torch.cat([torch.full((len(r.pred_instances), ), i) for i, r in enumerate(results)])
    valid = head.codec.valid(boxes)
    res = head.refine(feats, boxes[valid], batch_idx[valid], labels[valid], model.refine_cfg)
    return int((res.attempted - res.accepted).sum()), int(res.attempted.sum())


def time_refinement(work: Path, data: str, ebm_dir: str = 'ebm', options=(), num_batches: int = TIMING_BATCHES,
                    config: str = EBM_CFG) -> dict:
    """Detector inference vs refinement time on the first val batches, in this process (no
    evaluation or data loading inside the timed region), the localisation of the refined pass, and
    the share of refinement steps that were rejected."""
    import torch
    model, batches = load_model_and_batches(work, data, num_batches, ebm_dir, options, config)
    with torch.no_grad():  # refinement enables the gradients it needs
        timed_detect_and_refine(model, batches[0])  # warm-up
        passes = [timed_detect_and_refine(model, b) for b in batches]
        # before the next passes: mmdet's predict writes its results into the batch's data samples
        located = localisation([r for p in passes for r in p[0]])
        steps = [rejected_share(model, b) for b in batches]
    images = sum(len(b['data_samples']) for b in batches)
    det_ms = 1000 * sum(p[1] for p in passes) / images
    refine_ms = 1000 * sum(p[2] for p in passes) / images
    return dict(images=images, det_ms=det_ms, refine_ms=refine_ms, ratio=refine_ms / det_ms,
                num_steps=model.refine_cfg.num_steps,
                rejected=sum(r for r, _ in steps) / max(1, sum(a for _, a in steps)), **located)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--det-iters', type=int, default=2400,
                        help='detector iterations (batch 4), trained from scratch')
    parser.add_argument('--ebm-iters', type=int, default=800,
                        help='EBM iterations (batch 4); with the detector\'s 2400, about 30 min of training on 2 cores')
    parser.add_argument('--num-train', type=int, default=600, help='generated training images (256 px, hard kind)')
    parser.add_argument('--num-val', type=int, default=150, help='generated val images, all scored')
    parser.add_argument('--data', default='data/shapes_bench',
                        help='the generated data set (generated when missing, else reused as it is)')
    parser.add_argument('--work', default=WORK, help='work dir: trained models, metrics (reused when present)')
    parser.add_argument('--out', default='docs/figures/shapes_2d.md', help='markdown report')
    parser.add_argument('--reduced-channels', type=int, nargs='*', default=[],
                        help='also train EBM heads with a 1x1 reduction to these channels (a speed lever) and '
                        'test them')
    parser.add_argument('--pooling', nargs='*', default=[], choices=['prroi'],
                        help='also train an EBM head with this RoI pooling (PrRoIPool) and test it')
    return parser.parse_args()


def demo_env(args: argparse.Namespace) -> dict:
    """tools/demo.sh's settings for this run."""
    return dict(os.environ, DATA=args.data, WORK=args.work, NUM_TRAIN=str(args.num_train), NUM_VAL=str(args.num_val),
                DET_ITERS=str(args.det_iters), EBM_ITERS=str(args.ebm_iters), DIFFICULTY='hard',
                RUN_TEST='0')  # training only: the benchmark tests each variant itself


def ap_row(label: str, metrics: dict, prefix: str = 'coco') -> str:
    return f'| {label} | ' + ' | '.join(f"{100 * metrics[f'{prefix}/{k}']:.1f}" for k in KEYS) + ' |'


def variant_rows(work: Path, data: str) -> list:
    """The detector's AP row, then one row per test-time variant of the trained EBM."""
    rows = []
    for i, (name, options) in enumerate(VARIANTS.items()):
        m = run_test(work, data, options)
        if i == 0:
            rows.append(ap_row('detector (before)', m, 'coco_init'))
        rows.append(ap_row(f'refined: {name}', m))
    return rows


def head_variant_rows(work: Path, data: str, label: str, ebm_dir: str, option: str, env: dict) -> list:
    """Another EBM head (``option``, e.g. a 1x1 channel reduction or PrRoIPool) trained by
    tools/demo.sh on the same frozen detector with the same budget, then tested with the first
    variants."""
    run_demo(env, EBM_DIR=ebm_dir, EBM_OPTS=option)  # env: demo_env, training only
    return [ap_row(f'refined, {label}: {name}', run_test(work, data, [option, *options], ebm_dir))
            for name, options in list(VARIANTS.items())[:REDUCED_VARIANTS]]


def head_variants(args: argparse.Namespace) -> list:
    """(label, work sub-directory, config option) of every extra head the arguments ask for."""
    out = [(f'1x1 reduction to {c} ch', f'ebm_reduced{c}', f'model.ebm_head.reduced_channels={c}')
           for c in args.reduced_channels]
    out += [(f'{p} pooling', f'ebm_{p}', f'model.ebm_head.pooling={p}') for p in args.pooling]
    return out


def timing_rows(t: dict, label: str) -> list:
    return [f"{label}: time per image ({t['images']} val images, batch 2, CPU threads {os.cpu_count()}): detector "
            f"{t['det_ms']:.0f} ms, refinement (T={t['num_steps']}) {t['refine_ms']:.0f} ms, ratio {t['ratio']:.2f}; "
            f"{100 * t['rejected']:.1f}% of the refinement steps were rejected (f would have dropped)", '',
            f"Localisation on the same images: {t['matched']} detections (score >= {MATCH_SCORE}, IoU >= {MATCH_IOU} "
            f"with a GT box of their class): mean IoU {t['iou_before']:.3f} -> {t['iou_after']:.3f} after refinement; "
            f"{100 * t['improved']:.0f}% of them improved"]


def main() -> None:
    args = parse_args()
    work = ROOT / args.work
    env = demo_env(args)
    _, train_s = timed(run_demo, env)
    rows = [f'Command: `{command_line("tools.benchmarks.shapes_2d")}` '
            f'({args.num_train} train / {args.num_val} val images, detector {args.det_iters} it, '
            f'EBM {args.ebm_iters} it; tools/demo.sh took {train_s / 60:.1f} min, skipping the steps whose '
            f'outputs {args.work} already held)', '',
            '| boxes | ' + ' | '.join(k.replace('bbox_', '') for k in KEYS) + ' |',
            '|---|' + '---|' * len(KEYS)]
    rows += variant_rows(work, args.data)
    extra = head_variants(args)
    for label, ebm_dir, option in extra:
        rows += head_variant_rows(work, args.data, label, ebm_dir, option, env)
    rows += [''] + timing_rows(time_refinement(work, args.data), 'the default head')
    for label, ebm_dir, option in extra:
        rows += [''] + timing_rows(time_refinement(work, args.data, ebm_dir, [option]), label)
    write_report('\n'.join(rows) + '\n', args.out)


if __name__ == '__main__':
    main()
