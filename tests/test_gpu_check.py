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
    out = tmp_path / 'results' / 'gpu_core_smoke.md'  # $OUT is a folder, as the device tool's
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out.parent), PYTHONPATH=str(tmp_path / 'site'))
    proc = subprocess.run(['bash', 'tools/benchmarks/gpu_check.sh', '--device', 'cpu'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert '[openmmlab-block] loaded: none' in proc.stdout
    rows = [line for line in out.read_text().splitlines() if line.startswith('| 1 ') or line.startswith('| 2 ')]
    labels = [row.split(' | ')[1] for row in rows]
    # per batch size, one table: the autograd loop and its levers, the static loop eager, compiled,
    # and as a CUDA graph (skipped on the CPU, saying why)
    for b in ('1', '2'):
        mine = [row.split(' | ')[1] for row in rows if row.startswith(f'| {b} ')]
        assert mine[:4] == ['autograd loop', 'autograd, bf16 autocast', 'autograd, early exit tol=0.001',
                            'static loop, eager'], labels
        assert mine[4].startswith('static loop, torch.compile (first call'), labels
        assert mine[5] == 'static loop, CUDA graph', labels
    for row in rows:
        cells = [c.strip() for c in row.strip('|').split('|')]
        if cells[1] == 'static loop, CUDA graph':
            assert cells[2].startswith('skipped: torch.cuda.CUDAGraph needs a CUDA device'), row
            continue
        refine_ms, det_ms, ratio, diff = float(cells[2]), float(cells[3]), float(cells[4]), float(cells[7])
        assert refine_ms > 0 and det_ms > 0
        assert abs(ratio - refine_ms / det_ms) <= 0.002 + 0.02 * ratio  # the table rounds each cell
        if cells[1].startswith('static loop') or cells[1] == 'autograd loop':
            assert diff < 1e-3, row  # the same refinement as the autograd loop


def test_gpu_check_refuses_an_unknown_device():
    proc = subprocess.run(['bash', 'tools/benchmarks/gpu_check.sh', '--device', 'tpu'], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and 'usage' in proc.stderr
