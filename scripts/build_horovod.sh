#!/usr/bin/env bash
# Build (once) and install Horovod 0.28.1 -- CPU only, Gloo, PyTorch -- into a venv whose torch is >= 2.1.
#
#   scripts/build_horovod.sh [VENV_PYTHON]        (default: .venv/bin/python)
#
# Horovod 0.28.1 (last release) does not compile against torch >= 2.1 (C++17 headers); the sdist from
# PyPI is patched with scripts/patches/horovod-0.28.1-torch2.patch (backport of upstream PR #3998).
# The built wheel is cached in $CDML_CACHE/wheels/horovod-built/torch-<torch version>-<patch hash>/;
# a second run (or another venv with the same torch) only installs it. Nothing is installed into
# the venv but horovod and its runtime deps (pinned as in requirements.lock); build-only tools
# (`wheel`, and `cmake` if the system has none >= 3.13) go to a temp dir.
# Env: CDML_CACHE, BUILD_JOBS (default 2), KEEP_BUILD_DIR=1 (keep the temp dir for debugging).
set -euo pipefail
PY="${1:-.venv/bin/python}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
case "$PY" in /*) ;; */*) [ -e "$PY" ] || PY="$REPO/$PY"; PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
cd "$REPO"
[ -x "$PY" ] || command -v "$PY" >/dev/null || { echo "[horovod] python not found: $PY" >&2; exit 1; }
CACHE="${CDML_CACHE:-$HOME/.cache/cdml-spark}"
HVD_VERSION=0.28.1
PATCH="$REPO/scripts/patches/horovod-$HVD_VERSION-torch2.patch"
log() { echo "[horovod] $*"; }
t0=$(date +%s)

# runtime deps of horovod 0.28.1 (setup.py require_list: cloudpickle psutil pyyaml packaging cffi>=1.4.0),
# pinned to requirements.lock so installing them never changes the venv's versions
declare -A PINS=([cloudpickle]=3.1.3 [psutil]=7.2.2 [PyYAML]=6.0.2 [packaging]=24.2 [cffi]=2.1.1)
DEPS=()
for name in "${!PINS[@]}"; do
  v=$(grep -i "^$name==" requirements.lock 2>/dev/null | head -1 | cut -d= -f3 || true)
  DEPS+=("$name==${v:-${PINS[$name]}}")
done

TORCH_VER=$("$PY" -c 'import torch; print(torch.__version__)')
PY_TAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
# key on the diff itself (from the first "diff --git" on), so editing the header comment does not rebuild
PATCH_HASH=$(sed -n '/^diff --git/,$p' "$PATCH" | sha256sum | cut -c1-8)
WHEEL_DIR="$CACHE/wheels/horovod-built/torch-$TORCH_VER-$PATCH_HASH"
log "python=$PY torch=$TORCH_VER wheel cache=$WHEEL_DIR"

install_wheel() {
  log "installing $(basename "$1") + runtime deps: ${DEPS[*]}"
  "$PY" -m pip install -q --no-deps --force-reinstall "$1"
  "$PY" -m pip install -q --no-deps "${DEPS[@]}"
  "$PY" -c 'import horovod.torch as hvd
assert hvd.gloo_built(), "horovod built without gloo"
print("[horovod] import ok: horovod", __import__("horovod").__version__, "gloo_built=True mpi_built=%s" % hvd.mpi_built())'
}

whl=$(ls "$WHEEL_DIR"/horovod-$HVD_VERSION-$PY_TAG-*.whl 2>/dev/null | head -1 || true)
if [ -n "$whl" ]; then
  log "cached wheel found, skipping build"
  install_wheel "$whl"
  log "done in $(( $(date +%s) - t0 ))s"
  exit 0
fi

TMP=$(mktemp -d /tmp/horovod-build.XXXXXX)
if [ "${KEEP_BUILD_DIR:-0}" = 1 ]; then log "keeping build dir $TMP"; else trap 'rm -rf "$TMP"' EXIT; fi

log "downloading horovod==$HVD_VERSION sdist"
"$PY" -m pip download -q --no-deps --no-binary :all: -d "$TMP/dl" "horovod==$HVD_VERSION"
tar xzf "$TMP/dl/horovod-$HVD_VERSION.tar.gz" -C "$TMP"
SRC="$TMP/horovod-$HVD_VERSION"
log "applying $(basename "$PATCH")"
patch -p1 -d "$SRC" < "$PATCH"

# build-only tools, outside the venv: `wheel` for setup.py bdist_wheel (setuptools < 70.1 lacks it)
log "build tools into $TMP/tools"
"$PY" -m pip install -q --target "$TMP/tools" wheel==0.44.0
export PYTHONPATH="$TMP/tools${PYTHONPATH:+:$PYTHONPATH}"
# horovod needs cmake >= 3.13; take the system one if good enough, else the PyPI binary
if cmake --version 2>/dev/null | head -1 | awk '{split($3,v,"."); exit !(v[1]>3 || (v[1]==3 && v[2]>=13))}'; then
  export HOROVOD_CMAKE=$(command -v cmake)
else
  "$PY" -m pip install -q --target "$TMP/cmake" cmake==3.31.6
  export HOROVOD_CMAKE="$TMP/cmake/cmake/data/bin/cmake"
fi
export CMAKE_POLICY_VERSION_MINIMUM=3.5   # cmake 4.x refuses gloo's cmake_minimum_required(<3.5)
log "cmake: $HOROVOD_CMAKE ($("$HOROVOD_CMAKE" --version | head -1))"

# CPU only: no GPU ops requested. (torch's CUDA_HOME must be None -- no nvcc/CUDA toolkit -- or
# horovod links the CUDA runtime into the torch extension, which still works but is not CPU-only.)
unset HOROVOD_GPU HOROVOD_GPU_OPERATIONS HOROVOD_GPU_ALLREDUCE HOROVOD_GPU_ALLGATHER HOROVOD_GPU_BROADCAST \
      HOROVOD_GPU_ALLTOALL HOROVOD_GPU_REDUCESCATTER HOROVOD_CUDA_HOME HOROVOD_WITH_MPI HOROVOD_DEBUG
log "torch CUDA_HOME: $("$PY" -c 'from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME)' 2>/dev/null)"
export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITHOUT_MPI=1 \
       HOROVOD_WITH_GLOO=1 HOROVOD_CPU_OPERATIONS=gloo
export MAKEFLAGS="-j${BUILD_JOBS:-2}"   # setup.py would use -j8 otherwise

log "building wheel (MAKEFLAGS=$MAKEFLAGS; ~10-20 min on 2 cores, log: $TMP/build.log)"
tb=$(date +%s)
if ! nice -n 10 "$PY" -m pip wheel -v --no-build-isolation --no-deps -w "$TMP/wheel" "$SRC" > "$TMP/build.log" 2>&1; then
  grep -E "error|Error|ERROR" "$TMP/build.log" | head -40 >&2 || true
  tail -30 "$TMP/build.log" >&2
  trap - EXIT
  log "BUILD FAILED, full log kept: $TMP/build.log" >&2
  exit 1
fi
log "wheel built in $(( $(date +%s) - tb ))s"
mkdir -p "$WHEEL_DIR"
cp "$TMP"/wheel/horovod-*.whl "$WHEEL_DIR/"
whl=$(ls "$WHEEL_DIR"/horovod-$HVD_VERSION-$PY_TAG-*.whl | head -1)
install_wheel "$whl"
log "done in $(( $(date +%s) - t0 ))s (wheel: $whl)"
