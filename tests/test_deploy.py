"""``ebm_det.deploy``: an ``EBMBoxHead``'s refinement as a fixed-shape graph. Its box gradient equals
autograd's (float64), its results equal ``refine_boxes`` (float32, 1e-4 px), it traces whole under
``torch.compile(fullgraph=True)``, and its ONNX export (``tools/deploy/export_onnx.py``) gives the same
outputs in onnxruntime."""
import glob
import importlib.util

import pytest
import torch

from conftest import ROOT

pytest.importorskip('mmdet')
from ebm_det.core import RefineConfig, RelativeBox2DSpace, refine_boxes  # noqa: E402
from ebm_det.core.static_refine import map_fpn_levels  # noqa: E402
from ebm_det.deploy import StaticBoxRefiner  # noqa: E402
from ebm_det.deploy.refiner import INPUT_NAMES, example_inputs  # noqa: E402
from ebm_det.models import EBMBoxHead  # noqa: E402
from tools.deploy import export_onnx  # noqa: E402

ONNX_MISSING = [m for m in ('onnx', 'onnxruntime', 'onnxscript') if importlib.util.find_spec(m) is None]
needs_onnx = pytest.mark.skipif(bool(ONNX_MISSING), reason=f'{", ".join(ONNX_MISSING)} not importable '
                                '(tools/install.sh installs them)')


def _head(dtype=torch.float32, score_std=0.05, **kw):
    """A small random head whose scores vary enough for the ascent to move (the paper's N(0, 0.001)
    last layer gives nearly flat scores)."""
    torch.manual_seed(0)
    args = dict(num_classes=3, in_channels=8, fc_channels=32, featmap_strides=[4, 8, 16], finest_scale=16)
    args.update(kw)
    head = EBMBoxHead(**args)
    torch.nn.init.normal_(head.fc_score.weight, std=score_std)
    return head.to(dtype).eval()


def _assert_same_as_eager(refiner, inputs, atol_px=1e-4):
    feats, boxes, scores, labels, batch_idx, img_shapes = inputs
    with torch.no_grad():
        got = refiner(*inputs)
        expected = refine_boxes(refiner.head, feats, boxes, batch_idx, labels, refiner.cfg, scores=scores,
                                img_shapes=img_shapes, num_images=len(img_shapes))
    torch.testing.assert_close(got[0], expected.boxes, rtol=0, atol=atol_px, equal_nan=True)
    torch.testing.assert_close(got[1], expected.ebm_scores, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2], expected.init_scores, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[3], expected.refined)
    return got, expected


