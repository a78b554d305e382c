"""Pictures of 2D EBM refinement: GT, the detector's boxes (``bboxes_init``) and the refined boxes
(``bboxes``) on the first N images, and a heat map of f(x, y) around one detection.

Per image, ``<out-dir>/refine_<img_id>.png`` (drawn with mmdet's ``DetLocalVisualizer``): GT in
green, the detector's boxes in red (dashed), the EBM-refined boxes in blue, detections scoring at
least ``--score-thr``. For the first image, ``<out-dir>/heatmap_<img_id>.png``: f around its K-th
highest-scoring detection (``--heatmap-box K``, 0 = the best; any score) in the refinement's box
space (cx / w0, cy / h0, log w, log h), 41 x 41 points per panel: left, centre shifts dx, dy in
[-0.3, 0.3] box sizes at fixed size; right, log-size changes in [-0.3, 0.3] at fixed centre.
x marks the detector's box, o the refined box (its coordinates in the panel's two dimensions).

    python tools/visualize_refinement.py CONFIG CHECKPOINT [--images 4] [--split val] \\
        [--score-thr 0.3] [--out-dir work_dirs/vis] [--heatmap-box 0] [--device cpu] [--zoom 1] \\
        [--cfg-options k=v ...]

e.g. with the demo's checkpoint (``make demo``):

    python tools/visualize_refinement.py configs/faster-rcnn_r18_fpn_ebm-nceplus_shapes.py \\
        "$(cat work_dirs/demo/ebm/last_checkpoint)" --images 4 --out-dir work_dirs/vis
"""
import argparse
import os
import os.path as osp

import numpy as np
import torch

import ebm_det  # noqa: F401  (registers the modules; weights-only checkpoint loading)

COLORS = dict(gt=(0, 200, 0), init=(230, 30, 30), refined=(30, 110, 255))  # RGB
LEGEND = (('GT', 'gt'), ('detector', 'init'), ('EBM refined', 'refined'))
HEATMAP_FIGSIZE = (11, 4.6)  # inches; saved at HEATMAP_DPI, so (460, 1100) pixels
HEATMAP_DPI = 100
SPAN = 0.3
STEPS = 41
PANELS = dict(shift=(0, 1), scale=(2, 3))  # dimensions of the box space each panel varies


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='the 2D EBM refine detector config (an mmengine .py config)')
    p.add_argument('checkpoint', help='checkpoint (.pth) to load')
    p.add_argument('--images', type=int, default=4, help='draw the first N images of the split')
    p.add_argument('--split', choices=['val', 'test'], default='val', help='which dataloader of the config')
    p.add_argument('--score-thr', type=float, default=0.3, help='draw detections scoring at least this')
    p.add_argument('--out-dir', default=osp.join('work_dirs', 'vis'),
                   help='folder for the pictures (refine_<img_id>.png, heatmap_<img_id>.png)')
    p.add_argument('--heatmap-box', type=int, default=0,
                   help='heat map around the K-th highest-scoring detection of the first image (0 = best; a '
                   'ValueError, once the image is detected, if it has K or fewer detections)')
    p.add_argument('--device', default='cpu', help="where the model runs ('cpu', 'cuda:0')")
    p.add_argument('--zoom', type=int, default=1,
                   help='draw the pictures at this many times the image size (nearest-neighbour), for small images')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys (key=value ...)')
    args = p.parse_args(argv)
    for name, least in (('images', 1), ('zoom', 1), ('heatmap_box', 0)):
        if getattr(args, name) < least:  # usage + exit status 2
            p.error(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(args, name)}")
    return args


def build_model(cfg, checkpoint: str, device: str = 'cpu'):
    """The config's model with the checkpoint's weights, in eval mode, on ``device``: mmdet's
    ``init_detector`` (mmengine's ``load_checkpoint`` under torch's weights-only unpickler as
    extended by ``ebm_det.checkpoint``); the EBM wrapper refuses a checkpoint that does not fit
    it (RuntimeError), so no picture is drawn with random weights."""
    from mmdet.apis import init_detector
    return init_detector(cfg, checkpoint, device=device)


def detect_batches(model, cfg, split: str, num_images: int):
    """Yield (results, feats) for the batches of ``<split>_dataloader`` holding its first
    ``num_images`` images: results as ``model.test_step`` gives them (refined, original-image
    pixels), feats the neck's features of the batch from the same pass (``model.detect``)."""
    from mmengine.runner import Runner
    loader = Runner.build_dataloader(cfg[f'{split}_dataloader'])
    seen = 0
    for batch in loader:
        with torch.no_grad():  # as the Runner's TestLoop; refinement enables its own gradients
            data = model.data_preprocessor(batch, False)
            results, feats = model.detect(data['inputs'], data['data_samples'])
        yield results[:num_images - seen], feats
        seen += len(results)
        if seen >= num_images:
            break


