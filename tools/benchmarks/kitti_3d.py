"""EBM refinement of a LiDAR detector's boxes on generated KITTI-format scenes, on a CPU.

Steps (each skipped when its output already exists, so a rerun only redoes what is missing):

1. data: ``tools/data/generate_kitti_scenes.py`` (run through its CLI) writes ``--num-train`` /
   ``--num-val`` frames (seed ``--seed``) to ``--data`` unless its info files already hold that
   many frames;
2. detector: ``configs/pointpillars_kitti-gen_car.py`` trained from scratch for ``--det-iters``
   iterations (short on purpose: the boxes keep a localisation error to refine);
3. EBM: ``configs/pointpillars_ebm-nce_kitti-gen_car.py`` (an NCE ``EBMBoxHead3D`` on the frozen
   detector, boxes in metres and radians as the paper) for ``--ebm-iters`` iterations; with
   ``--normalized`` also a head trained in ``Box3DSpace(normalized=True)`` (centre over the box
   diagonal, log sizes) with sigmas (centre 0.01 / 0.02 / 0.04, log-size 0.01 / 0.02 / 0.04, yaw
   as the paper);
4. test, once, over the val set: each head is loaded with ``mmdet3d.apis.init_model``; per batch
   the detector runs once (voxelisation + ``EBMRefineDetector3D.detect(..., refine=False)``,
   timed), then each head refines copies of those boxes (``EBMRefineDetector3D.refine`` with
   ``refine_cfg.replace(step_sizes=lambda)``, timed) for every step size lambda of
   ``--step-sizes``; each variant is scored by KittiMetric, the detector's own boxes by
   ``InitialPredictionMetric``. Car AP40 (moderate) is computed at IoU 0.7 (KittiMetric's
   'strict' numbers) and 0.8 from the same KITTI-format results with mmdet3d's ``do_eval`` and
   a custom overlap array (mmdet3d's ``kitti_eval`` hard-codes 0.7 / 0.5).

Writes ``--out`` (markdown: the table, the run's settings and the exact command) and
``<work-dir>/results.json``.

    nice -n 5 python tools/benchmarks/kitti_3d.py [--num-train 300 --num-val 100] \\
        [--det-iters 300 --ebm-iters 200] [--step-sizes 2e-4 2e-3 2e-2] [--normalized]

About 25-30 min with --normalized on 2 shared CPU cores (detector ~2.5-3 s per iteration of 2
frames there, EBM ~1-1.5 s).

All ``torch`` settings (threads) are left as they are, so detector and refinement times are
measured under the same conditions. The step sizes are compared on the val set they are scored
on (there is no separate tuning split): read the lambda sweep as a sensitivity study.
"""
import argparse
import copy
import dataclasses
import json
import os
import os.path as osp
import shlex
import subprocess
import sys
import time
import uuid
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

import ebm_det  # noqa: F401  (registers the modules)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
GENERATOR = osp.join(ROOT, 'tools', 'data', 'generate_kitti_scenes.py')
DET_CONFIG = osp.join(ROOT, 'configs', 'pointpillars_kitti-gen_car.py')
EBM_CONFIG = osp.join(ROOT, 'configs', 'pointpillars_ebm-nce_kitti-gen_car.py')
DEVICE = 'cpu'  # what the benchmark measures: refinement time next to the detector's, on a CPU
EBM_LOSS = 'NCELoss'  # ebms_3dod's training method, stated so that the table keeps its meaning
# (centre / diagonal, log size, yaw) per component; yaw as ebms_3dod's (x 1.25)
NORMALIZED_SIGMAS = [[c, c, c, s, s, s, 1.25 * r] for c, s, r in
                     [(0.01, 0.01, 0.0125), (0.02, 0.02, 0.025), (0.04, 0.04, 0.05)]]
