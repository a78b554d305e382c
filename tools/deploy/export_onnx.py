"""Export an EBM detector's refinement as an ONNX graph (run it with onnxruntime beside the detector).

    python tools/deploy/export_onnx.py CONFIG CHECKPOINT --out refine.onnx [--opset 18] [--no-check]
        [--device cpu] [--check-ap] [--cfg-options k=v ...]

The graph is ``ebm_det.deploy.StaticBoxRefiner`` on the checkpoint's ``EBMBoxHead`` (a 2D
``EBMRefineDetector`` config, loaded by mmdet's ``init_detector``), or ``StaticBoxRefiner3D`` on
its ``EBMBoxHead3D`` (an ``EBMRefineDetector3D`` config, loaded by mmdet3d's ``init_model``), with
the config's ``test_cfg`` (T, step sizes, decay, tol, score_thr, max_per_img, min_gain baked in).
2D:

    inputs   feat_0 .. feat_{L-1}  (B, C, H_l, W_l) float32: the neck's first L levels (L = the
                                   head's featmap_strides), as the detector computed them
             boxes                 (N, 4) float32 x1, y1, x2, y2 in network-input pixels (before
                                   rescaling to the original image)
             scores                (N,) float32 detection scores
             labels, batch_idx     (N,) int64: class and image of each box
             img_shapes            (B, 2) int64 (h, w) of each network input (metainfo img_shape)
    outputs  refined_boxes (N, 4), ebm_scores (N,) (-inf: not refined), ebm_init_scores (N,),
             refined (N,) bool

3D (LiDAR boxes on the BEV map):

    inputs   feat_0 .. feat_{L-1}  (B, C_l, H, W) float32: the neck's BEV levels of B frames
                                   (concatenated along channels by the graph, as the head does)
             boxes                 (N, 7) float32 x, y, z, l, w, h, yaw (metres, radians)
             scores                (N,) float32 detection scores
             labels, batch_idx     (N,) int64: class and frame of each box
    outputs  refined_boxes (N, 7) (yaw in [-pi, pi)), ebm_scores (N,), ebm_init_scores (N,), refined (N,)

B, N and the map sizes are dynamic. With the check (default) the graph runs once in onnxruntime
(CPU) on random inputs of another batch size, box count and map size than the traced ones, and the
tool prints the largest difference to PyTorch's static loop and eager refinement
(``ebm_det.core.refine_boxes``). ``EBMBoxHead(pooling='prroi')`` does not export (PrRoIPool's box
gradient is autograd-only); ``--check-ap`` is 2D only. docs/user_guides/deploy.md says how to deploy.
"""
import argparse
import os
import json
import os.path as osp

import torch

import ebm_det  # noqa: F401  (registers the modules; weights-only checkpoint loading)


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='the EBM refine detector config (EBMRefineDetector or EBMRefineDetector3D)')
    p.add_argument('checkpoint', help='its checkpoint (.pth)')
    p.add_argument('--out', default='refine.onnx', help='the ONNX file to write')
    p.add_argument('--opset', type=int, default=18, help='ONNX opset (>= 17)')
    p.add_argument('--device', default='cpu', help='where the model is traced')
    p.add_argument('--no-check', action='store_true', help='skip the onnxruntime run against PyTorch')
    p.add_argument('--check-ap', action='store_true',
                   help="also refine the config's test set by the eager path and by the graph in onnxruntime "
                   '(one detector pass) and print both COCO APs')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys (key=value ...)')
    args = p.parse_args(argv)
    if args.opset < 17:
        p.error(f'--opset must be at least 17, got {args.opset}')
    return args


def is_3d(cfg) -> bool:
    """Whether the config's EBM head is an ``EBMBoxHead3D`` (an mmdet3d model)."""
    return (cfg.model.get('ebm_head') or {}).get('type') == 'EBMBoxHead3D'