def draw_refinement(image: np.ndarray, gt: np.ndarray, init: np.ndarray, refined: np.ndarray) -> np.ndarray:
    """RGB image with the three box sets (x1, y1, x2, y2 in its pixels) and a legend; RGB out."""
    from mmdet.visualization import DetLocalVisualizer
    vis = DetLocalVisualizer(name='visualize_refinement')
    vis.set_image(image)
    width = max(1, round(max(image.shape[:2]) / 256))
    for key, boxes, style in (('gt', gt, '-'), ('init', init, '--'), ('refined', refined, '-')):
        if len(boxes):
            vis.draw_bboxes(boxes, edge_colors=COLORS[key], line_styles=style, line_widths=width, alpha=0.9)
    size = max(7, round(max(image.shape[:2]) / 32))
    positions = np.array([[3, 3 + i * (size + 4)] for i in range(len(LEGEND))])
    vis.draw_texts([t for t, _ in LEGEND], positions, font_sizes=size, colors=[COLORS[k] for _, k in LEGEND],
                   bboxes=dict(facecolor='black', alpha=0.6, pad=0.7, edgecolor='none'))
    return vis.get_image()


def score_grid(ebm_head, feats, box: torch.Tensor, label: int, dims=(0, 1), span: float = SPAN,
               steps: int = STEPS, batch_idx: int = 0):
    """f on a steps x steps grid around ``box`` in the refinement's box space.

    Args:
        ebm_head: an ``EBMBoxHead``.
        feats: the neck's features of the batch (raw; ``prepare_features`` is applied here).
        box: (4,) the box in network-input pixels, image ``batch_idx`` of the batch.
        dims: the two coordinates of (cx / w0, cy / h0, log w, log h) that vary: (0, 1) centre
            shifts in box sizes, (2, 3) log-size changes; the other two stay at the box's.
        span, steps: offsets ``span * linspace(-1, 1, steps)`` (steps odd: the middle one is
            exactly 0, i.e. the box itself).
    Returns:
        (grid (steps, steps), offsets (steps,)): grid[i, j] = f at offset offsets[j] in dims[0]
        and offsets[i] in dims[1]. The box's FPN level stays fixed, as in refinement; one
        batched ``score`` call.
    """
    assert steps % 2 == 1, 'an odd number of steps puts the box itself at the centre'
    space = ebm_head.space
    box = box.float().reshape(1, 4)
    offsets = torch.arange(steps, device=box.device, dtype=box.dtype).sub((steps - 1) / 2).mul(2 * span / (steps - 1))
    rows, cols = torch.meshgrid(offsets, offsets, indexing='ij')
    y = space.encode(box, box).repeat(steps * steps, 1)
    y[:, dims[0]] += cols.reshape(-1)
    y[:, dims[1]] += rows.reshape(-1)
    boxes = space.decode(y, box)
    n = len(boxes)
    with torch.no_grad():
        feats = ebm_head.prepare_features(feats)
        levels = ebm_head.map_levels(box).expand(n)
        scores = ebm_head.score(feats, boxes, box.new_full((n, ), batch_idx, dtype=torch.long),
                                box.new_full((n, ), label, dtype=torch.long), levels=levels)
    return scores.reshape(steps, steps), offsets


def heatmap_data(model, feats, result, k: int) -> dict:
    """Both panels' grids around the k-th highest-scoring detection of the batch's first image
    (``result``), on ``feats``, the batch's features from the same ``model.detect`` pass."""
    pred = result.pred_instances
    if 'bboxes_init' not in pred:
        raise ValueError('no bboxes_init in the predictions: the model must be an EBMRefineDetector '
                         'with refinement enabled')
    if k >= len(pred):
        raise ValueError(f'--heatmap-box {k}: the first image has only {len(pred)} detections')
    idx = int(pred.scores.argsort(descending=True)[k])
    factor = pred.bboxes.new_tensor(result.metainfo['scale_factor']).repeat(2)  # original -> input pixels
    box, refined = pred.bboxes_init[idx] * factor, pred.bboxes[idx] * factor
    out = dict(box=box, refined=refined, label=int(pred.labels[idx]), score=float(pred.scores[idx]),
               ebm_score=float(pred.ebm_scores[idx]))
    for name, dims in PANELS.items():
        out[name], out['offsets'] = score_grid(model.ebm_head, feats, box, out['label'], dims)
    # the refined box in the box space, relative to the detector's: where to mark it
    space = model.ebm_head.space
    out['refined_offset'] = (space.encode(refined[None], box[None]) - space.encode(box[None], box[None]))[0]
    return out