WARMUP_FRACTION = 0.3  # the configs' one cycle: cosine up over the first 30 %, then down
TRAIN_LOG_INTERVAL = 50  # iterations between training log lines
TEST_LOG_INTERVAL = 5  # batches between test progress lines
STRICT_IOU = 0.7  # KittiMetric's 'strict' Car IoU
AP_IOUS = (STRICT_IOU, 0.8)
# KittiMetric's strict AP40 of the detector's own boxes (InitialPredictionMetric's prefix), per BEV / 3D
INIT_STRICT_KEY = 'Kitti metric_init/pred_instances_3d/KITTI/Car_{}_AP40_moderate_strict'
CROSS_CHECK_TOL = 1e-3  # our do_eval AP at STRICT_IOU against KittiMetric's (AP in %)
CAR, MODERATE = 0, 1  # do_eval's class and difficulty indices
INIT = 'init'  # the evaluator (and results folder) of the detector's own boxes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=osp.join(ROOT, 'data', 'kitti_gen'))
    p.add_argument('--num-train', type=int, default=300)
    p.add_argument('--num-val', type=int, default=100)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--det-iters', type=int, default=300, help='detector iterations (batch 2)')
    p.add_argument('--ebm-iters', type=int, default=200, help='EBM iterations (batch 2)')
    p.add_argument('--num-samples', type=int, default=128, help='NCE noise samples per GT box')
    p.add_argument('--step-sizes', type=float, nargs='+', default=[2e-4, 2e-3, 2e-2],
                   help='lambda values to test (the first is the config\'s, 2e-4 as the paper)')
    p.add_argument('--num-steps', type=int, default=10)
    p.add_argument('--normalized', action='store_true', help='also train and test a normalized-space head')
    p.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'kitti_3d_benchmark'))
    p.add_argument('--out', default=osp.join(ROOT, 'docs', 'figures', 'kitti_3d.md'))
    p.add_argument('--retrain', action='store_true', help='retrain even if checkpoints exist')
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def frames_in_infos(root: str) -> Optional[List[int]]:
    """[train, val] frame counts of the info files under ``root``; None when one is missing."""
    import mmengine
    infos = [osp.join(root, f'kitti_infos_{split}.pkl') for split in ('train', 'val')]
    if not all(osp.isfile(f) for f in infos):
        return None
    return [len(mmengine.load(f)['data_list']) for f in infos]


def generator_command(root: str, num_train: int, num_val: int, seed: int) -> List[str]:
    """The command line of ``tools/data/generate_kitti_scenes.py`` that writes the data set."""
    return [sys.executable, GENERATOR, '--out', root, '--num-train', str(num_train), '--num-val', str(num_val),
            '--seed', str(seed)]


def ensure_data(root: str, num_train: int, num_val: int, seed: int) -> None:
    """Generate the scenes unless ``root`` already holds ``num_train`` / ``num_val`` frames."""
    if frames_in_infos(root) == [num_train, num_val]:
        print(f'data: reusing {root} ({num_train} train / {num_val} val frames)')
        return
    t = time.perf_counter()
    subprocess.run(generator_command(root, num_train, num_val, seed), check=True)
    print(f'data: generated {num_train} + {num_val} frames in {root} ({time.perf_counter() - t:.0f} s)')


# ---------------------------------------------------------------------------------------------
# configs and training
# ---------------------------------------------------------------------------------------------
def load_config(path: str, data_root: str, work_dir: Optional[str] = None, options: Optional[dict] = None):
    """The config at ``path`` reading the scenes under ``data_root``, with ``options`` merged."""
    from mmengine.config import Config
    cfg = Config.fromfile(path)
    root = data_root.rstrip('/') + '/'
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = root
    if work_dir is not None:
        cfg.work_dir = work_dir
    cfg.experiment_name = uuid.uuid4().hex[:8]  # several runners in one process
    cfg.merge_from_dict(options or {})
    return cfg


def shorten_schedule(cfg, max_iters: int) -> None:
    """Train ``max_iters`` iterations: the configs' one cycle (two CosineAnnealingLR) rescaled to
    them, one checkpoint at the end, and no validation (IterBasedTrainLoop would validate at the
    last iteration; the test below scores every variant)."""
    cfg.train_cfg.max_iters = max_iters
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    warm = max(1, int(WARMUP_FRACTION * max_iters))
    up, down = cfg.param_scheduler
    up.update(T_max=warm, begin=0, end=warm)
    down.update(T_max=max_iters - warm, begin=warm, end=max_iters)
    cfg.default_hooks.checkpoint.interval = max_iters
    cfg.default_hooks.logger.interval = TRAIN_LOG_INTERVAL


