"""The pure pieces of the 3D tools: tools/benchmarks/kitti_3d.py (generator command, fit / tune
split, training schedule and reuse, head variants, the lambda choice on the tune split only, scoring
helpers, report) and tools/visualize_bev.py (panels, footprints). Nothing here trains or runs a
detector."""
import argparse
import io
import os
import re
import subprocess
import tokenize

import numpy as np
import pytest

from conftest import ROOT

pytest.importorskip('mmdet3d')
torch = pytest.importorskip('torch')

from tools import visualize_bev as bev  # noqa: E402
from tools.benchmarks import kitti_3d as bench  # noqa: E402


def test_cli_flags_and_defaults():
    args = bench.parse_args([])
    assert (args.num_train, args.num_tune, args.num_val, args.seed) == (350, 50, 100, 0)
    assert (args.det_iters, args.ebm_iters, args.num_samples, args.num_steps) == (3000, 600, 128, 10)
    assert args.step_sizes == [2e-4, 2e-3, 2e-2] and args.head_updates == 1
    assert not args.normalized and not args.retrain
    assert args.out.endswith('docs/figures/kitti_3d.md')
    for bad in (['--num-tune', '0'], ['--num-train', '50'], ['--head-updates', '0']):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_generator_command_uses_the_generators_own_flags():
    cmd = bench.generator_command('/tmp/x', 4, 3, 7)
    assert cmd[1:3] == ['-m', bench.GENERATOR]
    flags = [a for a in cmd[3:] if a.startswith('--')]
    assert dict(zip(flags, cmd[4::2])) == {'--out': '/tmp/x', '--num-train': '4', '--num-val': '3', '--seed': '7'}
    usage = subprocess.run(cmd[:3] + ['--help'], capture_output=True, text=True, check=True).stdout
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


@pytest.mark.parametrize('prefix', ['Kitti metric', 'Kitti metric_init'])  # a variant's boxes, the detector's
def test_check_strict_ap(prefix):
    ap = {'BEV@0.7': 10.0, '3D@0.7': 5.0, 'BEV@0.8': 1.0}
    ref = {prefix + bench.STRICT_KEY.format('BEV'): 10.0, prefix + bench.STRICT_KEY.format('3D'): 5.0,
           prefix + bench.STRICT_KEY.format('2D'): 99.0}  # KittiMetric's other strict AP: not compared
    bench.check_strict_ap(ap, ref)
    with pytest.raises(RuntimeError, match='3D'):
        bench.check_strict_ap({**ap, '3D@0.7': 6.0}, ref)


def _rows(base, step_sizes_and_gains, head='absolute'):
    """A detector row with AP ``base`` and one row per (lambda, AP gain) of ``head``."""
    rows = [dict(name='detector (before)', head=None, step_size=None, **base, ref_ms=0.0)]
    for lam, gain in step_sizes_and_gains:
        rows.append(dict(name=bench.Variant(head, lam).label, head=head, step_size=lam,
                         **{k: v + gain for k, v in base.items()}, ref_ms=12.3, ratio=0.25))
    return rows


def _pass(split, rows, frames):
    return dict(split=split, rows=rows, det_ms=100.0, frames=frames, boxes_per_frame=2.5, batch_size=4, decay=0.5)


BASE_AP = {'BEV@0.7': 10.0, '3D@0.7': 5.0, 'BEV@0.8': 2.0, '3D@0.8': 1.0}


