"""``ebm_det.deploy``: an ``EBMBoxHead``'s refinement as a fixed-shape graph. Its box gradient equals
autograd's (float64), its results equal ``refine_boxes`` (float32, 1e-4 px), it traces whole under
``torch.compile(fullgraph=True)``, and its ONNX export (``tools/deploy/export_onnx.py``) gives the same
outputs in onnxruntime."""
import glob
import importlib.util

import pytest
import torch

from conftest import ROOT, OpRecorder

pytest.importorskip('mmdet')
from ebm_det.core import RefineConfig, RelativeBox2DSpace, refine_boxes  # noqa: E402
from ebm_det.core.static_refine import map_fpn_levels  # noqa: E402
from ebm_det.deploy import StaticBoxRefiner  # noqa: E402
from ebm_det.deploy.refiner import INPUT_NAMES  # noqa: E402
from ebm_det.models import EBMBoxHead  # noqa: E402
from tools.deploy import export_onnx  # noqa: E402

ONNX_MISSING = [m for m in ('onnx', 'onnxruntime', 'onnxscript') if importlib.util.find_spec(m) is None]
needs_onnx = pytest.mark.skipif(bool(ONNX_MISSING), reason=f'{", ".join(ONNX_MISSING)} not importable '
                                '(tools/install.sh installs them)')


def assert_session_equals_module(session, feed, refiner, inputs):
    """The graph in onnxruntime against the module: refined boxes to 1e-4 px, ebm_scores and
    ebm_init_scores to 1e-5, the refined flags exactly."""
    got = [torch.from_numpy(o) for o in session.run(None, feed)]
    with torch.no_grad():
        expected = refiner(*inputs)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2], expected[2], rtol=1e-5, atol=1e-5)
    assert torch.equal(got[3], expected[3])


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
    feats, boxes, scores, labels, batch_idx, img_shapes = refiner.example_inputs(2, 8, (96, 128))
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
    inputs = list(refiner.example_inputs(3, 6, (96, 160), seed=2))
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
    feats, boxes, scores, labels, batch_idx, img_shapes = refiner.example_inputs(2, 5, (96, 128), seed=4)
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
    feats, boxes, scores, labels, batch_idx, img_shapes = refiner.example_inputs(3, 2)
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
    inputs = refiner.example_inputs(2, 4)
    compiled = torch.compile(refiner, fullgraph=True, backend='eager', dynamic=True)
    with torch.no_grad():
        got, expected = compiled(*inputs), refiner(*inputs)
        other = refiner.example_inputs(3, 5, (64, 96), seed=5)  # other sizes: no recompilation needed
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
        _assert_same_as_eager(refiner, refiner.example_inputs(2, 15, (256, 256), seed=seed))


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
    inputs = list(refiner.example_inputs(num_images, boxes_per_image, (128 + 32 * num_images, 192), seed=num_images))
    if len(inputs[1]) > 2:
        inputs[1][1] = torch.tensor([-8., 20., 10., 20.5])  # under 1 px high: never refined
        inputs[1][2] = torch.tensor([-30., -20., 90., 70.])  # across the border: clipped
    feats, rest = inputs[0], inputs[1:]
    session = ort.InferenceSession(exported['path'], providers=['CPUExecutionProvider'])
    feed = {f'feat_{i}': f.numpy() for i, f in enumerate(feats)}
    feed.update({name: t.numpy() for name, t in zip(INPUT_NAMES, rest)})
    assert_session_equals_module(session, feed, refiner, inputs)


@needs_onnx
def test_onnxruntime_with_no_boxes(exported):
    import onnxruntime as ort
    refiner = export_onnx.build_refiner(exported['config'], exported['checkpoint'])
    feats, boxes, scores, labels, batch_idx, img_shapes = refiner.example_inputs(2, 1)
    session = ort.InferenceSession(exported['path'], providers=['CPUExecutionProvider'])
    feed = {f'feat_{i}': f.numpy() for i, f in enumerate(feats)}
    feed.update({name: t[:0].numpy() if name != 'img_shapes' else t.numpy()
                 for name, t in zip(INPUT_NAMES, (boxes, scores, labels, batch_idx, img_shapes))})
    out = session.run(None, feed)
    assert [o.shape for o in out] == [(0, 4), (0, ), (0, ), (0, )]


def test_export_tool_refuses_a_low_opset():
    with pytest.raises(SystemExit):
        export_onnx.parse_args(['c.py', 'k.pth', '--opset', '13'])


