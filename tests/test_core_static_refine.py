"""f's box gradient as forward ops (``ebm_det.core.static_refine``) against autograd, in float64:
the bilinear RoI sampler's and the rotated BEV sampler's x / y derivatives (boxes across the map
border, sample points on integer coordinates, several levels, images and frames, empty input), the
fc stacks' input gradients, the box spaces' chain rule (``decode_vjp``); and the fixed-shape loop
against ``refine_boxes`` on an energy with a known gradient, for 2D and LiDAR boxes."""
import pytest
import torch
from torch.autograd import gradcheck

from conftest import OpRecorder

from ebm_det.core import (Box2DCodec, Box3DSpace, LiDARBoxCodec, RefineConfig, RelativeBox2DSpace, refine_boxes,
                          select_for_refinement)
from ebm_det.core.sampling import roi_grid_sample, rotated_bev_grid_sample
from ebm_det.core.static_refine import (MLPWeights, flatten_pyramid, map_fpn_levels, mlp_score_and_grad, relu_mlp,
                                        relu_mlp_input_grad, roi_grid_box_grad, roi_grid_features,
                                        rotated_bev_box_grad, rotated_bev_features, select_for_refinement_static,
                                        static_refine_boxes)

devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
f64 = torch.float64


def _pyramid(device, sizes=((2, 3, 16, 16), (2, 3, 8, 8)), strides=(4, 8), seed=0):
    """Maps of power-of-two sizes, so grid_sample's normalise / unnormalise round trip is exact."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=f64).to(device) for s in sizes], strides


def _random_boxes(n, seed=1, device='cpu'):
    """Boxes of a 64 x 64 image, many of them across its border."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=f64) * 90 - 20
    wh = torch.rand(n, 2, generator=g, dtype=f64) * 50 + 2
    return torch.cat([xy, xy + wh], 1).to(device)


def _integer_point_boxes(device):
    """roi_size 4, ratio 2 (P = 8, t = (k + 0.5) / 8) with an 8-cell span on the map: sample points
    at integer map coordinates (the bilinear index x - 0.5 at half-integers) and at half-integers
    (the index itself integer: where the derivative switches corners), inside and across the
    border, on both levels."""
    return torch.tensor([
        [4 * 2.5, 4 * 3.5, 4 * 10.5, 4 * 11.5],  # level 0 (stride 4): points at integer x and y
        [4 * 3.0, 4 * 1.0, 4 * 11.0, 4 * 9.0],  # level 0: bilinear index integer
        [4 * -3.0, 4 * 12.0, 4 * 5.0, 4 * 20.0],  # level 0, across the left and bottom border
        [8 * -1.0, 8 * 2.0, 8 * 7.0, 8 * 10.0],  # level 1 (stride 8): integer index, across two borders
        [8 * 0.5, 8 * -4.5, 8 * 8.5, 8 * 3.5],  # level 1: integer points, across the top
    ], dtype=f64, device=device)


def _autograd_box_grad(feats, strides, boxes, batch_idx, levels, weight, out_size, ratio):
    """d <weight, roi_grid_sample(boxes)> / d boxes by autograd; weight (N, C, S, S)."""
    b = boxes.clone().requires_grad_(True)
    out = roi_grid_sample(feats, b, batch_idx, levels, strides, out_size, ratio)
    grad, = torch.autograd.grad((out * weight).sum(), b, allow_unused=True)
    return out.detach(), (torch.zeros_like(boxes) if grad is None else grad)


def _check_sampler(device, boxes, batch_idx, levels, out_size, ratio, feats=None, strides=(4, 8)):
    if feats is None:
        feats, strides = _pyramid(device)
    n, c = boxes.shape[0], feats[0].shape[1]
    weight = torch.randn(n, c, out_size, out_size, dtype=f64, generator=torch.Generator().manual_seed(3)).to(device)
    expected, expected_grad = _autograd_box_grad(feats, strides, boxes, batch_idx, levels, weight, out_size, ratio)
    samples = roi_grid_features(flatten_pyramid(feats, strides), boxes, batch_idx, levels, out_size, ratio)
    torch.testing.assert_close(samples.features.permute(0, 3, 1, 2), expected, rtol=0, atol=1e-12)
    grad = roi_grid_box_grad(samples, weight.permute(0, 2, 3, 1), ratio)
    assert grad.shape == (n, 4)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-6)
    return grad, expected_grad