def test_markdown_val_table_tuning_sweep_and_settings():
    tune = _pass('tune', _rows(BASE_AP, [(2e-4, 0.5), (2e-3, 1.5)]), frames=3)
    val = _pass('val', _rows(BASE_AP, [(2e-3, 1.5)]), frames=4)
    training = dict(detector=dict(iters=2, minutes=1.5, seconds_per_iter=45.0),
                    heads=dict(absolute=dict(iters=2, minutes=0.5, seconds_per_iter=15.0)))
    res = dict(tune=tune, val=val, chosen=dict(absolute=2e-3), training=training)
    args = argparse.Namespace(num_train=8, num_tune=3, seed=0, det_iters=2, ebm_iters=2, num_samples=128,
                              num_steps=10, normalized=False, head_updates=4, step_sizes=[2e-4, 2e-3])
    md = bench.markdown(res, args, 'nice -n 5 python -m tools.benchmarks.kitti_3d', 0.5)
    lines = md.splitlines()
    val_title = next(i for i, line in enumerate(lines) if line.startswith('## Val'))
    tune_title = next(i for i, line in enumerate(lines) if line.startswith('## Tuning split'))
    assert val_title < tune_title and '4 frames, scored once' in lines[val_title]
    assert '3 held-out training frames, not val' in lines[tune_title]
    header = lines.index('| boxes | BEV @0.7 | 3D @0.7 | BEV @0.8 | 3D @0.8 | refine ms / frame '
                         '| refine / detector time | EBM training min | s / iteration |')
    assert val_title < header < tune_title
    assert lines[header + 1] == '|---|---|---|---|---|---|---|---|---|'
    assert lines[header + 2] == '| detector (before) | 10.00 | 5.00 | 2.00 | 1.00 | - | - | - | - |'
    assert lines[header + 3] == ('| + EBM (absolute), lambda=0.002 | 11.50 (+1.50) | 6.50 (+1.50) | 3.50 (+1.50) '
                                 '| 2.50 (+1.50) | 12 | 0.25 | 0.5 | 15.00 |')
    assert lines[header + 4] == ''  # the val table has one row per head, at its chosen lambda
    tune_header = lines.index('| boxes | BEV @0.7 | 3D @0.7 | BEV @0.8 | 3D @0.8 | refine ms / frame '
                              '| refine / detector time |')
    assert tune_header > tune_title and lines[tune_header + 1] == '|---|---|---|---|---|---|---|'
    assert [line.split(' | ')[0] for line in lines[tune_header + 2:tune_header + 5]] == [
        '| detector (before)', '| + EBM (absolute), lambda=0.0002', '| + EBM (absolute), lambda=0.002']
    assert 'Chosen: absolute lambda=0.002.' in md and 'Candidates 0.0002 / 0.002' in md
    assert 'first 5 of its 8 training frames' in md and 'the other 3 are the tuning split' in md
    assert 'K = 4 optimiser steps' in md and 'model.head_updates=4' in md and '8 steps in all' in md
    assert '(1.5 min)' in md  # the detector's training time
    assert 'decay 0.5' in md and '2.5 boxes per val frame' in md and 'batches of 4 frames' in md
    assert md.rstrip().endswith('```') and 'nice -n 5 python -m tools.benchmarks.kitti_3d' in md


def test_command_line_runs_the_module():
    assert bench.command_line(['--normalized']) == 'python -m tools.benchmarks.kitti_3d --normalized'


def _write_train_infos(root, num_frames):
    """A ``kitti_infos_train.pkl`` of the generator's v2 layout (metainfo + data_list), small."""
    import mmengine
    infos = dict(metainfo=dict(categories={'Car': 0}, dataset='kitti', info_version='1.1'),
                 data_list=[dict(sample_idx=i, lidar_points=dict(num_pts_feats=4, lidar_path=f'{i:06d}.bin'),
                                 instances=[dict(bbox_label=0, bbox_3d=[i, 0.0, 0.0, 4.0, 1.7, 1.5, 0.0])])
                            for i in range(num_frames)])
    mmengine.dump(infos, str(root / bench.info_file(bench.TRAIN)))
    return infos


def test_split_train_infos_fit_and_tune_partition_the_train_split(tmp_path):
    import mmengine
    infos = _write_train_infos(tmp_path, 7)
    paths = bench.split_train_infos(str(tmp_path), 3)
    assert paths == {bench.FIT: str(tmp_path / 'kitti_infos_fit.pkl'),
                     bench.TUNE: str(tmp_path / 'kitti_infos_tune.pkl')}
    fit, tune = (mmengine.load(paths[split]) for split in (bench.FIT, bench.TUNE))
    assert fit['data_list'] == infos['data_list'][:4] and tune['data_list'] == infos['data_list'][4:]
    fit_ids = {d['sample_idx'] for d in fit['data_list']}
    tune_ids = {d['sample_idx'] for d in tune['data_list']}
    assert not fit_ids & tune_ids and fit_ids | tune_ids == set(range(7))
    assert fit['metainfo'] == tune['metainfo'] == infos['metainfo']
    # a rerun (say, after the fit file exists) writes the same files from the train file again
    before = {split: open(path, 'rb').read() for split, path in paths.items()}
    assert bench.split_train_infos(str(tmp_path), 3) == paths
    assert {split: open(path, 'rb').read() for split, path in paths.items()} == before
    assert mmengine.load(str(tmp_path / 'kitti_infos_train.pkl')) == infos  # the generated file is untouched
    for bad in (0, 7):
        with pytest.raises(ValueError, match='num-tune'):
            bench.split_train_infos(str(tmp_path), bad)


