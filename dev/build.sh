#!/usr/bin/env bash
# Developer build: compiles pyfastattn._C into build/dev and links it into the source
# tree, so `PYTHONPATH=$PWD python -m pytest -p no:cacheprovider tests/...` runs against it.
# PYFASTATTN_CUDA=ON|OFF|AUTO (default OFF here: CPU builds are quick), PYFASTATTN_CUDA_ARCHS.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
BUILD=${BUILD_DIR:-build/dev}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPYFASTATTN_CUDA="${PYFASTATTN_CUDA:-OFF}" -DPYFASTATTN_CUDA_ARCHS="${PYFASTATTN_CUDA_ARCHS:-}" \
  -DPYFASTATTN_SANITIZE="${PYFASTATTN_SANITIZE:-OFF}" \
  -DPython_EXECUTABLE="$(command -v "$PY")" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" >/dev/null
cmake --build "$BUILD" -j "${JOBS:-2}"
so=$(ls "$BUILD"/_C*.so)
ln -sf "$PWD/$so" pyfastattn/
echo "built $so"
