#!/usr/bin/env bash
# One short GPU check (target: under 5 minutes on one GPU): the device-parametrised core and model
# tests on CUDA, then the refinement speed benchmark on CUDA. Prints everything; writes
# docs/figures/refine_speed_cuda.md. Run: bash tools/benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
$PYTHON -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name(0))' || exit 1
$PYTHON -m pytest -q -x tests/test_core_*.py -k cuda
$PYTHON -m pytest -q -x tests/test_models_2d.py -k "head or select or swap"
$PYTHON tools/benchmarks/refine_speed.py --device cuda --repeats 5 --out docs/figures/refine_speed_cuda.md