def test_choose_step_sizes_takes_the_tune_best_per_head_and_only_tune_results():
    rows = _rows(BASE_AP, [(2e-4, 0.5), (2e-3, 1.5), (2e-2, -3.0)])
    rows += _rows(BASE_AP, [(2e-4, 2.0), (2e-3, 2.0), (2e-2, 1.0)], head='normalized')[1:]
    tune = _pass(bench.TUNE, rows, frames=3)
    assert bench.choose_step_sizes(tune) == dict(absolute=2e-3, normalized=2e-4)  # a tie: the first listed
    # the mean of the four APs decides, not BEV @0.7 alone: 2e-3 loses 3 points at BEV @0.7 (mean -0.75,
    # still the best) ...
    rows[2]['BEV@0.7'] -= 3.0
    assert bench.choose_step_sizes(tune)['absolute'] == 2e-3
    rows[2]['3D@0.8'] -= 2.0  # ... and then 2 at 3D @0.8: mean 1.5 - 1.25 = 0.25 < 0.5, so 2e-4 wins
    assert bench.choose_step_sizes(tune)['absolute'] == 2e-4
    assert bench.TUNE_KEYS == ('BEV@0.7', '3D@0.7', 'BEV@0.8', '3D@0.8')
    for split in (bench.VAL, None):
        with pytest.raises(ValueError, match='tune'):
            bench.choose_step_sizes(dict(tune, split=split))


def test_tune_and_validate_scores_val_once_at_the_chosen_lambdas(monkeypatch):
    """The val pass comes after the choice, with one variant per head; the chooser sees the tune
    pass only (here the val numbers would favour another lambda)."""
    calls, chosen_from = [], []
    gains = {bench.TUNE: {2e-4: 0.0, 2e-3: 1.0}, bench.VAL: {2e-4: 5.0, 2e-3: 1.0}}

    def fake_evaluate(models, variants, data_root, split, work_dir, num_steps):
        calls.append((split, list(variants)))
        rows = [dict(name='detector (before)', head=None, step_size=None, **BASE_AP)]
        rows += [dict(name=v.label, head=v.head, step_size=v.step_size, **{k: a + gains[split][v.step_size]
                                                                             for k, a in BASE_AP.items()})
                 for v in variants]
        return dict(split=split, rows=rows)

    choose = bench.choose_step_sizes

    def spy_choose(tune):
        chosen_from.append(tune['split'])
        return choose(tune)

    monkeypatch.setattr(bench, 'evaluate', fake_evaluate)
    monkeypatch.setattr(bench, 'choose_step_sizes', spy_choose)
    res = bench.tune_and_validate(dict(absolute=None, normalized=None), [2e-4, 2e-3], '/data', '/work', 10)
    assert [split for split, _ in calls] == [bench.TUNE, bench.VAL] and chosen_from == [bench.TUNE]
    assert len(calls[0][1]) == 4
    assert calls[1][1] == [bench.Variant('absolute', 2e-3), bench.Variant('normalized', 2e-3)]
    assert res['chosen'] == dict(absolute=2e-3, normalized=2e-3)
    assert res['tune']['split'] == bench.TUNE and res['val']['split'] == bench.VAL


