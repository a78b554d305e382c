"""Test a checkpoint through the mmengine Runner; for EBM refine detectors, print the metrics of
the detector's boxes and of the refined boxes side by side (from one run), and say loudly when
refinement made AP or the matched detections' mean IoU worse.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options k=v ...]
"""
import argparse
import json
import os.path as osp

import torch
from mmengine.config import Config, DictAction
from mmengine.dist import get_rank
from mmengine.runner import Runner

import ebm_det  # noqa: F401
from train import setup_cpu_distributed  # the sibling tool (this folder is on sys.path)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test with the mmengine Runner')
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--work-dir')
    parser.add_argument('--out-json', help='also write the metrics to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args()


def before_after_table(metrics: dict, suffix: str = '_init') -> str:
    """Rows 'metric | before (P_init/name) | after (P/name) | change' for every key 'P/name' with a
    'P_init/name' sibling."""
    rows = []
    for key, after in metrics.items():
        prefix, _, name = key.partition('/')
        before = metrics.get(f'{prefix}{suffix}/{name}')
        if before is not None and isinstance(after, (int, float)):
            rows.append(f'{name:<40} {before:>8.4f} {after:>8.4f} {after - before:>+8.4f}')
            head = f"{'metric (' + prefix + suffix + '/ -> ' + prefix + '/)':<40} {'before':>8} {'after':>8} {'change':>8}"
    if not rows:
        return ''
    return '\n'.join([head, *rows])


def refinement_losses(metrics: dict, suffix: str = '_init') -> list:
    """'name: before -> after' for every AP-like result (a name containing 'AP') and every mean IoU
    of matched detections (``RefinementLocalisationMetric``'s ``iou`` vs ``iou_init``) that
    refinement lowered."""
    worse = []
    for key, after in metrics.items():
        prefix, _, name = key.partition('/')
        if name.endswith(suffix) and f'{prefix}/{name[:-len(suffix)]}' in metrics:  # refine/iou_init
            before, after, name = after, metrics[f'{prefix}/{name[:-len(suffix)]}'], f'{prefix}/{name[:-len(suffix)]}'
        elif 'AP' in name and f'{prefix}{suffix}/{name}' in metrics:
            before, name = metrics[f'{prefix}{suffix}/{name}'], key
        else:
            continue
        if isinstance(after, (int, float)) and isinstance(before, (int, float)) and after < before:
            worse.append(f'{name}: {before:.4f} -> {after:.4f}')
    return worse


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    if args.launcher == 'pytorch' and not torch.cuda.is_available():
        setup_cpu_distributed(cfg)
    metrics = Runner.from_cfg(cfg).test()
    if get_rank() != 0:
        return
    table = before_after_table(metrics)
    if table:
        print('\nBefore (detector) vs after (EBM refinement):\n' + table)
    worse = refinement_losses(metrics)
    if worse:
        print('\n' + '!' * 78 + '\n!!! EBM REFINEMENT MADE THESE WORSE on the evaluated set: ' + '; '.join(worse) +
              "\n!!! The head does not generalise to these images. See the README's 'Training on a small data set'"
              '\n!!! (regularise, stop on ebm/val_loss, or gate with test_cfg.min_gain).\n' + '!' * 78)
    if args.out_json:
        with open(args.out_json, 'w') as f:
            json.dump({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, f, indent=1)


if __name__ == '__main__':
    main()
