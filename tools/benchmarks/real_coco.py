"""Real images, a real COCO detector: does EBM refinement pay off on real data?

    python -m tools.benchmarks.real_coco [--iters 800] [--calib 48] [--work work_dirs/real_coco]
        [--out docs/figures/real_coco.md] [--options k=v ...]

The shipped config ``configs/yolox-nano_ebm-nceplus_real-coco-small.py``: mmdet's own YOLOX-Nano
(frozen, the real COCO checkpoint in ``../shared/data/real_coco/checkpoints``) plus an NCE+ EBM
head on its neck. The head trains (tools/train.py) on the real train2017 images of
``../shared/data/real_coco`` less the last ``--calib`` (in image-id order), which are held out to
calibrate the refinement gate (tools/calibrate_gate.py). The 153 real val2017 images are scored
once without and once with the gate (tools/test.py: CocoMetric on the detector's and on the refined
boxes in one pass, ``RefinementLocalisationMetric``); no setting is chosen on them. Also timed:
the head's training, and refinement per image against the detector (``torch.utils.benchmark``).
Writes ``--out`` (markdown) and a picture of a val image before/after beside it. Each step is
skipped when its output exists in ``--work``.
"""
import argparse
import copy
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from tools.benchmarks.common import (ROOT, calibrate_gate, command_line, load_model, parse_options, test_checkpoint,
                                     write_coco_subset)

DATA = ROOT.parent / 'shared' / 'data' / 'real_coco'
CONFIG = 'configs/yolox-nano_ebm-nceplus_real-coco-small.py'


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--iters', type=int, help="EBM training iterations (default: the config's)")
    p.add_argument('--calib', type=int, default=48, help='training images held out to calibrate the gate')
    p.add_argument('--work', default='work_dirs/real_coco', help='work dir (each step is skipped when its output is there)')
    p.add_argument('--out', default='docs/figures/real_coco.md',
                   help='markdown table (the picture beside it); the default is the shipped figure')
    p.add_argument('--options', nargs='*', default=[], help='config options (k=v) for training and testing the head')
    return p.parse_args()


