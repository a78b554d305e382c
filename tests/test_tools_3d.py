"""The pure pieces of the 3D tools: tools/benchmarks/kitti_3d.py (generator command, training
schedule, head variants, scoring helpers, report) and tools/visualize_bev.py (panels, footprints).
Nothing here trains or runs a detector."""
import argparse
import subprocess

import numpy as np
import pytest

from conftest import ROOT, load_tool

pytest.importorskip('mmdet3d')
torch = pytest.importorskip('torch')

bench = load_tool('tools/benchmarks/kitti_3d.py')
bev = load_tool('tools/visualize_bev.py')


def test_cli_flags_and_defaults():
    args = bench.parse_args([])
    assert (args.num_train, args.num_val, args.seed) == (300, 100, 0)
    assert (args.det_iters, args.ebm_iters, args.num_samples, args.num_steps) == (300, 200, 128, 10)
    assert args.step_sizes == [2e-4, 2e-3, 2e-2] and not args.normalized and not args.retrain
    assert args.out.endswith('docs/figures/kitti_3d.md')


def test_generator_command_uses_the_generators_own_flags():
    cmd = bench.generator_command('/tmp/x', 4, 3, 7)
    assert cmd[1] == bench.GENERATOR
    flags = [a for a in cmd[2:] if a.startswith('--')]
    assert dict(zip(flags, cmd[3::2])) == {'--out': '/tmp/x', '--num-train': '4', '--num-val': '3', '--seed': '7'}
    usage = subprocess.run(cmd[:2] + ['--help'], capture_output=True, text=True, check=True).stdout
    assert all(flag in usage for flag in flags)


def test_frames_in_infos_missing(tmp_path):
    assert bench.frames_in_infos(str(tmp_path)) is None


@pytest.mark.parametrize('max_iters, warm', [(10, 3), (2, 1)])
def test_shorten_schedule_rescales_the_one_cycle(tmp_path, max_iters, warm):
    cfg = bench.load_config(bench.EBM_CONFIG, str(tmp_path), str(tmp_path / 'work'))
    assert cfg.test_dataloader.dataset.data_root == str(tmp_path) + '/'
    bench.shorten_schedule(cfg, max_iters)
    up, down = cfg.param_scheduler
    assert (up.begin, up.end, up.T_max) == (0, warm, warm)
    assert (down.begin, down.end, down.T_max) == (warm, max_iters, max_iters - warm)
    assert cfg.train_cfg.max_iters == max_iters and cfg.default_hooks.checkpoint.interval == max_iters
    assert cfg.val_cfg is None and cfg.val_evaluator is None


def test_head_options_build_the_heads_they_name(tmp_path):
    from mmdet3d.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet3d')  # another test may have left mmdet's scope current
    heads = bench.head_options(num_samples=16, normalized=True)
    assert list(heads) == ['absolute', 'normalized']
    for name, options in heads.items():
        cfg = bench.load_config(bench.EBM_CONFIG, str(tmp_path), options=options)
        head = MODELS.build(cfg.model.ebm_head)
        assert type(head.loss_fn).__name__ == bench.EBM_LOSS and head.loss_fn.num_samples == 16
        assert head.codec.space.normalized == (name == 'normalized')
    sigmas = torch.as_tensor(bench.NORMALIZED_SIGMAS, dtype=head.noise.sigmas.dtype)
    torch.testing.assert_close(head.noise.sigmas, sigmas)


def test_variant_names_and_labels():
    v = bench.Variant('absolute', 2e-4)
    assert v.name == 'absolute_0.0002' and v.label == '+ EBM (absolute), lambda=0.0002'


def test_with_sample_idx_gives_empty_frames_their_index():
    annos = [dict(name=np.array(['Car', 'Car'])), dict(name=np.array([]))]
    out = bench.with_sample_idx(annos, [5, 9])
    assert out[0]['sample_idx'].tolist() == [5, 5] and out[1]['sample_idx'].tolist() == [9]


