"""The GPU check (tools/benchmarks/gpu_check.sh) as a CPU smoke test, on a Python that cannot see
the OpenMMLab stack, like the bare GPU machine it is written for (torch and torchvision only)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPENMMLAB = ('mmcv', 'mmengine', 'mmdet', 'mmdet3d')

# Loaded by every Python the script starts (PYTHONPATH): the OpenMMLab packages become absent
# (importlib.util.find_spec gives None, an import raises ImportError), and at exit it says which
# of them the process still has, so the test sees that the block was in force.
SITECUSTOMIZE = f"""
import atexit, sys
BLOCKED = {OPENMMLAB!r}
for name in BLOCKED:
    sys.modules[name] = None
def _report():
    loaded = sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED and sys.modules[m] is not None)
    print('[openmmlab-block] loaded:', ','.join(loaded) or 'none')
atexit.register(_report)
"""


def test_gpu_check_smoke_on_cpu_without_openmmlab(tmp_path):
    (tmp_path / 'site').mkdir()
    (tmp_path / 'site' / 'sitecustomize.py').write_text(SITECUSTOMIZE)
    out = tmp_path / 'gpu_core_smoke.md'
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out), PYTHONPATH=str(tmp_path / 'site'))
    proc = subprocess.run(['bash', 'tools/benchmarks/gpu_check.sh', '--device', 'cpu'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert '[openmmlab-block] loaded: none' in proc.stdout
    rows = [line for line in out.read_text().splitlines() if line.startswith('| 1 ') or line.startswith('| 2 ')]
    labels = [row.split(' | ')[1] for row in rows]
    # per batch size: float32 with T steps, and the levers bf16 autocast, early exit, torch.compile
    for b in ('1', '2'):
        mine = [row.split(' | ')[1] for row in rows if row.startswith(f'| {b} ')]
        assert mine[:3] == ['float32, T steps', 'bf16 autocast', 'early exit tol=0.001'], labels
        assert mine[3].startswith('torch.compile'), labels
    for row in rows:
        cells = row.strip('|').split('|')
        steps, refine_ms, det_ms, ratio = int(cells[2]), float(cells[3]), float(cells[4]), float(cells[5])
        assert 0 <= steps <= 10 and refine_ms > 0 and det_ms > 0
        assert abs(ratio - refine_ms / det_ms) <= 0.002 + 0.02 * ratio  # the table rounds each cell


def test_gpu_check_refuses_an_unknown_device():
    proc = subprocess.run(['bash', 'tools/benchmarks/gpu_check.sh', '--device', 'tpu'], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and 'usage' in proc.stderr