def train(path: str, data_root: str, work_dir: str, max_iters: int, retrain: bool,
          options: Optional[dict] = None) -> str:
    """Train the config at ``path`` (unless its checkpoint exists); returns the checkpoint's path."""
    from mmengine.runner import Runner
    ckpt = osp.join(work_dir, f'iter_{max_iters}.pth')
    if osp.isfile(ckpt) and not retrain:
        print(f'train: reusing {ckpt}')
        return ckpt
    cfg = load_config(path, data_root, work_dir, options)
    shorten_schedule(cfg, max_iters)
    t = time.perf_counter()
    Runner.from_cfg(cfg).train()
    print(f'train: {osp.basename(path)} {max_iters} iterations in {(time.perf_counter() - t) / 60:.1f} min')
    return ckpt


def head_options(num_samples: int, normalized: bool) -> Dict[str, dict]:
    """Per EBM head, its changes to the EBM config (used to train it and to load it for the test):
    'absolute' (the paper's space and sigmas) and, with ``normalized``, 'normalized'."""
    heads = {'absolute': {'model.ebm_head.loss': dict(type=EBM_LOSS, num_samples=num_samples)}}
    if normalized:
        heads['normalized'] = {
            'model.ebm_head.normalized_space': True,
            'model.ebm_head.loss': dict(type=EBM_LOSS, num_samples=num_samples, sigmas=NORMALIZED_SIGMAS),
        }
    return heads


def train_heads(heads: Dict[str, dict], det_ckpt: str, args: argparse.Namespace) -> Dict[str, str]:
    """Train every EBM head on the frozen detector of ``det_ckpt``; returns checkpoints by head."""
    return {name: train(EBM_CONFIG, args.data, osp.join(args.work_dir, f'ebm_{name}'), args.ebm_iters, args.retrain,
                        {'model.detector_checkpoint': det_ckpt, **options})
            for name, options in heads.items()}


# ---------------------------------------------------------------------------------------------
# the test pass
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Variant:
    """One refinement setting scored on the val set: an EBM head and its step size lambda."""
    head: str
    step_size: float

    @property
    def name(self) -> str:
        """Its evaluator, results folder and results.json key."""
        return f'{self.head}_{self.step_size:g}'

    @property
    def label(self) -> str:
        """Its row of the table."""
        return f'+ EBM ({self.head}), lambda={self.step_size:g}'


@dataclasses.dataclass
class TestPass:
    """What one pass over the val set measured: seconds in the detector and per variant in
    refinement, boxes the detector kept, and each frame's ``sample_idx`` in loader order."""
    det_seconds: float = 0.0
    refine_seconds: Dict[str, float] = dataclasses.field(default_factory=dict)
    num_boxes: int = 0
    sample_idx: List[int] = dataclasses.field(default_factory=list)


def timed(fn: Callable, *args):
    """(fn(*args), wall-clock seconds it took)."""
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def detect(model, batch: dict):
    """One detector pass (voxelisation + the inner detector's ``predict``), no refinement:
    (results, feats)."""
    data = model.data_preprocessor(batch, False)
    return model.detect(data['inputs'], data['data_samples'], refine=False)


def load_models(ckpts: Dict[str, str], heads: Dict[str, dict], data_root: str) -> Dict[str, torch.nn.Module]:
    """Each trained head's EBMRefineDetector3D through ``mmdet3d.apis.init_model``, by head."""
    from mmdet3d.apis import init_model
    return {name: init_model(load_config(EBM_CONFIG, data_root, options=heads[name]), ckpt, device=DEVICE)
            for name, ckpt in ckpts.items()}


def kitti_metric(work_dir: str, ann_file: str, name: str) -> dict:
    """A KittiMetric config that also writes its KITTI-format results to ``<work_dir>/<name>/``."""
    os.makedirs(osp.join(work_dir, name), exist_ok=True)
    return dict(type='KittiMetric', ann_file=ann_file, metric='bbox', pklfile_prefix=osp.join(work_dir, name))


