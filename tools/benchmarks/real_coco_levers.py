"""Why does refinement not pay off on real COCO, and which levers move it? Measured on training
images only (never on the val images that real_coco.py reports).

    python -m tools.benchmarks.real_coco_levers [--levers base l0 fine ...] [--iters 800] [--calib 48]
        [--work work_dirs/real_coco_levers] [--out docs/figures/real_coco_levers.md]

The frozen YOLOX-Nano of ``configs/yolox-nano_ebm-nceplus_real-coco-small.py`` runs once over the
real train2017 images of ``../shared/data/real_coco`` (the test view and its mirror image); its
neck features, ground truth and detections are cached (``--work``/cache.pt). For each lever an
NCE+ head (the config's, changed by the lever) is trained on the cached features of the first
N - ``--calib`` images (batch 4, Adam 1e-4 with steps at 67% and 83%, each image mirrored half
of the time, as the config trains it), then measured on
- ``train``: the first 96 of its own training images; ``held``: the ``--calib`` held-out ones.
- sanity case (jitter): each ground-truth box moved by one draw of the training noise, refined
  (T = 5): mean IoU with the truth before -> after, share brought closer; the cosine between the
  first ascent step and the direction to the truth (box space).
- the detector's boxes (score >= 0.3, IoU >= 0.5 with an object of their class): mean IoU before
  -> after refinement, the share moved away, and the share whose truth f scores above the
  detector's box (f(GT) > f(det): where that fails, no ascent on f can bring the box closer).
"""
import argparse
import copy
import json
import time
from pathlib import Path

import torch

from tools.benchmarks.common import ROOT, command_line, write_report
from tools.benchmarks.real_coco import CONFIG, DATA, require_data
FINE = [[s] * 4 for s in (0.0375, 0.075, 0.15)]  # the papers' NCE+ sigmas halved
# lever -> (changes to the config's ebm_head, training-set size or None for all)
LEVERS = {
    'base': ({}, None),
    'l0': (dict(featmap_strides=[8]), None),  # every box sampled on the finest level (stride 8)
    'fine': (dict(loss=dict(type='NCEPlusLoss', num_samples=128, beta=0.1, sigmas=FINE)), None),
    'agnostic': (dict(class_agnostic=True), None),
    'roi14': (dict(roi_size=14), None),
    'half_data': ({}, 0.5),
    # a stride-4 level in front of the neck's three: the backbone's stage 1 (32 channels, zero-padded
    # to the neck's 64), where edges are four times finer than on the neck's finest level
    'p2': (dict(featmap_strides=[4, 8, 16, 32]), None),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--levers', nargs='+', default=['base'],
                   help='join with + to combine: ' + '; '.join(f'{k}: {json.dumps(v[0]) if v[0] else ""}'
                                                               f'{" x" + str(v[1]) + " of the images" if v[1] else ""}'
                                                               for k, v in LEVERS.items()))
    p.add_argument('--iters', type=int, default=800, help='head training iterations (batch 4)')
    p.add_argument('--calib', type=int, default=48, help='training images held out (the last in image-id order)')
    p.add_argument('--steps', type=int, default=5, help='T for the sanity cases')
    p.add_argument('--seed', type=int, default=0, help='seed of the head initialisation and the batch draws')
    p.add_argument('--work', default='work_dirs/real_coco_levers', help='cache and heads')
    p.add_argument('--out', default='docs/figures/real_coco_levers.md', help='markdown table')
    return p.parse_args()