@pytest.mark.parametrize('device', devices)
def test_flatten_pyramid_rows(device):
    feats, strides = _pyramid(device)
    pyr = flatten_pyramid(feats, strides)
    assert pyr.flat.shape == (2 * 16 * 16 + 2 * 8 * 8 + 1, 3)
    assert not pyr.flat[-1].any()  # the zero padding
    assert pyr.offsets.tolist() == [0, 512] and pyr.heights.tolist() == [16, 8] and pyr.widths.tolist() == [16, 8]
    lvl, b, y, x = 1, 1, 5, 2
    row = pyr.offsets[lvl] + (b * pyr.heights[lvl] + y) * pyr.widths[lvl] + x
    assert torch.equal(pyr.flat[row], feats[lvl][b, :, y, x])


@pytest.mark.parametrize('device', devices)
@pytest.mark.parametrize('out_size,ratio', [(7, 2), (4, 2), (3, 1)])
def test_box_grad_equals_autograd_across_the_border(device, out_size, ratio):
    """Random boxes of two images on two levels, many across the map border; equal features, and
    box gradients equal to autograd's through F.grid_sample."""
    boxes = _random_boxes(24, device=device)
    batch_idx = torch.arange(24, device=device) % 2
    levels = (torch.arange(24, device=device) // 3) % 2
    grad, _ = _check_sampler(device, boxes, batch_idx, levels, out_size, ratio)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize('device', devices)
def test_box_grad_with_sample_points_on_integer_coordinates(device):
    """Where a point's bilinear index is an integer the sample is continuous but its derivative
    jumps; grid_sample's backward takes the right-hand one (floor held) and so must we."""
    boxes = _integer_point_boxes(device)
    batch_idx = torch.tensor([0, 1, 0, 1, 0], device=device)
    levels = torch.tensor([0, 0, 0, 1, 1], device=device)
    _check_sampler(device, boxes, batch_idx, levels, out_size=4, ratio=2)


@pytest.mark.parametrize('device', devices)
def test_box_grad_outside_the_map_and_non_power_of_two_sizes(device):
    """A box entirely outside the map samples zeros and has zero gradient; odd map sizes and a
    stride that is not a power of two agree with autograd too."""
    g = torch.Generator().manual_seed(5)
    feats = [torch.randn(3, 2, 13, 11, generator=g, dtype=f64).to(device),
             torch.randn(3, 2, 5, 7, generator=g, dtype=f64).to(device)]
    strides = (3, 6)
    boxes = torch.cat([_random_boxes(9, seed=7, device=device),
                       torch.tensor([[100., 100., 140., 150.], [-60., -50., -10., -20.]], dtype=f64, device=device)])
    batch_idx = torch.arange(11, device=device) % 3
    levels = torch.arange(11, device=device) % 2
    grad, _ = _check_sampler(device, boxes, batch_idx, levels, 7, 2, feats=feats, strides=strides)
    assert torch.equal(grad[-2:], torch.zeros_like(grad[-2:]))


@pytest.mark.parametrize('device', devices)
def test_box_grad_empty(device):
    feats, strides = _pyramid(device)
    empty = torch.zeros(0, 4, dtype=f64, device=device)
    idx = torch.zeros(0, dtype=torch.long, device=device)
    samples = roi_grid_features(flatten_pyramid(feats, strides), empty, idx, idx, 7, 2)
    assert samples.features.shape == (0, 7, 7, 3)
    assert roi_grid_box_grad(samples, samples.features, 2).shape == (0, 4)


class _ExplicitRoI(torch.autograd.Function):
    """<weight, roi features> with our explicit box gradient as its backward: gradcheck compares
    that gradient with finite differences."""

    @staticmethod
    def forward(ctx, boxes, pyr, batch_idx, levels, weight):
        samples = roi_grid_features(pyr, boxes, batch_idx, levels, 4, 2)
        ctx.save_for_backward(roi_grid_box_grad(samples, weight, 2))
        return (samples.features * weight).sum()

    @staticmethod
    def backward(ctx, grad_out):
        grad, = ctx.saved_tensors
        return grad * grad_out, None, None, None, None


def test_box_grad_gradcheck():
    feats, strides = _pyramid('cpu')
    pyr = flatten_pyramid(feats, strides)
    boxes = _random_boxes(6, seed=11).requires_grad_(True)
    batch_idx, levels = torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([0, 0, 1, 1, 0, 1])
    weight = torch.randn(6, 4, 4, 3, dtype=f64, generator=torch.Generator().manual_seed(2))
    assert gradcheck(lambda b: _ExplicitRoI.apply(b, pyr, batch_idx, levels, weight), (boxes, ), eps=1e-6,
                     atol=1e-5)


def _mlp(in_dim, hidden, out, seed=0):
    g = torch.Generator().manual_seed(seed)
    dims = [in_dim] + list(hidden) + [out]
    return MLPWeights(tuple(torch.randn(o, i, generator=g, dtype=f64) / i**0.5 for i, o in zip(dims[:-1], dims[1:])),
                      tuple(torch.randn(o, generator=g, dtype=f64) * 0.1 for o in dims[1:]))


@pytest.mark.parametrize('num_out', [1, 4])
def test_mlp_score_and_grad_equals_autograd(num_out):
    mlp = _mlp(10, (16, 8), num_out)
    x = torch.randn(7, 10, dtype=f64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    labels = torch.tensor([0, 3, 1, 2, 0, 3, 2]) % num_out
    h = x
    for w, b in zip(mlp.weights[:-1], mlp.biases[:-1]):
        h = torch.relu(h @ w.t() + b)
    out = h @ mlp.weights[-1].t() + mlp.biases[-1]
    expected = out.gather(1, labels[:, None])[:, 0]
    grad, = torch.autograd.grad(expected.sum(), x)
    f, g = mlp_score_and_grad(mlp, x.detach(), labels if num_out > 1 else None)
    torch.testing.assert_close(f, expected.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(g, grad, rtol=0, atol=1e-12)
    f2, none = mlp_score_and_grad(mlp, x.detach(), labels, need_grad=False)
    assert none is None and torch.equal(f2, f)
    empty_f, empty_g = mlp_score_and_grad(mlp, x.new_zeros(0, 10), labels[:0])
    assert empty_f.shape == (0, ) and empty_g.shape == (0, 10)


def test_relative_box2d_decode_vjp_and_encode():
    space = RelativeBox2DSpace()
    ref = _random_boxes(5, seed=4)
    boxes = _random_boxes(5, seed=6)
    y = space.encode(boxes, ref)
    torch.testing.assert_close(space.encode(boxes, ref, check=False), y, rtol=0, atol=1e-12)
    g_boxes = torch.randn(5, 4, dtype=f64)
    yy = y.clone().requires_grad_(True)
    expected, = torch.autograd.grad((space.decode(yy, ref) * g_boxes).sum(), yy)
    torch.testing.assert_close(space.decode_vjp(g_boxes, y, ref), expected, rtol=0, atol=1e-12)


def test_full_energy_gradient_in_the_box_space_equals_autograd():
    """RoI features -> fc stack -> class score, differentiated in (cx/w0, cy/h0, log w, log h):
    the whole chain written out against autograd through roi_grid_sample and the same layers."""
    feats, strides = _pyramid('cpu')
    pyr = flatten_pyramid(feats, strides)
    s, r, c = 4, 2, 3
    mlp = _mlp(c * s * s, (12, 12), 3)
    ref = torch.cat([_random_boxes(10, seed=8), _integer_point_boxes('cpu')])
    n = ref.shape[0]
    batch_idx, labels = torch.arange(n) % 2, torch.arange(n) % 3
    levels = map_fpn_levels(ref, 2, finest_scale=16.0)
    assert levels.unique().numel() == 2
    noise = torch.randn(n, 4, dtype=f64, generator=torch.Generator().manual_seed(9))
    y = RelativeBox2DSpace().encode(ref, ref) + 0.01 * noise
    # autograd: the eager path's chain (channels-first features, the layer's own column order)
    w1_cfirst = mlp.weights[0].reshape(-1, s, s, c).permute(0, 3, 1, 2).reshape(mlp.weights[0].shape[0], -1)
    mlp_cfirst = MLPWeights((w1_cfirst, ) + mlp.weights[1:], mlp.biases)
    yy = y.clone().requires_grad_(True)
    rois = roi_grid_sample(feats, RelativeBox2DSpace().decode(yy, ref), batch_idx, levels, strides, s, r)
    h = rois.flatten(1)
    for w, b in zip(mlp_cfirst.weights[:-1], mlp_cfirst.biases[:-1]):
        h = torch.relu(h @ w.t() + b)
    expected_f = (h @ mlp_cfirst.weights[-1].t() + mlp_cfirst.biases[-1]).gather(1, labels[:, None])[:, 0]
    expected_g, = torch.autograd.grad(expected_f.sum(), yy)
    boxes = RelativeBox2DSpace().decode(y, ref)
    samples = roi_grid_features(pyr, boxes, batch_idx, levels, s, r)
    f, g = mlp_score_and_grad(mlp, samples.features.flatten(1), labels)
    g_y = RelativeBox2DSpace().decode_vjp(roi_grid_box_grad(samples, g.reshape(samples.features.shape), r), y, ref)
    torch.testing.assert_close(f, expected_f.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(g_y, expected_g, rtol=0, atol=1e-6)


def test_map_fpn_levels_is_mmdet_rule():
    boxes = torch.tensor([[0., 0., 10., 10.], [0., 0., 112., 112.], [0., 0., 111., 112.], [0., 0., 500., 900.]])
    assert map_fpn_levels(boxes, 4).tolist() == [0, 1, 0, 3]
    mmdet = pytest.importorskip('mmdet.models.roi_heads.roi_extractors')
    extractor = mmdet.SingleRoIExtractor(roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=2),
                                         out_channels=8, featmap_strides=[4, 8, 16, 32])
    many = _random_boxes(200, seed=3).float().abs() * 8
    many[:, 2:] = many[:, :2] + many[:, 2:].clamp(min=1)
    rois = torch.cat([many.new_zeros(200, 1), many], 1)
    assert torch.equal(map_fpn_levels(many, 4), extractor.map_roi_levels(rois, 4))


def test_select_for_refinement_static_equals_eager():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(40, generator=g)
    scores[3] = float('nan')
    valid = torch.rand(40, generator=g) > 0.2
    batch_idx = torch.randint(0, 3, (40, ), generator=g)
    for thr, cap in ((0.0, 100), (0.3, 4), (0.0, 0), (0.5, 1)):
        expected = select_for_refinement(scores, valid, batch_idx, 3, thr, cap)
        assert torch.equal(select_for_refinement_static(scores, valid, batch_idx, thr, cap), expected)
    assert select_for_refinement_static(scores[:0], valid[:0], batch_idx[:0], 0.0, 5).shape == (0, )


class _QuadraticEnergy:
    """f(b) = -sum w (b - target)^2 / 2 per box, per-class weights: an energy with an exact gradient,
    as a ``RefinableHead`` for ``refine_boxes`` and a ``BoxEnergy`` for the static loop. ``starts``:
    the boxes refined, by which the eager path's rows find their targets."""

    def __init__(self, target, labels, starts, codec=None, class_weight=(1.0, 0.3, 3.0)):
        self.codec = codec or Box2DCodec()
        self.target, self.labels, self.starts = target, labels, starts
        self.class_weight = torch.tensor(class_weight, dtype=target.dtype)

    def _f(self, boxes, labels, rows):
        w = self.class_weight[labels][:, None]
        return -0.5 * (w * (boxes - self.target[rows])**2).sum(-1)

    # the eager head's interface (``RefinableHead``)
    def prepare_features(self, feats):
        return feats

    def box_context(self, boxes, batch_idx):
        # each box's own target: its row, found by its start box
        return dict(rows=(boxes[:, None, :] == self.starts[None]).all(-1).float().argmax(1))

    def group_order(self, prepared, batch_idx, context):
        return None

    def score(self, prepared, boxes, batch_idx, labels, rows):
        return self._f(boxes, labels, rows)

    # the static loop's interface
    def __call__(self, boxes, context, need_grad):
        w = self.class_weight[self.labels][:, None]
        f = -0.5 * (w * (boxes - self.target)**2).sum(-1)
        return f, -(w * (boxes - self.target))


@pytest.mark.parametrize('cfg', [
    RefineConfig(num_steps=6, step_sizes=0.2),
    RefineConfig(num_steps=6, step_sizes=(0.5, 0.5, 2.0, 2.0), decay=0.25, score_thr=0.3, max_per_img=3),
    RefineConfig(num_steps=8, step_sizes=0.3, tol=0.02, min_gain=(0.0, 5.0, float('inf'))),
])
def test_static_loop_equals_refine_boxes_on_a_quadratic(cfg):
    """Selection, the accept / revert / halve rule, convergence, clipping (with rescoring), the
    validity rule and the gate: the same boxes, scores and flags as ``refine_boxes``."""
    g = torch.Generator().manual_seed(1)
    n = 14
    boxes = _random_boxes(n, seed=2).abs() + 1
    boxes[:, 2:] = boxes[:, :2] + 10 + 20 * torch.rand(n, 2, generator=g, dtype=f64)
    target = boxes + 8 * torch.randn(n, 4, generator=g, dtype=f64)
    target[5] = torch.tensor([-30., 10., -5., 40.], dtype=f64)  # pulled out of the image: clipped
    boxes[7, 2] = boxes[7, 0] + 0.5  # too narrow: never refined
    boxes[8, 1] = float('nan')
    target[8] = 0.0
    boxes[10] = torch.tensor([75., 70., 90., 85.], dtype=f64)  # wholly outside its image (w = 50): never refined
    batch_idx = torch.arange(n) % 3
    labels = torch.arange(n) % 3
    scores = torch.rand(n, generator=g, dtype=f64).float()
    img_shapes = torch.tensor([[60, 70], [80, 50], [64, 64]])
    energy = _QuadraticEnergy(target, labels, boxes.nan_to_num(0.0))
    expected = refine_boxes(energy, None, boxes, batch_idx, labels, cfg, scores=scores, img_shapes=img_shapes)
    out = static_refine_boxes(energy, boxes, batch_idx, labels, cfg, energy.codec, scores, img_shapes)
    torch.testing.assert_close(out.boxes, expected.boxes, rtol=0, atol=1e-9, equal_nan=True)
    torch.testing.assert_close(out.ebm_scores, expected.ebm_scores, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.init_scores, expected.init_scores, rtol=0, atol=1e-6)
    assert torch.equal(out.refined, expected.refined)
    assert not out.refined[7] and not out.refined[8] and not out.refined[10]
    assert out.refined.any() and (~out.refined).sum() > 2


def test_static_loop_empty():
    energy = _QuadraticEnergy(torch.zeros(0, 4, dtype=f64), torch.zeros(0, dtype=torch.long), None)
    idx = torch.zeros(0, dtype=torch.long)
    out = static_refine_boxes(energy, torch.zeros(0, 4, dtype=f64), idx, idx, RefineConfig(num_steps=3),
                                 energy.codec, torch.zeros(0), torch.zeros(0, 2, dtype=torch.long))
    assert out.boxes.shape == (0, 4) and out.ebm_scores.shape == (0, ) and out.refined.shape == (0, )


def test_static_loop_refuses_autocast():
    energy = _QuadraticEnergy(torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), None)
    with pytest.raises(ValueError, match='autocast'):
        static_refine_boxes(energy, torch.zeros(1, 4), torch.zeros(1, dtype=torch.long),
                               torch.zeros(1, dtype=torch.long), RefineConfig(autocast='bfloat16'), energy.codec)


# ------------------------------------------------------------------------------- 3D: rotated BEV grid
BEV_RANGE = (-8.0, -4.0, 8.0, 4.0)  # 16 x 8 m on a 32 x 16 map: 0.5 m pixels, exact in binary


def _bev(device, frames=3, channels=3, size=(16, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(frames, channels, *size, generator=g, dtype=f64).to(device)


def _random_lidar_boxes(n, seed=1, device='cpu'):
    """LiDAR boxes over the map and past its border (x in [-11, 11], y in [-6, 6]), any yaw."""
    g = torch.Generator().manual_seed(seed)
    xy = (torch.rand(n, 2, generator=g, dtype=f64) * 2 - 1) * torch.tensor([11.0, 6.0], dtype=f64)
    z = torch.randn(n, 1, generator=g, dtype=f64)
    lwh = torch.rand(n, 3, generator=g, dtype=f64) * torch.tensor([4.0, 2.0, 1.5], dtype=f64) + 0.5
    yaw = (torch.rand(n, 1, generator=g, dtype=f64) * 2 - 1) * 3.1
    return torch.cat([xy, z, lwh, yaw], 1).to(device)


def _integer_point_lidar_boxes(device):
    """Grid (n_w, n_l) = (2, 4) at yaw 0 and pi / 2: the points of a 2 m x 1 m box centred on a pixel
    corner sit at pixel centres (integer bilinear index: where the derivative switches corners) or
    on pixel corners (integer map coordinates), inside and across the map's border."""
    half_pi = torch.pi / 2
    return torch.tensor([
        [0.0, 0.0, 0.0, 2.0, 1.0, 1.0, 0.0],  # points at +-0.25, +-0.75 m: pixel centres
        [0.25, 0.25, 0.0, 2.0, 1.0, 1.0, 0.0],  # shifted a quarter pixel: on pixel corners
        [-7.75, 3.75, 0.0, 2.0, 1.0, 1.0, 0.0],  # across the left and top border
        [8.0, -4.0, 0.0, 2.0, 1.0, 1.0, half_pi],  # on the corner of the map, rotated
        [20.0, 0.0, 0.0, 2.0, 1.0, 1.0, 0.0],  # wholly outside the map
    ], dtype=f64, device=device)


def _check_bev_sampler(device, boxes, batch_idx, grid_size, bev=None):
    bev = _bev(device) if bev is None else bev
    n, c = boxes.shape[0], bev.shape[1]
    weight = torch.randn(n, c, *grid_size, dtype=f64, generator=torch.Generator().manual_seed(3)).to(device)
    b = boxes.clone().requires_grad_(True)
    expected = rotated_bev_grid_sample(bev, b, batch_idx, BEV_RANGE, grid_size)
    expected_grad, = torch.autograd.grad((expected * weight).sum(), b, allow_unused=True)
    expected_grad = torch.zeros_like(boxes) if expected_grad is None else expected_grad
    samples = rotated_bev_features(flatten_pyramid([bev], [1.0]), boxes, batch_idx, BEV_RANGE, grid_size)
    torch.testing.assert_close(samples.features.permute(0, 3, 1, 2), expected.detach(), rtol=0, atol=1e-12)
    grad = rotated_bev_box_grad(samples, weight.permute(0, 2, 3, 1))
    assert grad.shape == (n, 7)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-6)
    return grad


@pytest.mark.parametrize('device', devices)
@pytest.mark.parametrize('grid_size', [(4, 7), (2, 4), (1, 1)])
def test_bev_box_grad_equals_autograd_across_the_border(device, grid_size):
    """Random LiDAR boxes of three frames, many across the map border, every yaw: equal features,
    and x, y, l, w, yaw gradients equal to autograd's through F.grid_sample (z, h: 0)."""
    boxes = _random_lidar_boxes(30, device=device)
    batch_idx = torch.arange(30, device=device) % 3
    grad = _check_bev_sampler(device, boxes, batch_idx, grid_size)
    assert grad[:, [0, 1, 3, 4, 6]].abs().sum() > 0 and torch.equal(grad[:, [2, 5]], torch.zeros_like(grad[:, [2, 5]]))


@pytest.mark.parametrize('device', devices)
def test_bev_box_grad_with_sample_points_on_integer_coordinates(device):
    boxes = _integer_point_lidar_boxes(device)
    grad = _check_bev_sampler(device, boxes, torch.tensor([0, 1, 2, 0, 1], device=device), (2, 4))
    assert torch.equal(grad[-1], torch.zeros_like(grad[-1]))  # outside the map: zeros, no gradient


@pytest.mark.parametrize('device', devices)
def test_bev_box_grad_odd_map_and_empty(device):
    bev = _bev(device, frames=2, channels=2, size=(13, 21), seed=4)
    boxes = _random_lidar_boxes(12, seed=5, device=device)
    _check_bev_sampler(device, boxes, torch.arange(12, device=device) % 2, (4, 7), bev=bev)
    samples = rotated_bev_features(flatten_pyramid([bev], [1.0]), boxes[:0], torch.zeros(0, dtype=torch.long,
                                                                                         device=device), BEV_RANGE)
    assert samples.features.shape == (0, 4, 7, 2)
    assert rotated_bev_box_grad(samples, samples.features).shape == (0, 7)


class _ExplicitBEV(torch.autograd.Function):
    """<weight, BEV grid features> with our explicit box gradient as its backward, for gradcheck."""

    @staticmethod
    def forward(ctx, boxes, pyr, batch_idx, weight):
        samples = rotated_bev_features(pyr, boxes, batch_idx, BEV_RANGE, (3, 5))
        ctx.save_for_backward(rotated_bev_box_grad(samples, weight))
        return (samples.features * weight).sum()

    @staticmethod
    def backward(ctx, grad_out):
        grad, = ctx.saved_tensors
        return grad * grad_out, None, None, None


def test_bev_box_grad_gradcheck():
    pyr = flatten_pyramid([_bev('cpu')], [1.0])
    boxes = _random_lidar_boxes(6, seed=11).requires_grad_(True)
    batch_idx = torch.tensor([0, 1, 2, 0, 1, 2])
    weight = torch.randn(6, 3, 5, 3, dtype=f64, generator=torch.Generator().manual_seed(2))
    assert gradcheck(lambda b: _ExplicitBEV.apply(b, pyr, batch_idx, weight), (boxes, ), eps=1e-6, atol=1e-5)


def test_relu_mlp_input_grad_equals_autograd():
    mlp = _mlp(1, (6, ), 6)
    x = torch.randn(9, 1, dtype=f64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    h = x
    for w, b in zip(mlp.weights, mlp.biases):
        h = torch.relu(h @ w.t() + b)
    g_out = torch.randn(9, 6, dtype=f64)
    expected, = torch.autograd.grad((h * g_out).sum(), x)
    out, hidden = relu_mlp(mlp, x.detach())
    torch.testing.assert_close(out, h.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(relu_mlp_input_grad(mlp, hidden, g_out), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize('normalized', [False, True])
def test_box3d_decode_vjp_equals_autograd(normalized):
    space = Box3DSpace(normalized=normalized)
    ref = _random_lidar_boxes(6, seed=2)
    y = space.encode(_random_lidar_boxes(6, seed=3), ref)
    torch.testing.assert_close(space.encode(_random_lidar_boxes(6, seed=3), ref, check=False), y, rtol=0, atol=0)
    g = torch.randn(6, 7, dtype=f64)
    yy = y.clone().requires_grad_(True)
    expected, = torch.autograd.grad((space.decode(yy, ref) * g).sum(), yy)
    torch.testing.assert_close(space.decode_vjp(g, y, ref), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize('normalized', [False, True])
@pytest.mark.parametrize('cfg', [
    RefineConfig(num_steps=6, step_sizes=0.2),
    RefineConfig(num_steps=8, step_sizes=(0.3, 0.3, 0.1, 0.2, 0.2, 0.1, 0.5), decay=0.25, score_thr=0.3,
                 max_per_img=3, tol=0.01, min_gain=(0.0, 5.0, float('inf'))),
])
def test_static_loop_equals_refine_boxes_on_a_quadratic_3d(cfg, normalized):
    """LiDAR boxes of three frames: selection, accept / revert / halve, the space's projection
    (yaw wrapped, absolute sizes clamped), convergence, validity and the gate, as ``refine_boxes``."""
    g = torch.Generator().manual_seed(1)
    n = 15
    boxes = _random_lidar_boxes(n, seed=2)
    spread = torch.tensor([1, 1, 0.3, 0.5, 0.3, 0.2, 1.5], dtype=f64)
    target = boxes + torch.randn(n, 7, generator=g, dtype=f64) * spread
    target[2, 6] = boxes[2, 6] + 3.0  # pulled across +-pi: yaw wraps
    target[4, 3:6] = -1.0  # sizes pulled below zero: clamped (absolute) or shrinking (normalized)
    boxes[7, 4] = 0.0  # zero width: never refined
    boxes[8, 1] = float('nan')
    target[8] = 0.0
    batch_idx = torch.arange(n) % 3
    labels = torch.arange(n) % 3
    scores = torch.rand(n, generator=g, dtype=f64).float()
    energy = _QuadraticEnergy(target, labels, boxes.nan_to_num(0.0), codec=LiDARBoxCodec(normalized=normalized))
    expected = refine_boxes(energy, None, boxes, batch_idx, labels, cfg, scores=scores)
    out = static_refine_boxes(energy, boxes, batch_idx, labels, cfg, energy.codec, scores)
    torch.testing.assert_close(out.boxes, expected.boxes, rtol=0, atol=1e-9, equal_nan=True)
    torch.testing.assert_close(out.ebm_scores, expected.ebm_scores, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.init_scores, expected.init_scores, rtol=0, atol=1e-6)
    assert torch.equal(out.refined, expected.refined)
    assert not out.refined[7] and not out.refined[8]
    assert out.refined.sum() >= 3
    assert (out.boxes[:, 6].nan_to_num(0.0).abs() <= torch.pi).all()


def test_static_loop_empty_3d():
    energy = _QuadraticEnergy(torch.zeros(0, 7, dtype=f64), torch.zeros(0, dtype=torch.long), None,
                              codec=LiDARBoxCodec())
    idx = torch.zeros(0, dtype=torch.long)
    out = static_refine_boxes(energy, torch.zeros(0, 7, dtype=f64), idx, idx, RefineConfig(num_steps=3),
                              energy.codec, torch.zeros(0))
    assert out.boxes.shape == (0, 7) and out.ebm_scores.shape == (0, ) and out.refined.shape == (0, )


# ------------------------------------------------------------------------- CUDA-graph capturability
def _sampled_energy(dim, device, dtype=torch.float32):
    """A head-like energy from the core's pieces: RoI grid (2D, two levels) or rotated BEV grid (3D)
    -> a random fc stack; its inputs (boxes, batch_idx, labels, scores) and codec."""
    g = torch.Generator().manual_seed(0)
    n = 12
    batch_idx = (torch.arange(n) % 3).to(device)
    labels = (torch.arange(n) % 3).to(device)
    scores = torch.rand(n, generator=g).to(device)
    if dim == 2:
        feats, strides = _pyramid('cpu', sizes=((3, 3, 16, 16), (3, 3, 8, 8)))
        pyr = flatten_pyramid([f.to(device, dtype) for f in feats], strides)
        boxes = _random_boxes(n).abs().to(device, dtype) + 1
        mlp = _mlp(3 * 16, (16, ), 3)

        def energy(b, context, need_grad):
            samples = roi_grid_features(pyr, b, batch_idx, map_fpn_levels(context, 2, 16.0), 4, 2)
            f, grad = mlp_score_and_grad(mlp_d, samples.features.flatten(1), labels, need_grad)
            return f, (roi_grid_box_grad(samples, grad.reshape(samples.features.shape), 2) if need_grad else None)
        codec = Box2DCodec()
    else:
        pyr = flatten_pyramid([_bev('cpu').to(device, dtype)], [1.0])
        boxes = _random_lidar_boxes(n).to(device, dtype)
        mlp = _mlp(3 * 2 * 4, (16, ), 3)

        def energy(b, context, need_grad):
            samples = rotated_bev_features(pyr, b, batch_idx, BEV_RANGE, (2, 4))
            f, grad = mlp_score_and_grad(mlp_d, samples.features.flatten(1), labels, need_grad)
            return f, (rotated_bev_box_grad(samples, grad.reshape(samples.features.shape)) if need_grad else None)
        codec = LiDARBoxCodec()
    mlp_d = MLPWeights(tuple(w.to(device, dtype) for w in mlp.weights), tuple(b.to(device, dtype) for b in mlp.biases))
    return energy, codec, boxes, batch_idx, labels, scores


@pytest.mark.parametrize('dim', [2, 3])
def test_static_loop_builds_nothing_from_host_data(dim):
    """What a CUDA-graph capture refuses, checked on the CPU: no tensor built from host data
    (``lift_fresh``: a host-to-device copy on CUDA) and no host read (``_local_scalar_dense``), with
    a per-class gate, caps and ``tol`` set."""
    energy, codec, boxes, batch_idx, labels, scores = _sampled_energy(dim, 'cpu')
    cfg = RefineConfig(num_steps=2, step_sizes=0.05, tol=1e-3, score_thr=0.1, max_per_img=3, min_gain=(0.0, 0.1, 0.0))
    shapes = torch.tensor([[64, 64]] * 3) if dim == 2 else None
    with OpRecorder() as rec:
        static_refine_boxes(energy, boxes, batch_idx, labels, cfg, codec, scores, shapes)
    assert not {'aten.lift_fresh', 'aten.lift_fresh_copy', 'aten._local_scalar_dense'} & rec.ops, sorted(rec.ops)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA graphs need a CUDA device')
@pytest.mark.parametrize('dim', [2, 3])
def test_static_loop_cuda_graph_replay_equals_eager_cuda(dim):
    """The fixed-shape loop captured once by ``torch.cuda.CUDAGraph`` and replayed gives the eager
    loop's outputs, and a replay after the inputs are overwritten in place follows the new inputs."""
    energy, codec, boxes, batch_idx, labels, scores = _sampled_energy(dim, 'cuda')
    cfg = RefineConfig(num_steps=4, step_sizes=0.05, score_thr=0.1, max_per_img=3, min_gain=(0.0, 0.01, 0.0))
    shapes = torch.tensor([[64, 64]] * 3, device='cuda') if dim == 2 else None
    args = (energy, boxes, batch_idx, labels, cfg, codec, scores, shapes)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        static_refine_boxes(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = static_refine_boxes(*args)
    for step in range(2):
        if step:
            scores.copy_(scores.flip(0))  # new inputs in the captured tensors
        graph.replay()
        torch.cuda.synchronize()
        expected = static_refine_boxes(*args)
        for a, b in zip(out, expected):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5, equal_nan=True)
    assert expected.refined.any()