def build_evaluators(variants: Sequence[Variant], ann_file: str, work_dir: str, dataset_meta: dict) -> dict:
    """One evaluator per variant (by ``Variant.name``) and ``INIT`` for the detector's own boxes."""
    from mmengine.evaluator import Evaluator
    evaluators = {v.name: Evaluator([kitti_metric(work_dir, ann_file, v.name)]) for v in variants}
    evaluators[INIT] = Evaluator([dict(type='InitialPredictionMetric', metric=kitti_metric(work_dir, ann_file, INIT))])
    for e in evaluators.values():
        e.dataset_meta = dataset_meta
    return evaluators


def run_test_pass(models: dict, cfgs: dict, loader, evaluators: dict) -> TestPass:
    """Per batch the detector once, then every variant of ``cfgs`` (Variant -> RefineConfig)
    refines its own copy of those boxes; every evaluator processes its boxes."""
    det = next(iter(models.values()))  # all heads share the same frozen detector weights
    first = next(iter(cfgs))  # its copies also hold the detector's boxes (``*_init``) for INIT
    stats = TestPass(refine_seconds={v.name: 0.0 for v in cfgs})
    with torch.no_grad():
        for step, batch in enumerate(loader):
            if step % TEST_LOG_INTERVAL == 0:
                print(f'test: batch {step + 1}/{len(loader)}', flush=True)
            (results, feats), seconds = timed(detect, det, batch)
            stats.det_seconds += seconds
            stats.num_boxes += sum(len(r.pred_instances_3d) for r in results)
            stats.sample_idx += [r.sample_idx for r in results]
            for v, cfg in cfgs.items():
                preds = copy.deepcopy(results)
                _, seconds = timed(models[v.head].refine, feats, preds, cfg)
                stats.refine_seconds[v.name] += seconds
                evaluators[v.name].process(preds, batch)
                if v == first:
                    evaluators[INIT].process(preds, batch)
    return stats


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------
def kitti_ap40_moderate(ann_file: str, det_annos: List[dict], ious: Sequence[float] = AP_IOUS) -> Dict[str, float]:
    """Car AP40 (moderate) in BEV and 3D at each IoU of ``ious``, from KITTI-format results (as
    KittiMetric writes them with ``pklfile_prefix``), through mmdet3d's own ``do_eval``."""
    import mmengine
    from mmdet3d.evaluation import KittiMetric
    from mmdet3d.evaluation.functional.kitti_utils.eval import do_eval
    infos = KittiMetric(ann_file=ann_file).convert_annos_to_kitti_annos(mmengine.load(ann_file))
    gt_annos = [infos[int(d['sample_idx'][0])]['kitti_annos'] for d in det_annos]
    # min_overlaps[k, metric (2D, BEV, 3D), class]: one row per IoU, Car only
    overlaps = np.array(ious, dtype=np.float64)[:, None, None].repeat(3, axis=1)
    out = do_eval(gt_annos, det_annos, [CAR], overlaps, ['bbox', 'bev', '3d'])
    ap40_bev, ap40_3d = out[5], out[6]  # [class, difficulty, iou]
    res = {}
    for k, iou in enumerate(ious):
        res[f'BEV@{iou}'] = float(ap40_bev[CAR, MODERATE, k])
        res[f'3D@{iou}'] = float(ap40_3d[CAR, MODERATE, k])
    return res


def with_sample_idx(det_annos: List[dict], sample_idx: List[int]) -> List[dict]:
    """KittiMetric gives frames without a valid box an empty ``sample_idx``; the results are in
    loader order, so each frame gets its own back (one entry per box, at least one)."""
    for d, i in zip(det_annos, sample_idx):
        d['sample_idx'] = np.array([i] * max(len(d['name']), 1), dtype=np.int64)
    return det_annos


def variant_ap(ann_file: str, work_dir: str, name: str, sample_idx: List[int]) -> Dict[str, float]:
    """``kitti_ap40_moderate`` of the KITTI-format results KittiMetric wrote for ``name``."""
    import mmengine
    annos = mmengine.load(osp.join(work_dir, name, 'pred_instances_3d.pkl'))
    return kitti_ap40_moderate(ann_file, with_sample_idx(annos, sample_idx))