def view_pipeline(flip: bool) -> list:
    """The config's test view (resize to 416, pad to a square of 114), annotations loaded before
    resizing (so ground truth is in the network-input frame), optionally mirrored."""
    return [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
            dict(type='Resize', scale=(416, 416), keep_ratio=True), *([dict(type='RandomFlip', prob=1.0)] if flip else []),
            dict(type='Pad', pad_to_square=True, pad_val=dict(img=(114.0, 114.0, 114.0))),
            dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip'))]


def build_cache(cfg, path: Path) -> dict:
    """{False: [...], True: [...]} (plain and mirrored view) per train image in id order: neck
    features, ground truth, detections (network-input frame) and metainfo."""
    from mmengine.dataset import pseudo_collate
    from mmdet.registry import DATASETS, MODELS
    from ebm_det.models.refine_detector import capture_output
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    out = {}
    for flip in (False, True):
        ds_cfg = copy.deepcopy(cfg.val_dataloader.dataset)
        ds_cfg.update(ann_file='annotations/instances_train2017.json', data_prefix=dict(img='train2017/'),
                      pipeline=view_pipeline(flip), test_mode=True, data_root=f'{DATA}/')
        ds = DATASETS.build(ds_cfg)
        items = []
        for i in range(len(ds)):
            batch = model.data_preprocessor(pseudo_collate([ds[i]]), False)
            with torch.no_grad(), capture_output(model.detector.backbone.stage1) as stage1:
                results, feats = model.detect(batch['inputs'], batch['data_samples'], rescale=False, refine=False)
            s, p = batch['data_samples'][0], results[0].pred_instances
            items.append(dict(feats=tuple(f[0].clone() for f in feats), stage1=stage1[0][0].clone(), gt=torch.as_tensor(s.gt_instances.bboxes).clone(),
                              gt_labels=s.gt_instances.labels.clone(), det=p.bboxes.clone(), det_scores=p.scores.clone(),
                              det_labels=p.labels.clone(), meta=dict(s.metainfo)))
        order = sorted(range(len(items)), key=lambda i: items[i]['meta']['img_id'])
        out[flip] = [items[i] for i in order]
    torch.save(out, path)
    return out


def levels(item: dict, p2: bool) -> tuple:
    """One view's feature levels; with ``p2`` the backbone's stride-4 stage first, zero-padded to
    the neck's channels."""
    if not p2:
        return item['feats']
    s1 = item['stage1']
    pad = s1.new_zeros(item['feats'][0].shape[0] - s1.shape[0], *s1.shape[1:])
    return (torch.cat([s1, pad]), *item['feats'])


def stack(items: list, p2: bool = False) -> tuple:
    views = [levels(it, p2) for it in items]
    return tuple(torch.stack([v[lvl] for v in views]) for lvl in range(len(views[0])))


def train_head(head, cache: dict, num: int, args) -> float:
    """Adam 1e-4, batch 4, steps at 67% / 83%, each image mirrored with p = 0.5; the mean loss of
    the last 100 iterations."""
    opt = torch.optim.Adam(head.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(args.iters * .67), int(args.iters * .83)], 0.1)
    gen = torch.Generator().manual_seed(args.seed)
    head.train()
    losses = []
    for _ in range(args.iters):
        idx = torch.randint(num, (4, ), generator=gen).tolist()
        flips = (torch.rand(4, generator=gen) < 0.5).tolist()
        items = [cache[f][i] for i, f in zip(idx, flips)]
        loss = head.loss(stack(items, len(head.featmap_strides) == 4), [it['gt'] for it in items], [it['gt_labels'] for it in items])['loss_ebm']
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    head.eval()
    return sum(losses[-100:]) / len(losses[-100:])


def measure(head, items: list, steps: int) -> dict:
    """The sanity case and the detector's boxes, as the module docstring says."""
    from mmdet.structures.bbox import bbox_overlaps
    from mmengine.structures import InstanceData
    from ebm_det.core import RefineConfig
    from ebm_det.evaluation import best_overlaps
    from ebm_det.models.refine_detector import refine_instances
    cfg = RefineConfig.build(dict(num_steps=steps))
    lam = torch.tensor(head.codec.default_step_sizes)
    acc = {k: [] for k in ('j0', 'j1', 'cos', 'd0', 'd1', 'f_gt_above')}
    gen = torch.Generator().manual_seed(123)
    p2 = len(head.featmap_strides) == 4
    for it in items:
        feats = tuple(f[None] for f in levels(it, p2))
        gt, lab = it['gt'], it['gt_labels']
        keep = head.codec.valid(gt)
        gt, lab = gt[keep], lab[keep]
        if len(gt):  # sanity case: ground truth jittered by one draw of the training noise
            y0 = head.space.encode(gt, gt)
            comp = torch.randint(head.noise.sigmas.shape[0], (len(gt), ), generator=gen)
            jit = head.space.decode(y0 + torch.randn(y0.shape, generator=gen) * head.noise.sigmas[comp], gt)
            p = InstanceData(bboxes=jit, scores=torch.ones(len(jit)), labels=lab)
            refine_instances(head, feats, [p], [it['meta']], cfg)
            acc['j0'].append(bbox_overlaps(p.bboxes_init, gt, is_aligned=True))
            acc['j1'].append(bbox_overlaps(p.bboxes, gt, is_aligned=True))
            prepared = head.prepare_features(feats)
            zeros = torch.zeros(len(jit), dtype=torch.long)
            with torch.enable_grad():
                y = head.space.encode(jit, jit).requires_grad_(True)
                f = head.score(prepared, head.space.decode(y, jit), zeros, lab, **head.box_context(jit, zeros))
                grad, = torch.autograd.grad(f.sum(), y)
            acc['cos'].append(torch.nn.functional.cosine_similarity(grad * lam, head.space.encode(gt, jit) - y.detach(), 1))
        sel = it['det_scores'] >= 0.3
        det, dl = it['det'][sel], it['det_labels'][sel]
        if len(det) and len(it['gt']):
            best, j = best_overlaps(det, it['gt'], dl[:, None] == it['gt_labels'][None])
            m = best >= 0.5
            if m.any():
                det, dl, g = det[m], dl[m], it['gt'][j[m]]
                p = InstanceData(bboxes=det.clone(), scores=it['det_scores'][sel][m], labels=dl)
                refine_instances(head, feats, [p], [it['meta']], cfg)
                acc['d0'].append(bbox_overlaps(p.bboxes_init, g, is_aligned=True))
                acc['d1'].append(bbox_overlaps(p.bboxes, g, is_aligned=True))
                idx = torch.zeros(len(det), dtype=torch.long)
                f_det = head.score_boxes(feats, det, idx, dl)
                f_gt = head.score_boxes(feats, g, idx, dl, context_boxes=det)
                acc['f_gt_above'].append((f_gt > f_det).float())
    cat = {k: torch.cat(v) if v else torch.zeros(0) for k, v in acc.items()}
    return dict(jitter_iou=(cat['j0'].mean().item(), cat['j1'].mean().item()),
                jitter_closer=(cat['j1'] > cat['j0'] + 1e-6).float().mean().item(), cos=cat['cos'].mean().item(),
                det_iou=(cat['d0'].mean().item(), cat['d1'].mean().item()),
                det_away=(cat['d1'] < cat['d0'] - 1e-6).float().mean().item(), matched=len(cat['d0']),
                f_gt_above=cat['f_gt_above'].mean().item())


