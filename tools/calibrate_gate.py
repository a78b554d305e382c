"""Calibrate the refinement gate (``test_cfg.min_gain``) of a 2D EBM refine detector on held-out
images: refine them with no gate, match each confident detection to its object, and pick the
margin on f's gain that maximises the summed IoU change (``ebm_det.evaluation.calibrate_min_gain``).

    python tools/calibrate_gate.py CONFIG CHECKPOINT --ann-file ANN [--data-root ROOT] [--img-prefix train/]
        [--per-class]
        [--score-thr 0.3] [--iou-thr 0.5] [--out gate.json] [--cfg-options k=v ...]

Use images the head was not trained on and that you will not report results on (a held-out part
of the training set), never the test set. Prints the ``--cfg-options`` that sets the gate.
"""
import argparse
import json

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner
from mmengine.utils import ProgressBar

import ebm_det  # noqa: F401
from ebm_det.evaluation import calibrate_min_gain, match_refined_detections


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='the 2D EBM refine detector config (an mmengine .py config)')
    p.add_argument('checkpoint', help='checkpoint (.pth) to load')
    p.add_argument('--ann-file', required=True, help='COCO annotations of the held-out images (relative to the data root, as mmdet datasets take it, or absolute)')
    p.add_argument('--data-root', help="default: the config's test data root")
    p.add_argument('--img-prefix', help="the images' folder under the data root (default: the config's test one; "
                   'train/ when the held-out images are part of the training set)')
    p.add_argument('--per-class', action='store_true', help='one margin per class (default: one for all)')
    p.add_argument('--score-thr', type=float, default=0.3,
                   help="detections scoring at least this (detector's score)")
    p.add_argument('--iou-thr', type=float, default=0.5, help='... whose box overlaps an object of their class this much')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                   help='where the model runs (default: cuda when available, else cpu)')
    p.add_argument('--out', help="write the margins ('inf' as a string) and the matched detections' statistics "
                   'to this JSON file')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config keys (key=value ...), e.g. the options the head was trained with '
                   '(test_cfg.min_gain is set to 0 regardless)')
    return p.parse_args()


def collect(model, dataloader, score_thr: float, iou_thr: float) -> dict:
    """Matched detections of every image, refined without a gate: gain, labels, IoU before/after."""
    parts = []
    bar = ProgressBar(len(dataloader.dataset))
    for batch in dataloader:
        with torch.no_grad():
            results = model.test_step(batch)
        for r in results:
            parts.append(match_refined_detections(r.to_dict(), score_thr, iou_thr))
            bar.update()
    return {k: torch.cat([p[k] for p in parts]) for k in ('gain', 'labels', 'iou_init', 'iou')}


def report(m: dict, margin, class_names) -> list:
    """Lines: per class and in all, matched detections, mean IoU without and with the gate, the
    share moved away, and the margin."""
    margins = torch.full_like(m['gain'], margin) if isinstance(margin, float) else \
        torch.tensor(margin, dtype=m['gain'].dtype)[m['labels']]
    gated = torch.where(m['gain'] >= margins, m['iou'], m['iou_init'])
    lines = [f"{'class':<16} {'matched':>7} {'IoU before':>10} {'no gate':>8} {'gated':>8} {'away':>5} "
             f"{'gated away':>10}  min_gain"]
    groups = [(name, m['labels'] == c) for c, name in enumerate(class_names)] + [('all', slice(None))]
    for name, sel in groups:
        n = int(m['iou'][sel].numel())
        if n == 0:
            lines.append(f'{name:<16} {0:>7}   (no matched detections: the margin stays 0)')
            continue
        away, gated_away = (m['iou'][sel] < m['iou_init'][sel]), (gated[sel] < m['iou_init'][sel])
        mg = margin if isinstance(margin, float) else (margin[class_names.index(name)] if name != 'all' else '')
        lines.append(f"{name:<16} {n:>7} {float(m['iou_init'][sel].mean()):>10.4f} {float(m['iou'][sel].mean()):>8.4f} "
                     f"{float(gated[sel].mean()):>8.4f} {100 * float(away.float().mean()):>4.0f}% "
                     f"{100 * float(gated_away.float().mean()):>9.0f}%  {mg if isinstance(mg, str) else f'{mg:.3f}'}")
    return lines


def main() -> None:
    from mmdet.apis import init_detector
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.model.test_cfg = {**(cfg.model.get('test_cfg') or {}), 'min_gain': 0.0}
    cfg.model.val_loss = False  # not needed here
    dataset = cfg.test_dataloader.dataset
    dataset.ann_file = args.ann_file
    if args.data_root:
        dataset.data_root = args.data_root
    if args.img_prefix:
        dataset.data_prefix = dict(img=args.img_prefix)
    model = init_detector(cfg, args.checkpoint, device=args.device)
    m = collect(model, Runner.build_dataloader(cfg.test_dataloader), args.score_thr, args.iou_thr)
    num_classes = model.ebm_head.num_classes
    if not len(m['iou']):
        raise SystemExit(f'no detection scoring >= {args.score_thr} matched an object at IoU >= {args.iou_thr} on '
                         f'{args.ann_file}: nothing to calibrate on (check the images and annotations)')
    margin = calibrate_min_gain(m['gain'], m['iou_init'], m['iou'], m['labels'] if args.per_class else None,
                                num_classes)
    names = list((model.dataset_meta or {}).get('classes') or [str(c) for c in range(num_classes)])
    print('\nMatched detections of the held-out images (IoU with their object; "away": the share whose IoU fell)')
    print('\n'.join(report(m, margin, names)))
    option = f'model.test_cfg.min_gain={json.dumps(margin)}'.replace('Infinity', 'inf')
    print(f'\nset the gate with: --cfg-options "{option}"')
    if args.out:
        as_json = (lambda v: 'inf' if v == float('inf') else v)  # noqa: E731  (standard JSON has no inf)
        with open(args.out, 'w') as f:
            json.dump(dict(min_gain=as_json(margin) if isinstance(margin, float) else [as_json(v) for v in margin],
                           matched=len(m['iou']), iou_init=float(m['iou_init'].mean()), iou=float(m['iou'].mean())),
                      f, indent=1)


if __name__ == '__main__':
    main()
