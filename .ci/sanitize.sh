#!/usr/bin/env bash
# ASan + UBSan job: the CPU kernels built with -fsanitize=address,undefined into build/asan,
# linked into the source tree, and the op tests run against them with the ASan runtime
# preloaded into Python. Any report aborts the process, so pytest fails.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q pybind11
BUILD_DIR=build/asan PYFASTATTN_SANITIZE=ON PYFASTATTN_CUDA=OFF PYTHON=python ./dev/build.sh
trap 'rm -f pyfastattn/_C*.so' EXIT
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# torch.compile and opcheck exercise torch, not our memory accesses: skipped here only.
PYTHONPATH=$PWD LD_PRELOAD="$(gcc -print-file-name=libasan.so)" \
  python -m pytest -q -p no:cacheprovider -m "not slow and not cuda" \
  -k "not compile and not opcheck" "${@:-tests}"