def build_refiner(config, checkpoint: str, device: str = 'cpu', cfg_options=None):
    """The config's ``EBMRefineDetector`` (mmdet's ``init_detector``) or ``EBMRefineDetector3D``
    (mmdet3d's ``init_model``) with the checkpoint's weights -> ``static_refiner_for(model.ebm_head,
    model.refine_cfg)`` (``StaticBoxRefiner`` / ``StaticBoxRefiner3D``) in eval mode."""
    from mmengine.config import Config

    from ebm_det.deploy import static_refiner_for
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if is_3d(cfg):
        from mmdet3d.apis import init_model
        model = init_model(cfg, checkpoint, device=device)
    else:
        from mmdet.apis import init_detector
        model = init_detector(cfg, checkpoint, device=device)
    if not hasattr(model, 'ebm_head'):
        raise ValueError(f'{type(model).__name__} has no ebm_head: export_onnx exports an EBMRefineDetector(3D)')
    return static_refiner_for(model.ebm_head, model.refine_cfg).eval()


def check_with_onnxruntime(refiner, path: str, num_images: int = 3, boxes_per_image: int = 7) -> dict:
    """Run ``path`` in onnxruntime (CPU) on random inputs; the largest differences to the PyTorch
    static loop and to the eager ``refine_boxes``, and whether the ``refined`` flags agree."""
    import onnxruntime as ort

    from ebm_det.deploy import StaticBoxRefiner3D
    from ebm_det.deploy.refiner import feed_names
    refiner = refiner.cpu()
    # another image (2D) or BEV map (3D) size than the traced example's
    size = (48, 96) if isinstance(refiner, StaticBoxRefiner3D) else (160, 224)
    inputs = refiner.example_inputs(num_images, boxes_per_image, image_size=size, seed=1)
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    feed = dict(zip(feed_names(refiner, inputs), (t.numpy() for t in list(inputs[0]) + list(inputs[1:]))))
    got = [torch.from_numpy(o) for o in session.run(None, feed)]
    boxes = inputs[1]
    with torch.no_grad():
        static = refiner(*inputs)
        eager = refiner.eager(*inputs)
    report = {}
    for name, ref in (('static', static), ('eager', eager)):
        report[f'max_box_diff_vs_{name}'] = float((got[0] - ref[0]).abs().max())
        finite = torch.isfinite(ref[1])
        report[f'max_ebm_score_diff_vs_{name}'] = float((got[1][finite] - ref[1][finite]).abs().max()) \
            if finite.any() else 0.0
        report[f'refined_equal_{name}'] = bool(torch.equal(got[3], ref[3]))
    report['boxes'], report['refined'] = len(boxes), int(got[3].sum())
    return report


