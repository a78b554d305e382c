"""Train a detector or an EBM refiner from a config, through the mmengine Runner.

    python tools/train.py CONFIG [--work-dir DIR] [--resume] [--amp] [--cfg-options k=v ...]
    tools/dist_train.sh CONFIG N [...]     # N processes (torchrun), one per GPU; gloo on CPU
"""
import argparse
import os.path as osp

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

import ebm_det  # noqa: F401  (registers modules; allows mmengine checkpoints under weights_only)
from ebm_det.distributed import setup_cpu_distributed


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train with the mmengine Runner')
    parser.add_argument('config', help='the detector or EBM refiner config (an mmengine .py config)')
    parser.add_argument('--work-dir', help="logs and checkpoints (default: the config's work_dir, else work_dirs/<config name>)")
    parser.add_argument('--resume', action='store_true', help='resume from the latest checkpoint in work-dir')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher: none (one process), pytorch (torchrun, as tools/dist_train.sh), slurm (as '
                        'tools/slurm_train.sh) or mpi')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help='accepted for torch.distributed.launch, and ignored (mmengine reads LOCAL_RANK from the '
                        'environment)')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    cfg.resume = args.resume
    if args.launcher == 'pytorch' and not torch.cuda.is_available():
        setup_cpu_distributed(cfg)
    Runner.from_cfg(cfg).train()


if __name__ == '__main__':
    main()