# ------------------------------------------------------------------------------- 3D: EBMBoxHead3D
needs_mmdet3d = pytest.mark.skipif(importlib.util.find_spec('mmdet3d') is None, reason='mmdet3d not importable')
BEV_RANGE = (-16.0, -8.0, 16.0, 8.0)


def _head3d(dtype=torch.float32, score_std=0.05, **kw):
    from ebm_det.models import EBMBoxHead3D
    torch.manual_seed(0)
    args = dict(in_channels=6, bev_range=BEV_RANGE, fc_channels=32, zh_channels=8, num_classes=3)
    args.update(kw)
    head = EBMBoxHead3D(**args)
    torch.nn.init.normal_(head.fc_score.weight, std=score_std)
    return head.to(dtype).eval()


def _assert_same_as_eager_3d(refiner, inputs, atol=1e-4):
    with torch.no_grad():
        got, expected = refiner(*inputs), refiner.eager(*inputs)
    torch.testing.assert_close(got[0], expected.boxes, rtol=0, atol=atol, equal_nan=True)
    torch.testing.assert_close(got[1], expected.ebm_scores, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2], expected.init_scores, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[3], expected.refined)
    return got, expected


@needs_mmdet3d
@pytest.mark.parametrize('normalized', [False, True])
def test_head3d_energy_gradient_equals_autograd_float64(normalized):
    """The 3D refiner's f and df/dy in ``Box3DSpace`` (absolute or normalized) against autograd
    through ``EBMBoxHead3D.score`` (the rotated BEV grid, the z / h encoders, the fc layers), with a
    channel-reducing conv and two BEV levels, three frames, boxes across the map's border, yaw
    across +-pi."""
    from ebm_det.core.static_refine import static_refine_boxes
    from ebm_det.deploy import StaticBoxRefiner3D
    head = _head3d(torch.float64, reduced_channels=4, normalized_space=normalized)
    refiner = StaticBoxRefiner3D(head)
    feats, boxes, _, labels, batch_idx = refiner.example_inputs(3, 8, (16, 32), channels=3)
    feats = (feats[0], torch.randn_like(feats[0]))  # two levels of 3 channels: the head's 6
    boxes[0, 6] = 3.1
    space = head.codec.space
    y = space.encode(boxes, boxes) + 0.02 * torch.randn(len(boxes), 7, dtype=torch.float64)
    yy = y.clone().requires_grad_(True)
    expected_f = head.score(head.prepare_features(list(feats)), space.decode(yy, boxes), batch_idx, labels)
    expected_g, = torch.autograd.grad(expected_f.sum(), yy)
    captured = {}

    def spy(energy, b, *args, **kwargs):  # the energy the refiner builds, called at y
        captured['f'], g = energy(space.decode(y, b), b, True)
        captured['g'] = space.decode_vjp(g, y, b)
        return static_refine_boxes(energy, b, *args, **kwargs)

    import ebm_det.deploy.refiner as module
    module.static_refine_boxes, saved = spy, module.static_refine_boxes
    try:
        with torch.no_grad():
            refiner(feats, boxes, None, labels, batch_idx)
    finally:
        module.static_refine_boxes = saved
    torch.testing.assert_close(captured['f'], expected_f.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(captured['g'], expected_g, rtol=0, atol=1e-6)
    assert (expected_g[:, [2, 5]].abs() > 0).any()  # z and h reach f through their encoders


@needs_mmdet3d
@pytest.mark.parametrize('case', ['default', 'gate_and_caps', 'tol', 'normalized', 'agnostic_reduced'])
def test_static_refiner_3d_equals_refine_boxes(case):
    """Boxes, f at the output box, f at the input box and the refined flags of ``refine_boxes``
    (float32, 1e-4): random LiDAR boxes of three frames (some across the map border, one of zero
    width, one NaN), revert-and-halve, yaw wrapping, per-class gates, caps, early convergence."""
    from ebm_det.deploy import StaticBoxRefiner3D
    cfgs = dict(default=(RefineConfig(num_steps=5, step_sizes=0.05), {}),
                gate_and_caps=(RefineConfig(num_steps=4, step_sizes=(0.05, 0.05, 0.02, 0.03, 0.03, 0.02, 0.1),
                                            decay=0.25, score_thr=0.3, max_per_img=4, min_gain=(0.0, 0.02, 0.0)), {}),
                tol=(RefineConfig(num_steps=6, step_sizes=0.05, tol=2e-3), {}),
                normalized=(RefineConfig(num_steps=5, step_sizes=0.03), dict(normalized_space=True)),
                agnostic_reduced=(RefineConfig(num_steps=3, step_sizes=0.08), dict(num_classes=1, reduced_channels=4)))
    cfg, kw = cfgs[case]
    refiner = StaticBoxRefiner3D(_head3d(**kw), cfg)
    inputs = list(refiner.example_inputs(3, 6, (32, 64), seed=2))
    boxes = inputs[1]
    boxes[0, :2] = torch.tensor([15.5, 7.8])  # at the map's corner
    boxes[1, 6] = 3.14  # yaw at +pi: steps wrap it
    boxes[4, 4] = 0.0  # zero width: never refined
    boxes[9, 3] = float('nan')
    got, expected = _assert_same_as_eager_3d(refiner, tuple(inputs))
    assert expected.refined.sum() >= 3 and not expected.refined[4] and not expected.refined[9]
    assert not torch.equal(got[0][expected.refined], boxes[expected.refined])


@needs_mmdet3d
def test_static_refiner_3d_empty_frames_and_refusals():
    from ebm_det.deploy import StaticBoxRefiner3D, static_refiner_for
    head = _head3d()
    refiner = static_refiner_for(head, RefineConfig(num_steps=2, step_sizes=0.05))
    assert isinstance(refiner, StaticBoxRefiner3D) and isinstance(static_refiner_for(_head()), StaticBoxRefiner)
    feats, boxes, scores, labels, batch_idx = refiner.example_inputs(3, 2)
    with torch.no_grad():
        out = refiner(feats, boxes[:0], scores[:0], labels[:0], batch_idx[:0])
    assert [tuple(t.shape) for t in out] == [(0, 7), (0, ), (0, ), (0, )]
    keep = batch_idx != 1  # frame 1 has no boxes
    _assert_same_as_eager_3d(refiner, (feats, boxes[keep], scores[keep], labels[keep], batch_idx[keep]))
    with pytest.raises(ValueError, match='autocast'):
        StaticBoxRefiner3D(head, RefineConfig(autocast='bfloat16'))
    with pytest.raises(NotImplementedError, match='EBMBoxHead3D'):
        StaticBoxRefiner3D(_head())


@needs_mmdet3d
def test_static_refiner_3d_traces_whole_without_host_sync():
    from ebm_det.deploy import StaticBoxRefiner3D
    torch._dynamo.reset()
    refiner = StaticBoxRefiner3D(_head3d(), RefineConfig(num_steps=3, step_sizes=0.05))
    compiled = torch.compile(refiner, fullgraph=True, backend='eager', dynamic=True)
    with torch.no_grad():
        for args in ((2, 4, (32, 64)), (3, 5, (24, 40))):
            inputs = refiner.example_inputs(*args, seed=args[0])
            for a, b in zip(compiled(*inputs), refiner(*inputs)):
                torch.testing.assert_close(a, b)


@needs_mmdet3d
@needs_onnx
def test_onnx_export_3d_equals_pytorch(tmp_path):
    """``export_onnx`` of a ``StaticBoxRefiner3D``: inputs feat_0, boxes, scores, labels, batch_idx;
    onnxruntime equals PyTorch for 1-4 frames, 0-21 boxes and other map sizes than traced."""
    import onnx
    import onnxruntime as ort

    from ebm_det.deploy import StaticBoxRefiner3D
    from ebm_det.deploy import export_onnx as export
    from ebm_det.deploy.refiner import feed_names
    refiner = StaticBoxRefiner3D(_head3d(), RefineConfig(num_steps=3, step_sizes=0.05))
    path = export(refiner, str(tmp_path / 'refine3d.onnx'))
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ['feat_0', 'boxes', 'scores', 'labels', 'batch_idx']
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    for frames, per_frame, size in ((1, 1, (16, 40)), (4, 5, (48, 96)), (2, 0, (32, 64)), (3, 7, (32, 64))):
        inputs = refiner.example_inputs(frames, per_frame, size, seed=frames)
        feed = dict(zip(feed_names(refiner, inputs), [t.numpy() for t in list(inputs[0]) + list(inputs[1:])]))
        assert_session_equals_module(session, feed, refiner, inputs)


@needs_mmdet3d
@needs_onnx
def test_export_tool_on_a_3d_config(tmp_path):
    """The tool on the PointPillars EBM config (random weights, a small head): mmdet3d's
    ``init_model``, ``StaticBoxRefiner3D``, and its own onnxruntime check (3 frames, 21 boxes, another
    map size than traced) against PyTorch's static loop and ``refine_boxes``."""
    from mmdet3d.apis import init_model
    from mmengine.config import Config

    from ebm_det.deploy import StaticBoxRefiner3D
    cfg = Config.fromfile(str(ROOT / 'configs' / 'pointpillars_ebm-nce_kitti-gen_car.py'))
    cfg.model.ebm_head.fc_channels = 64
    cfg.model.test_cfg = dict(num_steps=3, step_sizes=0.02)
    torch.manual_seed(0)
    model = init_model(cfg, device='cpu')
    torch.nn.init.normal_(model.ebm_head.fc_score.weight, std=0.05)
    ckpt, cfg_path, out = tmp_path / 'model.pth', tmp_path / 'config.py', tmp_path / 'refine3d.onnx'
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), ckpt)
    cfg.dump(str(cfg_path))
    assert isinstance(export_onnx.build_refiner(str(cfg_path), str(ckpt)), StaticBoxRefiner3D)
    report = export_onnx.main([str(cfg_path), str(ckpt), '--out', str(out)])
    assert report['refined_equal_static'] and report['refined_equal_eager'] and report['refined'] > 0
    assert report['max_box_diff_vs_static'] < 1e-4 and report['max_box_diff_vs_eager'] < 1e-4
    with pytest.raises(SystemExit, match='2D'):
        export_onnx.main([str(cfg_path), str(ckpt), '--out', str(out), '--check-ap'])


