"""Bird's-eye view of one val frame: LiDAR points, GT boxes, and an EBM refine detector's boxes
before (the detector's, ``bboxes_3d_init``) and after refinement (``bboxes_3d``).

Drawn with matplotlib (mmdet3d's visualiser needs open3d). Left: the whole point-cloud range;
right: a zoom on the detection that refinement moved the most. The model is loaded with
``mmdet3d.apis.init_model`` and predicts the frame as the test loop does (the config's test
dataset and ``model.test_step``); the GT boxes come from the dataset's info of that frame.

    python tools/visualize_bev.py CONFIG CHECKPOINT [--frame 0] [--score-thr 0.3] \\
        [--data-root data/kitti_gen] [--out docs/figures/kitti_3d_bev.png] [--cfg-options k=v ...]

e.g. with the benchmark's checkpoint:

    python tools/visualize_bev.py configs/pointpillars_ebm-nce_kitti-gen_car.py \\
        work_dirs/kitti_3d_benchmark/ebm_absolute/iter_500.pth --cfg-options model.test_cfg.step_sizes=2e-3
"""
import argparse
import os
import os.path as osp
from typing import List, Tuple

import numpy as np
import torch

import ebm_det  # noqa: F401  (registers the modules)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEVICE = 'cpu'
DEFAULT_RANGE = (0, -20, -3, 40, 20, 1)  # (x, y, z min, x, y, z max) when the config has no point_cloud_range
PANEL_INCHES = 7.5  # each panel is square
DPI = 110
# road returns (within 20 cm of the lowest decile of z, ~ the ground) are drawn light, the rest black
GROUND_PERCENTILE, GROUND_MARGIN = 10, 0.2
GROUND_COLOR, POINT_COLOR = '0.78', 'k'
POINT_SIZE, ZOOM_POINT_SIZE = 1.0, 4.0
BACKGROUND = '0.97'
# (colour, legend label, line style, line width) of each box set
GT_STYLE = ('tab:green', 'ground truth', '-', 2.2)
BEFORE_STYLE = ('tab:red', 'detector (before)', '--', 1.4)
AFTER_STYLE = ('tab:blue', 'EBM refined (after)', '-', 1.4)

Extent = Tuple[float, float, float, float]  # x0, x1, y0, y1 in metres


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='the 3D EBM refine detector config (an mmengine .py config)')
    p.add_argument('checkpoint', help='checkpoint (.pth) to load')
    p.add_argument('--frame', type=int, default=0, help='index in the val (test) dataset')
    p.add_argument('--score-thr', type=float, default=0.3, help='draw detections scoring at least this')
    p.add_argument('--data-root', help='override the dataset root')
    p.add_argument('--out', default=osp.join(ROOT, 'docs', 'figures', 'kitti_3d_bev.png'), help='the PNG to write')
    p.add_argument('--zoom', type=float, default=12.0, help='side of the zoomed panel in metres (0: none)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys (key=value ...)')
    return p.parse_args(argv)


def load_config(args: argparse.Namespace):
    """The config with ``--cfg-options`` merged and every loader pointed at ``--data-root``."""
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.data_root:
        root = args.data_root.rstrip('/') + '/'
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            cfg[loader].dataset.data_root = root
    return cfg


def predict_frame(cfg, checkpoint: str, frame: int):
    """The model's prediction of test frame ``frame``: (points (P, >= 3) numpy, GT LiDAR boxes,
    ``pred_instances_3d``, the frame's data info)."""
    from mmdet3d.apis import init_model
    from mmdet3d.registry import DATASETS
    from mmengine.dataset import pseudo_collate
    model = init_model(cfg, checkpoint, device=DEVICE)  # also sets the default scope to the config's
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    item = dataset[frame]
    with torch.no_grad():
        out = model.test_step(pseudo_collate([item]))[0]
    info = dataset.get_data_info(frame)
    return item['inputs']['points'].numpy(), info['eval_ann_info']['gt_bboxes_3d'], out.pred_instances_3d, info