def check_strict_ap(ap: Dict[str, float], init_metrics: Dict[str, float]) -> None:
    """Our AP of the detector's boxes at ``STRICT_IOU`` must equal KittiMetric's 'strict' AP40."""
    for kind in ('BEV', '3D'):
        ref = init_metrics[INIT_STRICT_KEY.format(kind)]
        if abs(ref - ap[f'{kind}@{STRICT_IOU}']) >= CROSS_CHECK_TOL:
            raise RuntimeError(f'{kind} AP40 at IoU {STRICT_IOU}: do_eval gives {ap}, KittiMetric {ref}')


def table_rows(ann_file: str, work_dir: str, variants: Sequence[Variant], stats: TestPass, metrics: dict,
               num_frames: int) -> List[dict]:
    """The detector's row, then one per variant: AP at each IoU, refinement ms / frame and its
    ratio to the detector's time."""
    init = variant_ap(ann_file, work_dir, INIT, stats.sample_idx)
    check_strict_ap(init, metrics[INIT])
    rows = [dict(name='detector (before)', **init, ref_ms=0.0)]
    for v in variants:
        seconds = stats.refine_seconds[v.name]
        rows.append(dict(name=v.label, **variant_ap(ann_file, work_dir, v.name, stats.sample_idx),
                         ref_ms=1e3 * seconds / num_frames, ratio=seconds / stats.det_seconds))
    return rows


def evaluate(ckpts: Dict[str, str], heads: Dict[str, dict], data_root: str, work_dir: str,
             step_sizes: List[float], num_steps: int) -> dict:
    """One pass over the val set: detector once per batch, then every head x lambda variant."""
    from mmengine.runner import Runner
    from ebm_det.evaluation import select_kitti_iou_backend
    select_kitti_iou_backend()  # KittiMetric's BEV / 3D IoU on the CPU where CUDA is absent
    ann_file = osp.join(data_root, 'kitti_infos_val.pkl')
    models = load_models(ckpts, heads, data_root)
    variants = [Variant(head, lam) for head in models for lam in step_sizes]
    cfgs = {v: models[v.head].refine_cfg.replace(step_sizes=v.step_size, num_steps=num_steps) for v in variants}
    loader = Runner.build_dataloader(load_config(EBM_CONFIG, data_root).test_dataloader)
    evaluators = build_evaluators(variants, ann_file, work_dir, loader.dataset.metainfo)
    stats = run_test_pass(models, cfgs, loader, evaluators)
    n = len(loader.dataset)
    metrics = {k: e.evaluate(n) for k, e in evaluators.items()}
    return dict(rows=table_rows(ann_file, work_dir, variants, stats, metrics, n), det_ms=1e3 * stats.det_seconds / n,
                frames=n, boxes_per_frame=stats.num_boxes / n, batch_size=loader.batch_size,
                decay=next(iter(cfgs.values())).decay,
                metrics={k: {kk: vv for kk, vv in m.items() if 'AP40_moderate_strict' in kk}
                         for k, m in metrics.items()})


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
TABLE_KEYS = tuple(f'{kind}@{iou}' for iou in AP_IOUS for kind in ('BEV', '3D'))


def table(rows: List[dict]) -> List[str]:
    """Markdown table lines: AP (and its change from the first row) and refinement time."""
    header = ' | '.join(f'{kind} @{iou}' for iou in AP_IOUS for kind in ('BEV', '3D'))
    lines = [f'| boxes | {header} | refine ms / frame | refine / detector time |', '|' + '---|' * (len(TABLE_KEYS) + 3)]
    base = rows[0]
    for r in rows:
        cells = [f'{r[k]:.2f}' + ('' if r is base else f' ({r[k] - base[k]:+.2f})') for k in TABLE_KEYS]
        timing = ['-', '-'] if r is base else [f'{r["ref_ms"]:.0f}', f'{r["ratio"]:.2f}']
        lines.append(f'| {r["name"]} | ' + ' | '.join(cells + timing) + ' |')
    return lines