def check_ap(config, checkpoint: str, path: str, cfg_options=None) -> dict:
    """COCO AP of the config's test set refined by the eager path (``EBMRefineDetector.refine``)
    and by the ONNX graph in onnxruntime (CPU), from the same detector pass per batch (the
    config's own test dataloader and evaluator; rescaled as ``EBMRefineDetector.rescale``)."""
    import copy

    import onnxruntime as ort
    from mmdet.apis import init_detector
    from mmengine.config import Config
    from mmengine.evaluator import Evaluator
    from mmengine.runner import Runner
    from mmengine.structures import InstanceData
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    model = init_detector(cfg, checkpoint, device='cpu')
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    levels = len(model.ebm_head.featmap_strides)
    loader = Runner.build_dataloader(cfg.test_dataloader)
    # the stack's own metric (the first of an EBM config's list): the refined boxes of each path
    metric = cfg.test_evaluator[0] if isinstance(cfg.test_evaluator, (list, tuple)) else cfg.test_evaluator
    evaluators = {k: Evaluator(copy.deepcopy(metric)) for k in ('eager', 'onnxruntime')}
    for ev in evaluators.values():
        ev.dataset_meta = loader.dataset.metainfo
    diffs = []
    for batch in loader:
        data = model.data_preprocessor(batch, False)
        with torch.no_grad():
            results, feats = model.detect(data['inputs'], data['data_samples'], rescale=False, refine=False)
        onnx_results = copy.deepcopy(results)  # DetDataSample.clone shares its pred_instances
        model.refine(feats, results)
        preds = [r.pred_instances for r in onnx_results]
        counts = [len(p) for p in preds]
        feed = {f'feat_{i}': feats[i].numpy() for i in range(levels)}
        feed.update(boxes=torch.cat([p.bboxes for p in preds]).float().numpy(),
                    scores=torch.cat([p.scores for p in preds]).float().numpy(),
                    labels=torch.cat([p.labels for p in preds]).long().numpy(),
                    batch_idx=torch.repeat_interleave(torch.arange(len(preds)), torch.tensor(counts)).numpy(),
                    img_shapes=torch.tensor([r.metainfo['img_shape'][:2] for r in onnx_results]).numpy())
        boxes, ebm, ebm0, _ = (torch.from_numpy(o) for o in session.run(None, feed))
        for r, p, b, e, e0 in zip(onnx_results, preds, boxes.split(counts), ebm.split(counts), ebm0.split(counts)):
            r.pred_instances = InstanceData(bboxes=b.to(p.bboxes), scores=p.scores, labels=p.labels,
                                            bboxes_init=p.bboxes, scores_init=p.scores, ebm_scores=e,
                                            ebm_init_scores=e0)
        for r, o in zip(results, onnx_results):
            d = (r.pred_instances.bboxes - o.pred_instances.bboxes).abs().amax(-1) if len(r.pred_instances) else \
                torch.zeros(0)
            diffs.append(d)
        for name, res in (('eager', results), ('onnxruntime', onnx_results)):
            model.rescale(res)
            evaluators[name].process(data_samples=res, data_batch=batch)
    d = torch.cat(diffs)
    out = {name: ev.evaluate(len(loader.dataset)) for name, ev in evaluators.items()}
    out['boxes'] = dict(count=float(len(d)), max_diff_px=float(d.max()) if len(d) else 0.0,
                        over_0_01_px=float((d > 0.01).sum()))
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    from ebm_det.deploy import export_onnx
    if not args.checkpoint or not os.path.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint {args.checkpoint!r} not found: give a trained EBM checkpoint of the config '
                         '(make demo writes work_dirs/demo/ebm/last_checkpoint, which names it)')
    try:
        refiner = build_refiner(args.config, args.checkpoint, args.device, args.cfg_options)
    except NotImplementedError as err:  # a head the static path does not cover (PrRoIPool)
        raise SystemExit(f'cannot export this head: {err}') from err
    if args.check_ap and hasattr(refiner.head, 'bev_range'):
        raise SystemExit('--check-ap scores 2D configs (COCO AP); for a 3D config drop it, and compare the eager '
                         'and exported refinement with tools/test.py on the config and the default check')
    export_onnx(refiner, args.out, opset=args.opset)
    print(f'[export_onnx] wrote {osp.abspath(args.out)} (opset {args.opset}, T = {refiner.cfg.num_steps})')
    report = {}
    if not args.no_check:
        report = check_with_onnxruntime(refiner, args.out)
        print('[export_onnx] onnxruntime vs PyTorch: ' + json.dumps(report))
    if args.check_ap:
        metrics = check_ap(args.config, args.checkpoint, args.out, args.cfg_options)
        report['ap'] = {name: {k: v for k, v in m.items() if isinstance(v, float)} for name, m in metrics.items()}
        print('[export_onnx] refined boxes, onnxruntime vs eager (network-input px): ' + json.dumps(metrics['boxes']))
        keys = [k for k in report['ap']['eager'] if k.endswith('bbox_mAP') or k.endswith('bbox_mAP_75')]
        for k in keys:
            print(f"[export_onnx] {k}: eager {report['ap']['eager'][k]:.4f}, onnxruntime "
                  f"{report['ap']['onnxruntime'][k]:.4f}")
    return report


if __name__ == '__main__':
    main()
