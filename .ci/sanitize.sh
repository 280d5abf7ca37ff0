#!/usr/bin/env bash
# ASan + UBSan job: the CPU kernels built with -fsanitize=address,undefined into build/asan,
# linked into the source tree, and the op tests run against them with the ASan runtime
# preloaded into Python. Any report aborts the process, so pytest fails.
#
# Default selection (every CPU kernel entry point, < 6 min on 2 cores): the reliability
# suite (hypothesis properties of every op fwd+bwd in all dtypes, 64-bit offsets,
# determinism, threads, the bad-input sweep in subprocesses) plus the family parity tests
# (norm; attention dense/varlen/masks/GQA/half; conv2d incl. the im2col paths, pooling,
# indexed conv). Arguments go to pytest; pass paths to run something else, e.g.
# `bash .ci/sanitize.sh tests`.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q pybind11
BUILD_DIR=build/asan PYFASTATTN_SANITIZE=ON PYFASTATTN_CUDA=OFF PYTHON=python ./dev/build.sh
trap 'rm -f pyfastattn/_C*.so' EXIT
# Reports also go to files (pytest captures stderr, and an abort loses the capture).
report=build/asan/report
rm -f "$report".*
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:log_path=$report
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$report
# libstdc++ is preloaded too: python itself does not link it, and ASan's __cxa_throw
# interceptor aborts on the first C++ exception (a validation error) unless it is loaded.
DEFAULT=(tests/reliability tests/norm/test_norm.py tests/attention/test_attention.py
         tests/conv/test_conv2d.py tests/conv/test_pool.py tests/conv/test_indexed.py)
status=0
PYTHONPATH=$PWD LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)" \
  python -m pytest -q -p no:cacheprovider -m "not slow and not cuda" \
  -k "not compile and not opcheck and not gradcheck" "$@" $(printf '%s\n' "$@" | grep -q '^tests' || echo "${DEFAULT[@]}") \
  || status=$?
if ls "$report".* >/dev/null 2>&1; then
  cat "$report".*
  echo "sanitizer reports above" >&2
  exit 1
fi
exit $status
