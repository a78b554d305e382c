#!/usr/bin/env bash
# Install the OpenMMLab stack that ebm_det needs into the current Python, skipping whatever is
# already there. A second run takes seconds. Why each pin and patch: README.md, Quick start.
#
#   PYTHON=python3      interpreter to install into
#   TORCH_SPEC          torch pin used only when no torch is importable
#                       (default: "torch==2.14.1 torchvision==0.29.1")
#   EBM_WHEEL_CACHE     where the built mmcv wheel is kept (default ~/.cache/ebm_det/wheels)
#   MMCV_UNITY=0        build mmcv from its 77 CPU source files as shipped (default: 6 unity units)
set -euo pipefail
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
WHEELS=${EBM_WHEEL_CACHE:-$HOME/.cache/ebm_det/wheels}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PIP="$PYTHON -m pip install --disable-pip-version-check -q"

step() { printf '[install %4ss] %s\n' "$SECONDS" "$*"; }  # seconds since the start
die() { printf '[install] FAILED: %s\n' "$*" >&2; exit 1; }
# has NAME VERSION_PREFIX: true when the distribution is installed at that version (or any version)
has() {
  $PYTHON - "$1" "${2:-}" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    v = version(sys.argv[1])
except PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if v.startswith(sys.argv[2]) else 1)
PY
}

# 1. torch: keep the user's, otherwise the pinned build from local disk.
if $PYTHON -c 'import torch' 2>/dev/null; then
  step "torch $($PYTHON -c 'import torch; print(torch.__version__)') present, kept"
else
  step "installing $TORCH_SPEC"
  $PIP $TORCH_SPEC || die "pip install $TORCH_SPEC"
fi
TORCH_VER=$($PYTHON -c 'import torch; print(torch.__version__)')

# 2. build tools for mmcv (its setup.py imports pkg_resources, removed in setuptools 81).
has setuptools && $PYTHON -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) >= 81)' \
  && has wheel && has ninja || { step "installing setuptools<81 wheel ninja"; $PIP 'setuptools<81' wheel ninja || die "build tools"; }

# 3. mmcv 2.1.0 with CPU ops, built from the sdist once per torch version and cached as a wheel.
if has mmcv 2.1.0 && $PYTHON -c 'import mmcv.ops' 2>/dev/null; then
  step "mmcv 2.1.0 with ops present"
else
  tag=$(echo "$TORCH_VER" | tr '+' '_')
  wheel_dir="$WHEELS/torch-$tag"
  if ! ls "$wheel_dir"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    step "building mmcv 2.1.0 against torch $TORCH_VER (a few minutes on 2 cores)"
    src=$(mktemp -d)
    $PYTHON -m pip download -q --no-deps --no-binary :all: mmcv==2.1.0 -d "$src" || die "download mmcv sdist"
    tar -xzf "$src"/mmcv-2.1.0.tar.gz -C "$src"
    # torch >= 2.10 headers require C++20; mmcv hard-codes C++17.
    if $PYTHON -c 'import sys, torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(0 if v >= (2, 10) else 1)'; then
      sed -i "s/-std=c++17/-std=c++20/g" "$src"/mmcv-2.1.0/setup.py
    fi
    # the 76 CPU op sources as 6 unity translation units + pybind.cpp (torch's headers parsed 7 times, not 77),
    # and no debug info (-g0): the same code, built in a fraction of the time (README, Quick start)
    if [ "${FORCE_CUDA:-0}" = 0 ] && [ "${MMCV_UNITY:-1}" = 1 ]; then
      $PYTHON "$ROOT/tools/mmcv_unity_sources.py" "$src"/mmcv-2.1.0 || die "regrouping mmcv's sources"
    fi
    # CFLAGS replaces Python's own compile flags in torch's extension build, so they are repeated
    # here (they hold -O3; without them the ops are built unoptimised: RoIAlign 2.5x, nms 3.3x slower)
    cflags="$($PYTHON -c 'import sysconfig; print(sysconfig.get_config_var("CFLAGS") or "-O3")') -g0 ${CFLAGS:-}"
    mkdir -p "$wheel_dir"
    (cd "$src"/mmcv-2.1.0 && MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} FORCE_CUDA=${FORCE_CUDA:-0} CFLAGS="$cflags" \
      $PYTHON -m pip wheel -q --no-deps --no-build-isolation . -w "$src/wheel") || die "mmcv build (log above)"
    # the .so keeps 30 MB of debug info; strip it inside the wheel before caching.
    (cd "$src/wheel" && $PYTHON -m wheel unpack -d unpacked mmcv-2.1.0-*.whl >/dev/null \
      && find unpacked -name '_ext*.so' -exec strip --strip-debug {} + \
      && $PYTHON -m wheel pack unpacked/mmcv-2.1.0 -d "$wheel_dir" >/dev/null) || cp "$src"/wheel/mmcv-2.1.0-*.whl "$wheel_dir"/
    rm -rf "$src"
  else
    step "mmcv wheel found in $wheel_dir"
  fi
  $PIP --no-deps "$wheel_dir"/mmcv-2.1.0-*.whl || die "install mmcv wheel"
  $PIP addict 'numpy' packaging Pillow pyyaml yapf opencv-python || die "mmcv runtime deps"
fi

# 4. mmengine, mmdet (brings pycocotools), and mmdet3d without its ~90 optional dependencies.
has mmengine 0.10.7 || { step "installing mmengine 0.10.7"; $PIP mmengine==0.10.7 || die mmengine; }
has mmdet 3.3.0 || { step "installing mmdet 3.3.0"; $PIP mmdet==3.3.0 || die mmdet; }
if ! has mmdet3d 1.4.0; then
  step "installing mmdet3d 1.4.0 (--no-deps) and what it imports"
  $PIP --no-deps mmdet3d==1.4.0 lyft-dataset-sdk==0.0.8 nuscenes-devkit==1.2.0 || die mmdet3d
fi
missing=""
for p in numba pyquaternion trimesh pandas scikit-learn cachetools lap trackeval motmetrics hypothesis \
         matplotlib pytest scipy terminaltables shapely scikit-image; do
  has "$p" || missing="$missing $p"
done
[ -z "$missing" ] || { step "installing$missing"; $PIP $missing || die "$missing"; }
# the refinement's ONNX export (tools/deploy/export_onnx.py) and its onnxruntime check; a GPU build
# of onnxruntime counts (a second, CPU one beside it would shadow it)
missing=""
has onnx || missing="$missing onnx"
has onnxscript || missing="$missing onnxscript"
has onnxruntime || has onnxruntime-gpu || missing="$missing onnxruntime"
[ -z "$missing" ] || { step "installing$missing (ONNX export)"; $PIP $missing || die "$missing"; }

# 5. ebm_det itself, editable, from this checkout (an install from another checkout would run
#    that checkout's code from every tool here).
where=$(cd / && $PYTHON -c 'import ebm_det, os; print(os.path.dirname(os.path.dirname(os.path.realpath(ebm_det.__file__))))' 2>/dev/null || true)
if [ "$where" != "$(realpath "$ROOT")" ]; then
  step "installing ebm_det (editable) from $ROOT${where:+ (was $where)}"
  $PIP --no-deps --no-build-isolation -e "$ROOT" || die ebm_det
fi
$PYTHON -c 'import mmcv.ops, mmdet, mmdet3d, ebm_det' || die "import check"
step "ready: torch $TORCH_VER, mmcv $($PYTHON -c 'import mmcv; print(mmcv.__version__)'), mmdet 3.3.0, mmdet3d 1.4.0, ebm_det from $ROOT"