def plot_heatmap(hm: dict, title: str, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=HEATMAP_FIGSIZE)
    offsets = hm['offsets'].tolist()
    s = offsets[-1] + (offsets[1] - offsets[0]) / 2  # outer edges of the grid's cells
    labels = dict(shift=('dx / w0 (centre shift)', 'dy / h0 (centre shift)', 'centre shifts at fixed size'),
                  scale=('log(w / w0)', 'log(h / h0)', 'size changes at fixed centre'))
    for ax, (name, dims) in zip(axes, PANELS.items()):
        grid = hm[name].cpu().numpy()
        im = ax.imshow(grid, origin='lower', extent=(-s, s, -s, s), cmap='viridis', interpolation='nearest')
        fig.colorbar(im, ax=ax, label='f(x, y)')
        rx, ry = hm['refined_offset'][list(dims)].tolist()
        centre = grid[grid.shape[0] // 2, grid.shape[1] // 2]
        ax.plot([0], [0], 'x', color='white', ms=11, mew=2.5, label=f'detector box, f = {centre:.3f}')
        ax.plot([rx], [ry], 'o', mfc='none', mec='red', ms=10, mew=2, label='EBM refined box')
        ax.annotate('', xy=(rx, ry), xytext=(0, 0), arrowprops=dict(arrowstyle='->', color='red', lw=1.2))
        ax.set_xlim(-s, s)
        ax.set_ylim(-s, s)
        if name == 'shift':
            ax.invert_yaxis()  # image orientation: +dy is down
        ax.set_xlabel(labels[name][0])
        ax.set_ylabel(labels[name][1])
        ax.set_title(labels[name][2])
        ax.legend(loc='upper right', fontsize=8, framealpha=0.8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=HEATMAP_DPI)
    plt.close(fig)


def image_id(result) -> str:
    """The image's id, or its file name without extension."""
    return str(result.metainfo.get('img_id', osp.splitext(osp.basename(result.img_path))[0]))


def write_heatmap(hm: dict, result, heatmap_box: int, classes, out_dir: str) -> str:
    """``<out_dir>/heatmap_<img_id>.png`` of ``heatmap_data``'s output; returns its path."""
    cls = classes[hm['label']] if classes else hm['label']
    title = (f'image {image_id(result)}: f around detection #{heatmap_box} ({cls}, score {hm["score"]:.2f}); '
             f'f at the refined box {hm["ebm_score"]:.3f}')
    path = osp.join(out_dir, f'heatmap_{image_id(result)}.png')
    plot_heatmap(hm, title, path)
    return path


def write_picture(result, score_thr: float, out_dir: str, zoom: int = 1) -> str:
    """``<out_dir>/refine_<img_id>.png``: the original image (enlarged ``zoom`` times,
    nearest-neighbour) with GT, the detector's and the refined boxes of the detections scoring at
    least ``score_thr``; returns its path."""
    import mmcv
    from mmdet.structures.bbox import get_box_tensor
    pred = result.pred_instances
    keep = (pred.scores >= score_thr).cpu()
    # GT in original-image pixels: mmdet's test pipelines load annotations after Resize
    gt = get_box_tensor(result.gt_instances.bboxes).cpu() if 'gt_instances' in result else np.zeros((0, 4))
    image = mmcv.imread(result.img_path, channel_order='rgb')
    if zoom != 1:
        image = mmcv.imrescale(image, zoom, interpolation='nearest')
    drawn = draw_refinement(image, gt * zoom, pred.bboxes_init.cpu()[keep] * zoom, pred.bboxes.cpu()[keep] * zoom)
    path = osp.join(out_dir, f'refine_{image_id(result)}.png')
    mmcv.imwrite(mmcv.rgb2bgr(drawn), path)
    return path


def main(argv=None) -> dict:
    """Writes the pictures and returns {'paths': [...], 'heatmap': heatmap_data(...)}."""
    args = parse_args(argv)
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)  # imports the config's custom_imports
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = build_model(cfg, args.checkpoint, args.device)
    classes = (cfg[f'{args.split}_dataloader'].dataset.get('metainfo') or {}).get('classes')
    os.makedirs(args.out_dir, exist_ok=True)
    paths, hm = [], None
    for results, feats in detect_batches(model, cfg, args.split, args.images):
        if hm is None:
            hm = heatmap_data(model, feats, results[0], args.heatmap_box)
            paths.append(write_heatmap(hm, results[0], args.heatmap_box, classes, args.out_dir))
        paths += [write_picture(r, args.score_thr, args.out_dir, args.zoom) for r in results]
    for path in paths:
        print(f'wrote {path}')
    return dict(paths=paths, heatmap=hm)


if __name__ == '__main__':
    main()