def test_train_reuses_a_checkpoint_of_the_same_settings_only(tmp_path, monkeypatch):
    """Detector and heads train on the fit file; a checkpoint is reused (with its recorded time) only
    when its settings match, so a head of another K, or one trained on other frames, is retrained."""
    from mmengine.runner import Runner
    _write_train_infos(tmp_path, 7)
    bench.split_train_infos(str(tmp_path), 3)
    built = []

    class FakeRunner:
        def __init__(self, cfg):
            self.cfg = cfg

        def train(self):  # as the Runner: the work dir, then the last checkpoint
            built.append(self.cfg)
            os.makedirs(self.cfg.work_dir, exist_ok=True)
            open(f'{self.cfg.work_dir}/iter_{self.cfg.train_cfg.max_iters}.pth', 'w').close()

    monkeypatch.setattr(Runner, 'from_cfg', FakeRunner)
    work = str(tmp_path / 'ebm')
    options = {bench.TRAIN_ANN: bench.info_file(bench.FIT), 'model.head_updates': 1}
    run = bench.train(bench.EBM_CONFIG, str(tmp_path), work, 2, False, options)
    assert len(built) == 1 and built[0].train_dataloader.dataset.ann_file == 'kitti_infos_fit.pkl'
    assert built[0].model.head_updates == 1 and run.iters == 2 and run.seconds >= 0
    again = bench.train(bench.EBM_CONFIG, str(tmp_path), work, 2, False, options)
    assert len(built) == 1 and again == run
    bench.train(bench.EBM_CONFIG, str(tmp_path), work, 2, False, {**options, 'model.head_updates': 4})
    assert len(built) == 2 and built[1].model.head_updates == 4
    bench.split_train_infos(str(tmp_path), 2)  # other fit frames: retrained
    bench.train(bench.EBM_CONFIG, str(tmp_path), work, 2, False, {**options, 'model.head_updates': 4})
    assert len(built) == 3
    bench.train(bench.EBM_CONFIG, str(tmp_path), work, 2, True, {**options, 'model.head_updates': 4})
    assert len(built) == 4  # --retrain


def test_train_heads_use_the_fit_file_and_head_updates(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(bench, 'train', lambda path, data, work_dir, iters, retrain, options: seen.update(
        {work_dir: options}))
    args = argparse.Namespace(data=str(tmp_path), work_dir=str(tmp_path), ebm_iters=2, retrain=False, head_updates=4)
    bench.train_heads(bench.head_options(8, True), 'det.pth', args)
    assert sorted(seen) == [str(tmp_path / 'ebm_absolute_k4'), str(tmp_path / 'ebm_normalized_k4')]
    for options in seen.values():
        assert options[bench.TRAIN_ANN] == 'kitti_infos_fit.pkl' and options['model.head_updates'] == 4
        assert options['model.detector_checkpoint'] == 'det.pth'


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


# Imports by module name only: tools/ is a package (python -m tools.benchmarks.<name>; the tests import
# it with pytest's pythonpath = .), so no file edits sys.path or loads a module from a file path.
SYS_PATH_EDIT = re.compile(r'\bsys \. path (?:\. (?:append|insert|extend|remove|pop|clear) \(|\[ [^\]]*\] =(?!=)|\+=|=(?!=))')
LOAD_BY_PATH = re.compile(r'\b(?:spec_from_file_location|SourceFileLoader|run_path|load_source) \(')


def _code(source: str) -> str:
    """``source``'s tokens, one space apart, without comments and string literals: what runs in this
    interpreter (test_kitti_cpu_iou.py's child script, a string, loads mmdet3d's own rotate_iou.py by
    path so as not to import all of mmdet3d; that is not this repository's code)."""
    text = {tokenize.COMMENT, tokenize.STRING, getattr(tokenize, 'FSTRING_MIDDLE', tokenize.STRING)}  # 3.12's f-strings
    return ' '.join(tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type not in text)


def test_no_tool_or_test_edits_sys_path_or_loads_a_file_as_a_module():
    files = sorted(p for folder in ('tools', 'tests') for p in (ROOT / folder).rglob('*.py'))
    assert ROOT / 'tests' / 'conftest.py' in files and ROOT / 'tools' / 'test.py' in files
    for path in files:
        code = _code(path.read_text())
        for banned in (SYS_PATH_EDIT, LOAD_BY_PATH):
            assert not banned.search(code), (path.relative_to(ROOT).as_posix(), banned.search(code).group())


def test_the_checks_catch_what_they_ban():
    for line in ('sys.path.append(folder)', 'sys.path.insert(0, d)', 'sys.path[:0] = [d]', 'sys.path += [d]',
                 'sys.path = [d]', 'import sys; sys.path.extend(ds)'):
        assert SYS_PATH_EDIT.search(_code(line)), line
    for line in ('if folder not in sys.path: pass', 'same = x == sys.path', 'sys.path[0] == d',
                 '# sys.path.append(d)', "'sys.path.append(d)'"):
        assert not SYS_PATH_EDIT.search(_code(line)), line
    assert LOAD_BY_PATH.search(_code("importlib.util.spec_from_file_location('m', path)"))
    assert LOAD_BY_PATH.search(_code('runpy.run_path(p)'))