@pytest.mark.parametrize('dim', [2, 3])
def test_static_refiners_are_cuda_graph_capturable(dim):
    """What a ``torch.cuda.CUDAGraph`` capture refuses, checked on the CPU by the ops a forward runs:
    no tensor built from host data (``lift_fresh``: ``torch.tensor`` / ``new_tensor``, a
    host-to-device copy on CUDA) and no read back to the host (``_local_scalar_dense``), with a
    per-class gate and early convergence set."""
    if dim == 3 and importlib.util.find_spec('mmdet3d') is None:
        pytest.skip('mmdet3d not importable')
    from ebm_det.deploy import static_refiner_for
    cfg = RefineConfig(num_steps=2, step_sizes=0.05, tol=1e-3, score_thr=0.1, max_per_img=3,
                       min_gain=(0.0, 0.01, 0.0))
    refiner = static_refiner_for(_head() if dim == 2 else _head3d(), cfg)
    inputs = refiner.example_inputs(2, 4)
    with torch.no_grad(), OpRecorder() as rec:
        refiner(*inputs)
    assert not {'aten.lift_fresh', 'aten.lift_fresh_copy', 'aten._local_scalar_dense', 'aten.item'} & rec.ops, \
        sorted(rec.ops)


def test_gpu_core_head_is_ebm_box_head():
    """tools/benchmarks/gpu_core.py's ``CoreBoxHead`` (EBMBoxHead's layers on ebm_det.core alone, for the
    GPU machine without mmdet) loads an ``EBMBoxHead``'s weights under the same names and refines
    exactly as it does, by ``refine_boxes`` and by ``StaticBoxRefiner``."""
    from tools.benchmarks.gpu_core import CoreBoxHead
    head = _head()
    core = CoreBoxHead(num_classes=3, in_channels=8, fc_channels=32, featmap_strides=(4, 8, 16), finest_scale=16)
    core.load_state_dict(head.state_dict())
    cfg = RefineConfig(num_steps=4, step_sizes=0.05)
    inputs = StaticBoxRefiner(head, cfg).example_inputs(2, 8, (96, 128), seed=3)
    feats, boxes, scores, labels, batch_idx, img_shapes = inputs
    assert torch.equal(core.level_mapper.map_levels(boxes), head.map_levels(boxes))
    with torch.no_grad():
        expected = refine_boxes(head, feats, boxes, batch_idx, labels, cfg, scores=scores, img_shapes=img_shapes)
        got = refine_boxes(core, feats, boxes, batch_idx, labels, cfg, scores=scores, img_shapes=img_shapes)
        static = StaticBoxRefiner(core.eval(), cfg)(*inputs)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    assert expected.refined.any() and torch.equal(static[3], expected.refined)
    torch.testing.assert_close(static[0], expected.boxes, rtol=0, atol=1e-4)