def bev_corners(boxes) -> np.ndarray:
    """(N, 4, 2) BEV footprint corners of mmdet3d LiDAR boxes, in drawing order."""
    corners = boxes.corners.numpy()  # (N, 8, 3), see mmdet3d BaseInstance3DBoxes.corners
    return corners[:, [0, 3, 7, 4], :2]


def draw_boxes(ax, boxes, style: Tuple[str, str, str, float]) -> None:
    """Footprints and headings (centre -> middle of the front edge) of LiDAR ``boxes``."""
    color, label, line, width = style
    if len(boxes) == 0:
        return
    t = boxes.tensor.numpy()
    for k, quad in enumerate(bev_corners(boxes)):
        closed = np.concatenate([quad, quad[:1]])
        ax.plot(closed[:, 0], closed[:, 1], line, color=color, lw=width, label=label if k == 0 else None)
        x, y, length, yaw = t[k, 0], t[k, 1], t[k, 3], t[k, 6]
        ax.plot([x, x + 0.5 * length * np.cos(yaw)], [y, y + 0.5 * length * np.sin(yaw)], line, color=color,
                lw=width)


def panels(before, after, point_cloud_range, zoom: float) -> List[Tuple[str, Extent]]:
    """(title, extent) of each panel: the whole range, then (``zoom`` > 0 and any detection) a
    ``zoom``-metre square on the detection whose BEV centre refinement moved the most."""
    pcr = point_cloud_range
    out = [('whole frame', (pcr[0], pcr[3], pcr[1], pcr[4]))]
    if zoom > 0 and len(after):
        moved = (after.tensor[:, :2] - before.tensor[:, :2]).norm(dim=1)
        k = int(moved.argmax())
        cx, cy = after.tensor[k, :2].tolist()
        h = zoom / 2
        title = f'zoom: largest refinement move ({moved[k].item() * 100:.0f} cm)'
        out.append((title, (cx - h, cx + h, cy - h, cy + h)))
    return out


def draw_points(ax, points: np.ndarray, extent: Extent, size: float) -> None:
    """The points inside ``extent``, ground returns light."""
    x0, x1, y0, y1 = extent
    inside = (points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)
    ground = points[:, 2] < np.percentile(points[:, 2], GROUND_PERCENTILE) + GROUND_MARGIN
    for mask, color in ((inside & ground, GROUND_COLOR), (inside & ~ground, POINT_COLOR)):
        ax.scatter(points[mask, 0], points[mask, 1], s=size, c=color, linewidths=0)


def draw_panel(ax, title: str, extent: Extent, size: float, points: np.ndarray, gt, before, after) -> None:
    draw_points(ax, points, extent, size)
    draw_boxes(ax, gt, GT_STYLE)
    draw_boxes(ax, before, BEFORE_STYLE)
    draw_boxes(ax, after, AFTER_STYLE)
    x0, x1, y0, y1 = extent
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect('equal')
    ax.set_xlabel('x (m, forward)')
    ax.set_ylabel('y (m, left)')
    ax.set_title(title)
    ax.set_facecolor(BACKGROUND)
    ax.legend(loc='upper right', fontsize=8)


def main(argv=None) -> str:
    args = parse_args(argv)
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    cfg = load_config(args)
    points, gt, pred, info = predict_frame(cfg, args.checkpoint, args.frame)
    keep = pred.scores_3d >= args.score_thr
    before, after = pred.bboxes_3d_init[keep], pred.bboxes_3d[keep]
    views = panels(before, after, cfg.get('point_cloud_range', DEFAULT_RANGE), args.zoom)
    fig, axes = plt.subplots(1, len(views), figsize=(PANEL_INCHES * len(views), PANEL_INCHES), squeeze=False)
    for k, (ax, (title, extent)) in enumerate(zip(axes[0], views)):
        draw_panel(ax, title, extent, POINT_SIZE if k == 0 else ZOOM_POINT_SIZE, points, gt, before, after)
    fig.suptitle(f'val frame {info["sample_idx"]}: {len(gt)} GT, {len(after)} detections with score >= '
                 f'{args.score_thr:g}')
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=DPI, bbox_inches='tight')  # tight_layout alone clipped the x-axis label
    print(f'wrote {args.out}')
    return args.out


if __name__ == '__main__':
    main()