def test_head_energy_gradient_equals_autograd_float64():
    """The refiner's f and df/dy in (cx/w0, cy/h0, log w, log h) against autograd through the head's
    own ``score`` (roi_grid_sample, its fc layers), with a channel-reducing conv, three levels and
    two images, boxes across the border."""
    head = _head(torch.float64, reduced_channels=4)
    refiner = StaticBoxRefiner(head)
    feats, boxes, scores, labels, batch_idx, img_shapes = example_inputs(refiner, 2, 8, (96, 128))
    boxes = torch.cat([boxes, boxes.new_tensor([[-20., -10., 40., 60.], [100., 70., 160., 150.]])])
    batch_idx = torch.cat([batch_idx, batch_idx.new_tensor([0, 1])])
    labels = torch.cat([labels, labels.new_tensor([2, 0])])
    levels = head.map_levels(boxes)
    assert torch.equal(map_fpn_levels(boxes, 3, 16.0), levels) and levels.unique().numel() == 3
    space = RelativeBox2DSpace()
    y = space.encode(boxes, boxes) + 0.02 * torch.randn(len(boxes), 4, dtype=torch.float64)
    yy = y.clone().requires_grad_(True)
    expected_f = head.score(head.prepare_features(feats), space.decode(yy, boxes), batch_idx, labels, levels=levels)
    expected_g, = torch.autograd.grad(expected_f.sum(), yy)

    from ebm_det.core.static_refine import flatten_pyramid, mlp_score_and_grad, roi_grid_box_grad, roi_grid_features
    with torch.no_grad():
        pyr = flatten_pyramid(refiner.prepare(feats), head.featmap_strides)
        samples = roi_grid_features(pyr, space.decode(y, boxes), batch_idx, levels, head.roi_size, head.sampling_ratio)
        f, g = mlp_score_and_grad(refiner.mlp(), samples.features.flatten(1), labels)
        g = space.decode_vjp(roi_grid_box_grad(samples, g.reshape(samples.features.shape), 2), y, boxes)
    torch.testing.assert_close(f, expected_f.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(g, expected_g, rtol=0, atol=1e-6)


@pytest.mark.parametrize('case', ['default', 'gate_and_caps', 'tol', 'agnostic_reduced'])
def test_static_refiner_equals_refine_boxes(case):
    """Boxes, f at the output box, f at the input box and the refined flags of ``refine_boxes``:
    random boxes of three images (some across the border, one too small, one NaN, one outside the
    image), the papers' revert-and-halve rule, clipping, per-class gates, selection caps, early
    convergence."""
    cfgs = dict(default=(RefineConfig(num_steps=5, step_sizes=0.05), {}),
                gate_and_caps=(RefineConfig(num_steps=4, step_sizes=(0.04, 0.04, 0.1, 0.1), decay=0.25,
                                            score_thr=0.3, max_per_img=4, min_gain=(0.0, 0.02, 0.0)), {}),
                tol=(RefineConfig(num_steps=6, step_sizes=0.05, tol=2e-3), {}),
                agnostic_reduced=(RefineConfig(num_steps=3, step_sizes=0.08),
                                  dict(class_agnostic=True, reduced_channels=4, dropout=0.2)))
    cfg, kw = cfgs[case]
    refiner = StaticBoxRefiner(_head(**kw), cfg)
    inputs = list(example_inputs(refiner, 3, 6, (96, 160), seed=2))
    boxes = inputs[1]
    boxes[0] = torch.tensor([-15., -10., 60., 50.])  # across the border: clipped
    boxes[4, 2] = boxes[4, 0] + 0.5  # under min_size
    boxes[9, 3] = float('nan')
    boxes[12] = torch.tensor([170., 10., 200., 40.])  # wholly outside its 160 px wide image
    got, expected = _assert_same_as_eager(refiner, tuple(inputs))
    assert expected.refined.sum() >= 3 and (~expected.refined).sum() >= 2
    assert not torch.equal(got[0][expected.refined], boxes[expected.refined])


def test_static_refiner_accepted_steps_equal_head_refine():
    """The ascent's own counters: accepted and attempted steps per box, as ``head.refine`` counts them."""
    from ebm_det.core.static_refine import static_refine_boxes
    head = _head()
    cfg = RefineConfig(num_steps=6, step_sizes=0.3)  # large steps: some reverted
    refiner = StaticBoxRefiner(head, cfg)
    feats, boxes, scores, labels, batch_idx, img_shapes = example_inputs(refiner, 2, 5, (96, 128), seed=4)
    with torch.no_grad():
        res = head.refine(feats, boxes, batch_idx, labels, cfg)
        captured = {}
        real = static_refine_boxes

        def spy(*args, **kwargs):
            captured['out'] = real(*args, **kwargs)
            return captured['out']

        import ebm_det.deploy.refiner as module
        module.static_refine_boxes, saved = spy, module.static_refine_boxes
        try:
            refiner(feats, boxes, None, labels, batch_idx, None)
        finally:
            module.static_refine_boxes = saved
    out = captured['out']
    assert torch.equal(out.accepted, res.accepted) and torch.equal(out.attempted, res.attempted)
    assert (res.accepted < res.attempted).any() and (res.accepted > 0).any()
    torch.testing.assert_close(out.init_scores, res.init_scores, rtol=1e-5, atol=1e-6)


def test_static_refiner_empty_and_images_without_boxes():
    refiner = StaticBoxRefiner(_head(), RefineConfig(num_steps=2))
    feats, boxes, scores, labels, batch_idx, img_shapes = example_inputs(refiner, 3, 2)
    with torch.no_grad():
        out = refiner(feats, boxes[:0], scores[:0], labels[:0], batch_idx[:0], img_shapes)
        assert [tuple(t.shape) for t in out] == [(0, 4), (0, ), (0, ), (0, )]
        keep = batch_idx != 1  # image 1 has no boxes
        _assert_same_as_eager(refiner, (feats, boxes[keep], scores[keep], labels[keep], batch_idx[keep], img_shapes))


def test_static_refiner_refuses_prroi_and_autocast():
    with pytest.raises(NotImplementedError, match='autograd'):
        StaticBoxRefiner(_head(pooling='prroi'))
    with pytest.raises(ValueError, match='autocast'):
        StaticBoxRefiner(_head(), RefineConfig(autocast='bfloat16'))


def test_static_refiner_traces_whole_without_host_sync():
    """``torch.compile(fullgraph=True)`` fails on any graph break: a host sync (``.item()``, a tensor's
    bool), a data-dependent shape (``nonzero``, boolean-mask indexing) or a Python loop over the data.
    Dynamo's tracing alone (backend 'eager') checks that, without compiling kernels."""
    torch._dynamo.reset()
    refiner = StaticBoxRefiner(_head(), RefineConfig(num_steps=3, step_sizes=0.05))
    inputs = example_inputs(refiner, 2, 4)
    compiled = torch.compile(refiner, fullgraph=True, backend='eager', dynamic=True)
    with torch.no_grad():
        got, expected = compiled(*inputs), refiner(*inputs)
        other = example_inputs(refiner, 3, 5, (64, 96), seed=5)  # other sizes: no recompilation needed
        got2, expected2 = compiled(*other), refiner(*other)
    for a, b in zip(got + got2, expected + expected2):
        torch.testing.assert_close(a, b)


def _demo_checkpoint():
    paths = sorted(glob.glob(str(ROOT / 'work_dirs' / 'demo*' / 'ebm' / 'last_checkpoint')))
    return open(paths[0]).read().strip() if paths else None


@pytest.mark.skipif(_demo_checkpoint() is None, reason='no trained demo checkpoint (work_dirs/demo*/ebm; make demo)')
def test_static_refiner_equals_refine_boxes_on_the_demo_model():
    refiner = export_onnx.build_refiner(str(ROOT / 'configs' / 'faster-rcnn_r18_fpn_ebm-nceplus_shapes.py'),
                                        _demo_checkpoint())
    for seed in range(3):
        _assert_same_as_eager(refiner, example_inputs(refiner, 2, 15, (256, 256), seed=seed))


# ----------------------------------------------------------------------------------------- ONNX
@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """The shapes EBM config with random weights, saved as a checkpoint, exported by the tool."""
    from mmdet.apis import init_detector
    from mmengine.config import Config
    tmp = tmp_path_factory.mktemp('onnx')
    cfg = Config.fromfile(str(ROOT / 'configs' / 'faster-rcnn_r18_fpn_ebm-nceplus_shapes.py'))
    cfg.model.ebm_head.fc_channels = 64  # a small head: the export's time is the graph's, not the weights'
    cfg.model.test_cfg = dict(num_steps=3, step_sizes=0.05, min_gain=0.001)
    torch.manual_seed(0)
    model = init_detector(cfg, device='cpu')
    torch.nn.init.normal_(model.ebm_head.fc_score.weight, std=0.05)
    ckpt = tmp / 'model.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), ckpt)
    cfg_path = tmp / 'config.py'
    cfg.dump(str(cfg_path))
    out = tmp / 'refine.onnx'
    report = export_onnx.main([str(cfg_path), str(ckpt), '--out', str(out)])
    return dict(path=str(out), report=report, config=str(cfg_path), checkpoint=str(ckpt))


@needs_onnx
def test_export_tool_writes_a_graph_that_onnxruntime_runs(exported):
    import onnx
    model = onnx.load(exported['path'])
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')) >= 17
    assert [i.name for i in model.graph.input] == [f'feat_{i}' for i in range(4)] + list(INPUT_NAMES)
    report = exported['report']  # the tool's own check: 3 images, 21 boxes (traced with 2 and 6)
    assert report['refined_equal_static'] and report['refined_equal_eager'] and report['refined'] > 0
    assert report['max_box_diff_vs_static'] < 1e-4 and report['max_box_diff_vs_eager'] < 1e-4


@needs_onnx
@pytest.mark.parametrize('num_images,boxes_per_image', [(1, 1), (2, 9), (4, 3)])
def test_onnxruntime_equals_pytorch_static_loop(exported, num_images, boxes_per_image):
    """Other numbers of images and boxes, other map sizes than traced; boxes across the border and
    one degenerate box; the outputs of onnxruntime equal PyTorch's."""
    import onnxruntime as ort
    refiner = export_onnx.build_refiner(exported['config'], exported['checkpoint'])
    inputs = list(example_inputs(refiner, num_images, boxes_per_image, (128 + 32 * num_images, 192), seed=num_images))
    if len(inputs[1]) > 2:
        inputs[1][1] = torch.tensor([-8., 20., 10., 20.5])  # under 1 px high: never refined
        inputs[1][2] = torch.tensor([-30., -20., 90., 70.])  # across the border: clipped
    feats, rest = inputs[0], inputs[1:]
    session = ort.InferenceSession(exported['path'], providers=['CPUExecutionProvider'])
    feed = {f'feat_{i}': f.numpy() for i, f in enumerate(feats)}
    feed.update({name: t.numpy() for name, t in zip(INPUT_NAMES, rest)})
    got = [torch.from_numpy(o) for o in session.run(None, feed)]
    with torch.no_grad():
        expected = refiner(*inputs)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2], expected[2], rtol=1e-5, atol=1e-5)
    assert torch.equal(got[3], expected[3])


@needs_onnx
def test_onnxruntime_with_no_boxes(exported):
    import onnxruntime as ort
    refiner = export_onnx.build_refiner(exported['config'], exported['checkpoint'])
    feats, boxes, scores, labels, batch_idx, img_shapes = example_inputs(refiner, 2, 1)
    session = ort.InferenceSession(exported['path'], providers=['CPUExecutionProvider'])
    feed = {f'feat_{i}': f.numpy() for i, f in enumerate(feats)}
    feed.update({name: t[:0].numpy() if name != 'img_shapes' else t.numpy()
                 for name, t in zip(INPUT_NAMES, (boxes, scores, labels, batch_idx, img_shapes))})
    out = session.run(None, feed)
    assert [o.shape for o in out] == [(0, 4), (0, ), (0, ), (0, )]


def test_export_tool_refuses_a_low_opset():
    with pytest.raises(SystemExit):
        export_onnx.parse_args(['c.py', 'k.pth', '--opset', '13'])