def lever_config(name: str) -> tuple:
    head, frac = {}, None
    for part in name.split('+'):
        if part not in LEVERS:
            raise SystemExit(f'unknown lever {part!r}: choose from {sorted(LEVERS)}')
        head.update(LEVERS[part][0])
        frac = LEVERS[part][1] or frac
    return head, frac


def main() -> None:
    args = parse_args()
    require_data()
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    import ebm_det  # noqa: F401
    register_all_modules()
    for name in args.levers:
        lever_config(name)  # a misspelt lever fails before the cache is built
    cfg = Config.fromfile(str(ROOT / CONFIG))
    cfg.model.detector_checkpoint = str(DATA / 'checkpoints' / 'yolox_nano_coco_mmdet.pth')
    work = ROOT / args.work
    work.mkdir(parents=True, exist_ok=True)
    path = work / 'cache.pt'
    cache = torch.load(path, weights_only=False) if path.exists() else None
    if cache is None or 'stage1' not in cache[False][0]:  # none yet, or from before the stride-4 lever
        cache = build_cache(cfg, path)
    n_train = len(cache[False]) - args.calib
    rows = []
    for name in args.levers:
        changes, frac = lever_config(name)
        result = work / f'{name}_it{args.iters}_s{args.seed}_calib{args.calib}_T{args.steps}.json'
        if not result.exists():
            torch.manual_seed(args.seed)
            head = MODELS.build({**cfg.model.ebm_head, **changes})
            head.init_weights()
            num = int(n_train * frac) if frac else n_train
            t = time.time()
            loss = train_head(head, cache, num, args)
            minutes = (time.time() - t) / 60
            torch.manual_seed(args.seed)
            out = dict(lever=name, head=changes, images=num, loss=loss, minutes=minutes,
                       train=measure(head, cache[False][:96], args.steps),
                       held=measure(head, cache[False][n_train:], args.steps))
            result.write_text(json.dumps(out))
            print(json.dumps(out), flush=True)
        rows.append(json.loads(result.read_text()))
    cmd = command_line('tools.benchmarks.real_coco_levers')
    lines = [f'Command: `{cmd.strip()}` ({args.iters} iterations of batch 4; T = {args.steps}; '
             f'held = the last {args.calib} train2017 images, which no head trains on)', '',
             '| lever | head change | train images | loss (last 100 it.) | minutes | split | jitter: IoU -> refined | '
             'closer | cos(step, to GT) | detector boxes: IoU -> refined | moved away | f(GT) > f(det) |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        for split in ('train', 'held'):
            s = r[split]
            lines.append(f"| {r['lever']} | `{json.dumps(r['head'])}` | {r['images']} | {r['loss']:.2f} | "
                         f"{r['minutes']:.1f} | {split} | {s['jitter_iou'][0]:.3f} -> {s['jitter_iou'][1]:.3f} | "
                         f"{100 * s['jitter_closer']:.0f}% | {s['cos']:.2f} | {s['det_iou'][0]:.3f} -> "
                         f"{s['det_iou'][1]:.3f} | {100 * s['det_away']:.0f}% of {s['matched']} | "
                         f"{100 * s['f_gt_above']:.0f}% |")
    write_report('\n'.join(lines) + '\n', args.out)


if __name__ == '__main__':
    main()
