"""tools/demo.sh refuses malformed settings before it generates, trains or tests anything."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('name, value', [('SEED', 'abc'), ('DET_ITERS', '1e3'), ('EBM_ITERS', 'abc'),
                                         ('NUM_TRAIN', '-1'), ('NUM_VAL', '1.5'), ('RUN_TEST', 'no')])
def test_demo_refuses_malformed_settings(tmp_path, name, value):
    # PYTHON=false: should a setting pass the checks, the demo fails at its first step instead of training
    env = dict(os.environ, DATA=str(tmp_path / 'data'), WORK=str(tmp_path / 'work'), PYTHON='false', **{name: value})
    proc = subprocess.run(['bash', 'tools/demo.sh'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f'[demo] {name} must be' in proc.stderr
    assert not (tmp_path / 'data').exists() and not (tmp_path / 'work').exists()  # nothing was started
