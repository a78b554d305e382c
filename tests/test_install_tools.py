"""tools/mmcv_unity_sources.py: how mmcv's CPU op sources are regrouped for the fast build (the build
itself is what tools/install.sh runs; here only the grouping rules, on a fake source tree)."""
from pathlib import Path

import pytest

from tools import mmcv_unity_sources as unity

CPU_FILES = ['roi_align.cpp', 'bezier_align.cpp', 'roi_align_rotated.cpp', 'rotated_feature_align.cpp',
             'sparse_indice.cpp', 'sparse_maxpool.cpp', 'sparse_reordering.cpp', 'deform_conv.cpp',
             'modulated_deform_conv.cpp', 'psamask.cpp', 'nms.cpp', 'voxelization.cpp', 'box_iou_rotated.cpp']


def _fake_sdist(root: Path) -> Path:
    csrc = root / 'mmcv' / 'ops' / 'csrc' / 'pytorch'
    (csrc / 'cpu').mkdir(parents=True)
    for name in ['pybind.cpp', 'nms.cpp', 'roi_align.cpp', 'spconv_ops.cpp']:
        (csrc / name).write_text(f'// {name}\n')
    (csrc / 'spconv_utils.h').write_text('// header\n')
    for name in CPU_FILES:
        (csrc / 'cpu' / name).write_text(f'// {name}\n')
    return csrc


def _members(unit: Path) -> list:
    return [line.split('"')[1].split('/')[-1] for line in unit.read_text().splitlines() if line.startswith('#include')]


def test_every_source_in_exactly_one_unit_and_conflicts_apart(tmp_path):
    csrc = _fake_sdist(tmp_path)
    unity.main([str(tmp_path)])
    cpu_units = sorted((csrc / 'cpu').glob('unity_*.cpp'))
    groups = [_members(u) for u in cpu_units]
    assert sorted(m for g in groups for m in g) == sorted(CPU_FILES)
    assert len(cpu_units) == unity.CPU_UNITS and not list((csrc / 'cpu').glob('roi_align.cpp'))
    for conflict in unity.CPU_CONFLICTS:
        for g in groups:
            assert len(set(conflict) & set(g)) <= 1, (conflict, g)
    for g in groups:  # psamask.cpp #defines min / max: nothing after it
        assert 'psamask.cpp' not in g or g[-1] == 'psamask.cpp'
    wrappers = [m for u in sorted(csrc.glob('unity_*.cpp')) for m in _members(u)]
    assert sorted(wrappers) == ['nms.cpp', 'roi_align.cpp', 'spconv_ops.cpp']
    # pybind.cpp is compiled as before; moved sources still find the header beside them
    assert (csrc / 'pybind.cpp').exists() and (csrc / '_unity' / 'spconv_utils.h').exists()
    for unit in cpu_units:  # every include names a file that exists, relative to the unit
        assert all((unit.parent / line.split('"')[1]).exists()
                   for line in unit.read_text().splitlines() if line.startswith('#include'))


def test_refuses_a_tree_it_changed_and_a_wrong_folder(tmp_path):
    _fake_sdist(tmp_path)
    unity.main([str(tmp_path)])
    with pytest.raises(SystemExit, match='regrouped already'):
        unity.main([str(tmp_path)])
    with pytest.raises(SystemExit, match='not the source folder'):
        unity.main([str(tmp_path / 'elsewhere')])
