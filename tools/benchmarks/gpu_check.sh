#!/usr/bin/env bash
# One short GPU check (target: under 5 minutes on one GPU) that needs only torch and torchvision:
# the GPU machine some tasks are lent has no mmcv/mmengine/mmdet/mmdet3d and no network.
#   1. the core's tests on CUDA (samplers, losses, refiner, static refinement, PrRoIPool):
#      tests/test_core_*.py -k cuda; pytest comes from the environment, or from wheels carried in
#      $WHEELS (default work_dirs/gpu_wheels; make them here with: pip download pytest -d
#      work_dirs/gpu_wheels --python-version 3.12 --only-binary=:all:), or the step is skipped with
#      a message;
#   2. refinement on the package's own head (EBMBoxHead's layers, built from ebm_det.core) against
#      torchvision's Faster R-CNN R50-FPN at 800x1333, batch 1 and 8, in one table: the autograd
#      loop (refine_boxes) and its levers, and the static loop (StaticBoxRefiner) eager, under
#      torch.compile and replayed as a CUDA graph (tools/benchmarks/gpu_core.py -> gpu_core.md);
#   3. only where the OpenMMLab stack is installed: the model tests on CUDA and refine_speed.py.
# Results go to the folder $OUT when it is set (the device tool's), else docs/figures/.
# Run: bash tools/benchmarks/gpu_check.sh   (the device tool: carry ["work_dirs/gpu_wheels"])
# Smoke test on a CPU machine (CI: tests/test_gpu_check.py): bash tools/benchmarks/gpu_check.sh --device cpu
#   step 2 only, at tiny sizes and T = 3 (the core's tests already run on the CPU in make test; the
#   CUDA-graph row says it is skipped), written to $OUT/gpu_core_smoke.md (default work_dirs/).
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-work_dirs/gpu_wheels}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # ebm_det.core from this checkout, nothing installed
case "$*" in
  '') ;;
  '--device cuda') ;;
  '--device cpu')
    mkdir -p "${OUT:-work_dirs}"
    exec $PYTHON -m tools.benchmarks.gpu_core --device cpu --batches 1 2 --size 256 320 --boxes 10 --steps 3 \
      --repeats 2 --levers --out "${OUT:-work_dirs}/gpu_core_smoke.md" ;;
  *) echo "usage: bash tools/benchmarks/gpu_check.sh [--device cuda|cpu] (got: $*)" >&2; exit 2 ;;
esac
RESULTS=${OUT:-docs/figures}
mkdir -p "$RESULTS"
$PYTHON -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name(0), "torch", torch.__version__)' || exit 1
if ! $PYTHON -c 'import pytest' 2>/dev/null && [ -d "$WHEELS" ]; then
  $PYTHON -m pip install -q --no-index --find-links "$WHEELS" pytest
fi
if $PYTHON -c 'import pytest' 2>/dev/null; then
  $PYTHON -m pytest -q -p no:cacheprovider tests/test_core_*.py -k cuda 2>&1 | tee "$RESULTS/gpu_core_tests.txt"
else
  echo "[gpu_check] pytest is not installed and no wheels in $WHEELS: core tests skipped"
fi
$PYTHON -m tools.benchmarks.gpu_core --device cuda --levers --out "$RESULTS/gpu_core.md"
if $PYTHON -c 'import mmdet' 2>/dev/null; then
  $PYTHON -m pytest -q -x tests/test_models_2d.py -k "head or select or swap"
  $PYTHON -m tools.benchmarks.refine_speed --device cuda --repeats 5 --out "$RESULTS/refine_speed_cuda.md"
fi