def describe_setup(res: dict, args: argparse.Namespace) -> str:
    """The paragraph above the table: data, detector, heads, refinement."""
    heads = 'absolute space (metres / radians, the paper\'s sigmas)'
    if args.normalized:
        heads += (' and, separately trained, normalized space (centre over the box diagonal, log sizes; sigmas '
                  'centre 0.01 / 0.02 / 0.04, log-size 0.01 / 0.02 / 0.04, yaw as the paper)')
    return (f'Car AP40 (moderate) on {res["frames"]} val frames of `tools/data/generate_kitti_scenes.py` '
            f'({args.num_train} train frames, seed {args.seed}). Detector: the small PointPillars of '
            f'`configs/pointpillars_kitti-gen_car.py`, trained from scratch for {args.det_iters} iterations of 2 '
            f'frames. EBM: `configs/pointpillars_ebm-nce_kitti-gen_car.py`, an NCE-trained ({args.num_samples} '
            f'noise samples) `EBMBoxHead3D` on the frozen detector, {args.ebm_iters} iterations of 2 frames, in '
            f'{heads}. Refinement: T = {args.num_steps} gradient-ascent steps, decay {res["decay"]:g} (a step that '
            f'lowers f is reverted and its lambda halved), on all {res["boxes_per_frame"]:.1f} boxes per frame the '
            'detector keeps (its score_thr 0.1, NMS).')


def describe_method(res: dict, args: argparse.Namespace) -> List[str]:
    """The paragraphs below the table: how times and APs were measured."""
    return [
        f'Detector inference (voxelisation + `predict`, batches of {res["batch_size"]} frames): '
        f'{res["det_ms"]:.0f} ms / frame. Refinement time is `EBMRefineDetector3D.refine` (all boxes of a batch in '
        f'one call, {args.num_steps + 1} score + gradient evaluations), timed in the same pass with the same torch '
        'threads. Both are wall-clock times on 2 CPU cores shared with other jobs, so the ratio is the '
        'meaningful number; refinement is many small ops, which suffer most from the sharing.', '',
        'The IoU 0.7 numbers are KittiMetric\'s `Car_{BEV,3D}_AP40_moderate_strict` (checked equal); IoU 0.8 '
        'comes from the same KITTI-format results through mmdet3d\'s `kitti_utils.eval.do_eval` with a 0.8 '
        'overlap array (its `kitti_eval` hard-codes 0.7 / 0.5). The lambda values are compared on the val '
        'frames they are scored on (there is no separate tuning split); 2e-4 is the paper\'s.',
    ]


def markdown(res: dict, args: argparse.Namespace, command: str, minutes: float) -> str:
    lines = ['# EBM refinement on generated KITTI-format LiDAR scenes (CPU)', '', describe_setup(res, args), '']
    lines += table(res['rows'])
    lines += ['', *describe_method(res, args), '', f'Total wall time of the run: {minutes:.1f} min.', '',
              'Command:', '', '```', command, '```', '']
    return '\n'.join(lines)


def command_line(argv: Optional[List[str]]) -> str:
    """The command that reproduces this run, as the report quotes it."""
    args = [osp.relpath(osp.abspath(__file__), ROOT)] + list(argv or sys.argv[1:])
    return 'nice -n 5 python ' + ' '.join(shlex.quote(a) for a in args)


def write_outputs(res: dict, md: str, work_dir: str, out: Optional[str]) -> None:
    with open(osp.join(work_dir, 'results.json'), 'w') as f:
        json.dump(res, f, indent=1)
    if out:
        os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
        with open(out, 'w') as f:
            f.write(md)
        print(f'wrote {out}')


def main(argv=None) -> None:
    args = parse_args(argv)
    t_start = time.perf_counter()
    os.makedirs(args.work_dir, exist_ok=True)
    ensure_data(args.data, args.num_train, args.num_val, args.seed)
    det_ckpt = train(DET_CONFIG, args.data, osp.join(args.work_dir, 'det'), args.det_iters, args.retrain)
    heads = head_options(args.num_samples, args.normalized)
    ckpts = train_heads(heads, det_ckpt, args)
    res = evaluate(ckpts, heads, args.data, osp.join(args.work_dir, 'test'), args.step_sizes, args.num_steps)
    md = markdown(res, args, command_line(argv), (time.perf_counter() - t_start) / 60)
    print('\n' + md)
    write_outputs(res, md, args.work_dir, args.out)


if __name__ == '__main__':
    main()