def test_check_strict_ap():
    ap = {'BEV@0.7': 10.0, '3D@0.7': 5.0}
    ref = {bench.INIT_STRICT_KEY.format('BEV'): 10.0, bench.INIT_STRICT_KEY.format('3D'): 5.0}
    bench.check_strict_ap(ap, ref)
    with pytest.raises(RuntimeError, match='3D'):
        bench.check_strict_ap({**ap, '3D@0.7': 6.0}, ref)


def test_markdown_table_and_settings():
    base = {'BEV@0.7': 10.0, '3D@0.7': 5.0, 'BEV@0.8': 2.0, '3D@0.8': 1.0}
    rows = [dict(name='detector (before)', **base, ref_ms=0.0),
            dict(name='+ EBM (absolute), lambda=0.002', **{k: v + 1.5 for k, v in base.items()}, ref_ms=12.3,
                 ratio=0.25)]
    res = dict(rows=rows, det_ms=100.0, frames=4, boxes_per_frame=2.5, batch_size=4, decay=0.5)
    args = argparse.Namespace(num_train=8, seed=0, det_iters=2, ebm_iters=2, num_samples=128, num_steps=10,
                              normalized=False)
    md = bench.markdown(res, args, 'nice -n 5 python tools/benchmarks/kitti_3d.py', 0.5)
    lines = md.splitlines()
    header = lines.index('| boxes | BEV @0.7 | 3D @0.7 | BEV @0.8 | 3D @0.8 | refine ms / frame '
                         '| refine / detector time |')
    assert lines[header + 1] == '|---|---|---|---|---|---|---|'
    assert lines[header + 2] == '| detector (before) | 10.00 | 5.00 | 2.00 | 1.00 | - | - |'
    assert lines[header + 3] == ('| + EBM (absolute), lambda=0.002 | 11.50 (+1.50) | 6.50 (+1.50) | 3.50 (+1.50) '
                                 '| 2.50 (+1.50) | 12 | 0.25 |')
    assert 'decay 0.5' in md and '2.5 boxes per frame' in md and 'batches of 4 frames' in md
    assert md.rstrip().endswith('```') and 'nice -n 5 python tools/benchmarks/kitti_3d.py' in md


def test_command_line_is_relative_to_the_repository():
    assert bench.command_line(['--normalized']) == 'nice -n 5 python tools/benchmarks/kitti_3d.py --normalized'


def _lidar_boxes(rows):
    from mmdet3d.structures import LiDARInstance3DBoxes
    return LiDARInstance3DBoxes(torch.tensor(rows, dtype=torch.float32))


def test_bev_corners_of_an_axis_aligned_box():
    corners = bev.bev_corners(_lidar_boxes([[10.0, 2.0, -1.0, 4.0, 2.0, 1.5, 0.0]]))
    assert corners.shape == (1, 4, 2)
    np.testing.assert_allclose(np.sort(np.unique(corners[0, :, 0])), [8.0, 12.0], atol=1e-5)
    np.testing.assert_allclose(np.sort(np.unique(corners[0, :, 1])), [1.0, 3.0], atol=1e-5)


def test_panels_zoom_on_the_largest_move():
    before = _lidar_boxes([[10.0, 0.0, -1.0, 4.0, 2.0, 1.5, 0.0], [20.0, 5.0, -1.0, 4.0, 2.0, 1.5, 0.0]])
    after = _lidar_boxes([[10.1, 0.0, -1.0, 4.0, 2.0, 1.5, 0.0], [20.0, 5.5, -1.0, 4.0, 2.0, 1.5, 0.0]])
    views = bev.panels(before, after, (0, -20, -3, 40, 20, 1), zoom=12.0)
    assert views[0] == ('whole frame', (0, 40, -20, 20))
    title, extent = views[1]
    assert '50 cm' in title
    np.testing.assert_allclose(extent, (14.0, 26.0, -0.5, 11.5))
    assert len(bev.panels(before, after, (0, -20, -3, 40, 20, 1), zoom=0)) == 1


def test_tools_need_no_sys_path_or_private_state():
    for rel in ('tools/benchmarks/kitti_3d.py', 'tools/visualize_bev.py'):
        text = (ROOT / rel).read_text()
        for banned in ('sys.path', 'spec_from_file_location', '._feats', 'refine_instances_3d', 'MODELS.build'):
            assert banned not in text, (rel, banned)