def run(cmd: list) -> None:
    print('+', ' '.join(shlex.quote(str(c)) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def split(work: Path, calib: int) -> dict:
    """Annotation files of the head's training images and of the held-out ones (absolute paths)."""
    full = json.loads((DATA / 'annotations' / 'instances_train2017.json').read_text())
    ids = sorted(im['id'] for im in full['images'])
    if not 0 < calib < len(ids):
        raise SystemExit(f'--calib must be between 1 and {len(ids) - 1}, got {calib}')
    out = {}
    for name, keep in (('train', ids[:-calib]), ('calib', ids[-calib:])):
        path = work / 'annotations' / f'instances_{name}.json'
        path.parent.mkdir(parents=True, exist_ok=True)
        write_coco_subset(full, keep, path)
        out[name] = (str(path), len(keep))
    return out


def train(args, work: Path, ann: str) -> tuple:
    """The head's checkpoint and its training minutes (measured here, or read back)."""
    folder = work / 'ebm'
    timing = folder / 'train_minutes.json'
    if not (folder / 'last_checkpoint').exists() or not timing.exists():
        opts = [f'train_dataloader.dataset.ann_file={ann}', *args.options]
        if args.iters:
            n = args.iters
            opts += [f'train_cfg.max_iters={n}', f'default_hooks.checkpoint.interval={n}',
                     f'param_scheduler.0.end={n}', f'param_scheduler.0.milestones=[{int(n * .67)},{int(n * .83)}]']
        t = time.time()
        run([sys.executable, 'tools/train.py', CONFIG, '--work-dir', folder, '--cfg-options', 'train_cfg.val_interval=1000000',
             *opts])
        timing.write_text(json.dumps(dict(minutes=(time.time() - t) / 60)))
    return (folder / 'last_checkpoint').read_text().strip(), json.loads(timing.read_text())['minutes']


def test(args, work: Path, ckpt: str, tag: str, extra=()) -> dict:
    return test_checkpoint(CONFIG, ckpt, work / f'test_{tag}.json', [*args.options, *extra], work / 'test', reuse=True)


def calibrate(args, work: Path, ckpt: str, ann: str):
    return calibrate_gate(CONFIG, ckpt, ann, f'{DATA}/', 'train2017/', work / 'gate.json', args.options)


def timing(args, work: Path, ckpt: str, images: int = 16) -> dict:
    """ms per image of the detector and of refinement, on the first val images one at a time."""
    out = work / 'timing.json'
    if out.exists():
        return json.loads(out.read_text())
    import torch
    from mmengine.dataset import pseudo_collate
    from mmdet.registry import DATASETS
    from torch.utils.benchmark import Timer
    # parsed as tools/train.py's --cfg-options parses them
    model = load_model(CONFIG, ckpt, options={**parse_options(args.options), 'model.detector_checkpoint': None})
    ds_cfg = model.cfg.test_dataloader.dataset
    ds_cfg.data_root = f'{DATA}/'
    ds = DATASETS.build(ds_cfg)
    det, ref = [], []
    threads = torch.get_num_threads()  # the Timer's own default is one
    for i in range(images):
        batch = model.data_preprocessor(pseudo_collate([ds[i]]), False)
        inputs, samples = batch['inputs'], batch['data_samples']
        with torch.no_grad():
            det.append(Timer('model.detect(inputs, samples, rescale=False, refine=False)', num_threads=threads,
                             globals=dict(model=model, inputs=inputs, samples=samples)).blocked_autorange(min_run_time=0.5).median)
            results, feats = model.detect(inputs, samples, rescale=False, refine=False)
        # refine a fresh copy each time (refinement writes into its results)
        ref.append(Timer('model.refine(feats, copy.deepcopy(results))', num_threads=threads,  # clone() is shallow
                         globals=dict(model=model, feats=feats, results=results, copy=copy)).blocked_autorange(
                             min_run_time=0.5).median)
    res = dict(detector_ms=1e3 * sum(det) / images, refine_ms=1e3 * sum(ref) / images, images=images,
               threads=threads)
    out.write_text(json.dumps(res))
    return res


def picture(args, work: Path, ckpt: str, out: Path) -> None:
    dest = out.with_name(out.stem + '_val.png')
    if dest.exists():
        return
    vis = work / 'vis'
    run([sys.executable, 'tools/visualize_refinement.py', CONFIG, ckpt, '--images', '1', '--out-dir', vis,
         *(['--cfg-options', *args.options] if args.options else [])])
    pngs = sorted(vis.glob('refine_*.png'))
    if pngs:
        dest.write_bytes(pngs[0].read_bytes())


def table(args, m: dict, g: dict, margin: float, minutes: float, t: dict, sizes: dict, out: Path) -> str:
    pct = lambda d, k: 100 * d[k]  # noqa: E731
    keys = [('AP', 'bbox_mAP'), ('AP50', 'bbox_mAP_50'), ('AP75', 'bbox_mAP_75'), ('APs', 'bbox_mAP_s'),
            ('APm', 'bbox_mAP_m'), ('APl', 'bbox_mAP_l')]
    cmd = command_line('tools.benchmarks.real_coco')
    lines = [f'Command: `{cmd.strip()}`. Real data: the YOLOX-Nano COCO checkpoint (frozen) and an NCE+ head trained on '
             f"{sizes['train'][1]} real COCO train2017 images ({minutes:.1f} min on this machine), the gate calibrated "
             f"on {sizes['calib'][1]} held-out train2017 images, scored once each on the 153 real val2017 images. ",
             '', '| | detector | refined | gain | refined, gate | gain, gate |', '|---|---|---|---|---|---|']
    for name, k in keys:
        d, r, rg = pct(m, f'coco_init/{k}'), pct(m, f'coco/{k}'), pct(g, f'coco/{k}')
        lines.append(f'| {name} | {d:.1f} | {r:.1f} | {r - d:+.1f} | {rg:.1f} | {rg - d:+.1f} |')
    lines.append(f"| mean IoU of matched detections | {m['refine/iou_init']:.3f} | {m['refine/iou']:.3f} | "
                 f"{m['refine/iou'] - m['refine/iou_init']:+.3f} | {g['refine/iou']:.3f} | "
                 f"{g['refine/iou'] - g['refine/iou_init']:+.3f} |")
    away = lambda d: f"{100 * d['refine/worse']:.1f}% ({round(d['refine/worse'] * d['refine/matched'])} of {d['refine/matched']:.0f})"  # noqa: E731,E501
    lines.append(f"| matched detections moved away | | {away(m)} | | {away(g)} | |")
    margin_s = 'inf (refinement off)' if margin == float('inf') else f'{margin:.2f}'
    lines += ['', f'Gate: `model.test_cfg.min_gain` = {margin_s}. Time per val image (batch 1, {t["threads"]} threads, '
              f'`torch.utils.benchmark`, first {t["images"]} images): detector {t["detector_ms"]:.0f} ms, refinement '
              f'{t["refine_ms"]:.0f} ms.', '', f'![a real val image: GT green, detector red, refined blue]'
              f'({out.stem}_val.png)']
    return '\n'.join(lines) + '\n'


def require_data() -> None:
    """SystemExit unless the shared real-data folder is there."""
    if not DATA.is_dir():
        raise SystemExit(f'{DATA} not found: this benchmark needs the shared real-data folder (../shared/data)')


def main() -> None:
    args = parse_args()
    require_data()
    work = ROOT / args.work
    settings = dict(iters=args.iters, calib=args.calib, options=args.options)
    known = work / 'settings.json'
    if known.exists() and json.loads(known.read_text()) != settings:
        raise SystemExit(f'{work} holds a run with other settings ({known.read_text()}): its cached steps would be '
                         'reused under this command; give a new --work')
    work.mkdir(parents=True, exist_ok=True)
    known.write_text(json.dumps(settings))
    sizes = split(work, args.calib)
    ckpt, minutes = train(args, work, sizes['train'][0])
    m = test(args, work, ckpt, 'nogate')
    margin = calibrate(args, work, ckpt, sizes['calib'][0])
    g = test(args, work, ckpt, 'gate', [f'model.test_cfg.min_gain={margin}'])
    t = timing(args, work, ckpt)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    picture(args, work, ckpt, out)
    text = table(args, m, g, margin, minutes, t, sizes, out)
    out.write_text(text)
    print(text)


if __name__ == '__main__':
    main()
