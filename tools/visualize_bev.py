"""Bird's-eye view of one val frame: LiDAR points, GT boxes, and an EBM refine detector's boxes
before (the detector's, ``bboxes_3d_init``) and after refinement (``bboxes_3d``).

Drawn with matplotlib (mmdet3d's visualiser needs open3d). Left: the whole point-cloud range;
right: a zoom on the detection that refinement moved the most.

    python tools/visualize_bev.py CONFIG CHECKPOINT [--frame 0] [--score-thr 0.3] \\
        [--data-root data/kitti_gen] [--out docs/figures/kitti_3d_bev.png] [--cfg-options k=v ...]

e.g. with the benchmark's checkpoint:

    python tools/visualize_bev.py configs/pointpillars_ebm-nce_kitti-gen_car.py \\
        work_dirs/kitti_3d_benchmark/ebm_absolute/iter_500.pth --cfg-options model.test_cfg.step_sizes=2e-3
"""
import argparse
import os
import os.path as osp
import sys

import numpy as np
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import ebm_det  # noqa: E402,F401


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--frame', type=int, default=0, help='index in the val (test) dataset')
    p.add_argument('--score-thr', type=float, default=0.3, help='draw detections scoring at least this')
    p.add_argument('--data-root', help='override the dataset root (and the evaluator\'s ann_file)')
    p.add_argument('--out', default=osp.join(ROOT, 'docs', 'figures', 'kitti_3d_bev.png'))
    p.add_argument('--zoom', type=float, default=12.0, help='side of the zoomed panel in metres (0: none)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args(argv)


def bev_corners(boxes) -> np.ndarray:
    """(N, 4, 2) BEV footprint corners of mmdet3d LiDAR boxes, in drawing order."""
    corners = boxes.corners.numpy()  # (N, 8, 3), see mmdet3d BaseInstance3DBoxes.corners
    return corners[:, [0, 3, 7, 4], :2]


def draw_boxes(ax, boxes, color, label, style='-', width=1.4):
    if len(boxes) == 0:
        return
    t = boxes.tensor.numpy()
    for k, quad in enumerate(bev_corners(boxes)):
        closed = np.concatenate([quad, quad[:1]])
        ax.plot(closed[:, 0], closed[:, 1], style, color=color, lw=width, label=label if k == 0 else None)
        # heading: centre -> middle of the front edge
        x, y, l, yaw = t[k, 0], t[k, 1], t[k, 3], t[k, 6]
        ax.plot([x, x + 0.5 * l * np.cos(yaw)], [y, y + 0.5 * l * np.sin(yaw)], style, color=color, lw=width)


def predict_frame(cfg, checkpoint: str, frame: int):
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    from mmdet3d.registry import DATASETS, MODELS
    init_default_scope(cfg.get('default_scope', 'mmdet3d'))
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    model = MODELS.build(cfg.model)
    load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
    model.eval()
    item = dataset[frame]
    with torch.no_grad():
        out = model.test_step(pseudo_collate([item]))[0]
    info = dataset.get_data_info(frame)
    gt = info['eval_ann_info']['gt_bboxes_3d']
    return item['inputs']['points'].numpy(), gt, out.pred_instances_3d, info


def main(argv=None) -> None:
    args = parse_args(argv)
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.data_root:
        root = args.data_root.rstrip('/') + '/'
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            cfg[loader].dataset.data_root = root
    points, gt, pred, info = predict_frame(cfg, args.checkpoint, args.frame)
    keep = pred.scores_3d >= args.score_thr
    before, after = pred.bboxes_3d_init[keep], pred.bboxes_3d[keep]
    pcr = cfg.get('point_cloud_range', [0, -20, -3, 40, 20, 1])

    panels = [('whole frame', (pcr[0], pcr[3], pcr[1], pcr[4]))]
    if args.zoom > 0 and len(after):
        moved = (after.tensor[:, :2] - before.tensor[:, :2]).norm(dim=1)
        k = int(moved.argmax())
        cx, cy = after.tensor[k, :2].tolist()
        h = args.zoom / 2
        panels.append((f'zoom: largest refinement move ({moved[k].item() * 100:.0f} cm)',
                       (cx - h, cx + h, cy - h, cy + h)))
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 7.5), squeeze=False)
    for ax, (title, (x0, x1, y0, y1)) in zip(axes[0], panels):
        sel = (points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)
        # road returns (within 20 cm of the lowest decile, ~ the ground) light, the rest black
        ground = points[:, 2] < np.percentile(points[:, 2], 10) + 0.2
        size = 1.0 if title == 'whole frame' else 4.0
        for mask, color in ((sel & ground, '0.78'), (sel & ~ground, 'k')):
            ax.scatter(points[mask, 0], points[mask, 1], s=size, c=color, linewidths=0)
        draw_boxes(ax, gt, 'tab:green', 'ground truth', width=2.2)
        draw_boxes(ax, before, 'tab:red', 'detector (before)', style='--')
        draw_boxes(ax, after, 'tab:blue', 'EBM refined (after)')
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_aspect('equal')
        ax.set_xlabel('x (m, forward)')
        ax.set_ylabel('y (m, left)')
        ax.set_title(title)
        ax.set_facecolor('0.97')
        ax.legend(loc='upper right', fontsize=8)
    fig.suptitle(f'val frame {info["sample_idx"]}: {len(gt)} GT, {len(after)} detections with score >= '
                 f'{args.score_thr:g}')
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
