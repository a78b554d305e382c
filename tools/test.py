"""Test a checkpoint through the mmengine Runner; for EBM refine detectors, print the metrics of
the detector's boxes and of the refined boxes side by side (from one run), and say loudly when
refinement made AP or the matched detections' mean IoU worse.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options k=v ...]
    python tools/test.py EBM_CONFIG --detector-only     # the detector alone, before a head is trained

``--detector-only`` takes no checkpoint: the EBM config's ``model.detector_checkpoint`` is loaded
(strictly) and refinement is off (``test_cfg.enabled=False``), so the refined and the detector's
metrics are equal and both are the detector's own.
"""
import argparse
import json
import os.path as osp

import torch
from mmengine.config import Config, DictAction
from mmengine.dist import get_rank
from mmengine.runner import Runner

import ebm_det  # noqa: F401
from ebm_det.evaluation.initial_metric import MIN_DROP, dropped
from ebm_det.distributed import setup_cpu_distributed


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test with the mmengine Runner')
    parser.add_argument('config', help='the model config (an mmengine .py config)')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint (.pth) to load (none with --detector-only)')
    parser.add_argument('--detector-only', action='store_true',
                        help="an EBM config's detector alone: its model.detector_checkpoint, refinement off")
    parser.add_argument('--work-dir', help="logs and outputs (default: the config's work_dir, else "
                        'work_dirs/<config name>)')
    parser.add_argument('--out-json', help='also write the metrics to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys (key=value ...)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher: none (one process), pytorch (torchrun: tools/dist_test.sh), slurm or mpi')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help='accepted for torch.distributed.launch, and ignored (mmengine reads LOCAL_RANK from the '
                        'environment)')
    return parser.parse_args()


def before_after_pairs(metrics: dict, suffix: str = '_init') -> list:
    """(label, before, after) for every numeric 'P/name' with a 'P_init/name' sibling (label
    'P/name': the detector's boxes scored by the same metric) or a 'P/name_init' sibling (label
    'P/name': ``RefinementLocalisationMetric``'s ``iou_init`` / ``iou``)."""
    pairs = []
    for key, after in metrics.items():
        prefix, _, name = key.partition('/')
        if not isinstance(after, (int, float)) or name.endswith(suffix):
            continue
        if isinstance(metrics.get(f'{prefix}{suffix}/{name}'), (int, float)):
            pairs.append((key, metrics[f'{prefix}{suffix}/{name}'], after))
        elif isinstance(metrics.get(f'{key}{suffix}'), (int, float)):
            pairs.append((key, metrics[f'{key}{suffix}'], after))
    return pairs


def before_after_table(metrics: dict, suffix: str = '_init') -> str:
    """Rows 'metric | before | after | change' of ``before_after_pairs``."""
    rows = [f'{name:<40} {before:>8.4f} {after:>8.4f} {after - before:>+8.4f}'
            for name, before, after in before_after_pairs(metrics, suffix)]
    if not rows:
        return ''
    return '\n'.join([f"{'metric':<40} {'before':>8} {'after':>8} {'change':>8}", *rows])


def refinement_losses(metrics: dict, suffix: str = '_init', min_drop: float = MIN_DROP) -> list:
    """'name: before -> after' for every AP-like result (a name containing 'AP') and every mean IoU
    that refinement lowered by more than ``min_drop`` (0.001: 0.1 AP point)."""
    return [f'{name}: {before:.4f} -> {after:.4f}' for name, before, after in before_after_pairs(metrics, suffix)
            if ('AP' in name or name.endswith('/iou')) and dropped(before, after, min_drop)]


def main() -> None:
    args = parse_args()
    if args.detector_only and args.checkpoint:
        raise SystemExit('--detector-only takes no CHECKPOINT: it loads the config\'s model.detector_checkpoint')
    if not args.detector_only and not args.checkpoint:
        raise SystemExit('give a CHECKPOINT, or --detector-only (which loads the config\'s detector_checkpoint) without one')
    if args.checkpoint and '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint {args.checkpoint!r} not found')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.detector_only:
        if not cfg.model.get('detector_checkpoint'):
            raise SystemExit('--detector-only needs an EBM config with model.detector_checkpoint set '
                             '(or --cfg-options model.detector_checkpoint=PATH)')
        # not setdefault(...)[key] = ...: ConfigDict.setdefault stores a converted copy, and the
        # assignment would go to the dict it returns (lost when the config has no test_cfg)
        cfg.model.test_cfg = {**(cfg.model.get('test_cfg') or {}), 'enabled': False}
    cfg.load_from = args.checkpoint
    if args.launcher == 'pytorch' and not torch.cuda.is_available():
        setup_cpu_distributed(cfg)
    if cfg.get('test_dataloader', {}).get('dataset', {}).get('indices') is not None:
        print('[test] test_dataloader.dataset.indices is set: CocoMetric scores against every image of its '
              'ann_file, so coco/ and coco_init/ AP count the images left out as missed (coco_gain/ and refine/ '
              'stay comparable); for a true subset, write a subset annotation file')
    runner = Runner.from_cfg(cfg)
    if args.detector_only:
        getattr(runner.model, 'module', runner.model).init_weights()  # loads detector_checkpoint (the Runner initialises weights only to train)
    metrics = runner.test()
    if get_rank() != 0:
        return
    table = before_after_table(metrics)
    if table:
        title = 'The detector alone (refinement off: both columns are its boxes)' if args.detector_only else \
            'Before (detector) vs after (EBM refinement)'
        print(f'\n{title}:\n' + table)
    worse = refinement_losses(metrics)
    if worse:
        print('\n' + '!' * 78 + '\n!!! EBM refinement lowered, on the evaluated set: ' + '; '.join(worse) +
              "\n!!! If the head was trained on few images it may not generalise to these; see the README's"
              "\n!!! 'Training on a small data set' (calibrate the gate test_cfg.min_gain on held-out images).\n" +
              '!' * 78)
    if args.out_json:
        with open(args.out_json, 'w') as f:
            json.dump({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, f, indent=1)


if __name__ == '__main__':
    main()
