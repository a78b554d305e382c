"""tools/visualize_refinement.py on generated shapes with a randomly initialised EBM model."""
import pytest
import torch

from conftest import tiny_shapes_config

mmdet = pytest.importorskip('mmdet')
import ebm_det  # noqa: E402,F401


def test_visualize_refinement_pictures_and_heatmap(shapes_root, tmp_path):
    import mmcv
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner
    from tools import visualize_refinement as vis
    cfg_path = tiny_shapes_config(tmp_path, 'faster-rcnn_r18_fpn_ebm-nceplus_shapes.py', shapes_root)
    cfg = Config.fromfile(str(cfg_path))
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    ckpt = tmp_path / 'random.pth'
    torch.save(dict(state_dict=model.state_dict()), ckpt)

    out_dir = tmp_path / 'vis'
    out = vis.main([str(cfg_path), str(ckpt), '--images', '2', '--score-thr', '0', '--out-dir', str(out_dir)])
    # the heat map of the first image, then one picture per image
    names = [p.split('/')[-1] for p in out['paths']]
    assert names[0].startswith('heatmap_') and len(names) == 3
    assert all(n.startswith('refine_') for n in names[1:])
    for path in out['paths']:
        img = mmcv.imread(path)
        assert img is not None, path
        if 'heatmap_' in path:
            w, h = vis.HEATMAP_FIGSIZE
            assert img.shape == (round(h * vis.HEATMAP_DPI), round(w * vis.HEATMAP_DPI), 3)
        else:
            assert img.shape == (256, 256, 3)  # the original image (shapes_root: 256 px)

    # --zoom: the same picture, enlarged (the demo draws its 256-px image at 3x)
    zoomed = vis.main([str(cfg_path), str(ckpt), '--images', '1', '--score-thr', '0', '--zoom', '3',
                       '--out-dir', str(tmp_path / 'vis3')])['paths'][1]
    assert mmcv.imread(zoomed).shape == (768, 768, 3)
    # a usage error (exit status 2), not a traceback
    for bad in (['--zoom', '0'], ['--images', '0'], ['--heatmap-box', '-1']):
        with pytest.raises(SystemExit) as exc:
            vis.main([str(cfg_path), str(ckpt), *bad, '--out-dir', str(tmp_path / 'vis0')])
        assert exc.value.code == 2

    hm = out['heatmap']
    c = vis.STEPS // 2
    for name in ('shift', 'scale'):
        assert hm[name].shape == (vis.STEPS, vis.STEPS)
        assert torch.isfinite(hm[name]).all()
    assert hm['offsets'][c] == 0 and hm['offsets'][-1] == pytest.approx(vis.SPAN)

    # f at the detector's best box of the first image, recomputed here from the model's own
    # prediction and its extract_feat (the tool reads detect's features): the centre of both panels
    model = vis.build_model(cfg, str(ckpt))
    batch = next(iter(Runner.build_dataloader(cfg.val_dataloader)))
    with torch.no_grad():
        pred = model.test_step(batch)[0]
        feats = model.extract_feat(model.data_preprocessor(batch, False)['inputs'])
    inst = pred.pred_instances
    i = int(inst.scores.argmax())
    box = inst.bboxes_init[i:i + 1] * inst.bboxes.new_tensor(pred.metainfo['scale_factor']).repeat(2)
    torch.testing.assert_close(hm['box'], box[0])
    head = model.ebm_head
    idx, label = torch.zeros(1, dtype=torch.long), inst.labels[i:i + 1]
    with torch.no_grad():
        f0 = head.score(head.prepare_features(feats), box, idx, label, levels=head.map_levels(box))
        # grid[i, j]: offsets[j] in the panel's first dimension (dx / w0), offsets[i] in its second
        w = box[0, 2] - box[0, 0]
        right = box + torch.stack([w, 0 * w, w, 0 * w]) * vis.SPAN
        f_right = head.score(head.prepare_features(feats), right, idx, label, levels=head.map_levels(box))
    for name in ('shift', 'scale'):
        assert abs(hm[name][c, c].item() - f0.item()) <= 1e-5
    assert abs(hm['shift'][c, -1].item() - f_right.item()) <= 1e-5
    assert hm['shift'].std() > 0 and hm['scale'].std() > 0


def test_visualize_refinement_refuses_a_checkpoint_that_does_not_fit(shapes_root, tmp_path):
    # init_detector loads non-strictly; the EBM wrapper refuses a checkpoint that leaves weights random
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from tools import visualize_refinement as vis
    cfg_path = tiny_shapes_config(tmp_path, 'faster-rcnn_r18_fpn_ebm-nceplus_shapes.py', shapes_root)
    cfg = Config.fromfile(str(cfg_path))
    init_default_scope('mmdet')
    state = MODELS.build(cfg.model).state_dict()
    head_weight = 'ebm_head.fc_score.weight'
    cases = dict(missing={k: v for k, v in state.items() if k != head_weight},
                 unexpected={**state, 'ebm_head.extra': torch.zeros(1)},
                 mis_shaped={**state, head_weight: state[head_weight][:1]})
    for kind, weights in cases.items():
        ckpt = tmp_path / f'{kind}.pth'
        torch.save(dict(state_dict=weights), ckpt)
        with pytest.raises(RuntimeError, match=f'{kind}: '):
            vis.build_model(cfg, str(ckpt))
