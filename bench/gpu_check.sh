#!/usr/bin/env bash
# The one prepared script for a GPU machine (DESIGN.md "GPUs"): install, CUDA tests,
# compute-sanitizer on small cases, benchmarks; everything lands under $OUT (default
# ./gpu_check_out). Budget: ~8 minutes on an H100.
#   bench/gpu_check.sh            build from source with all cores (or install .carry/*.whl if present)
#   GPU_CHECK_SKIP_BENCH=1 ...    tests and sanitizer only
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
t0=$(date +%s)
log() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a "$OUT/summary.txt"; }
PY=${PYTHON:-python3}

log "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$OUT/summary.txt"

# 1. install: a wheel built ahead for this Python (.carry/), else from source on all cores
if ls .carry/pyfastattn-*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-deps --no-index --force-reinstall .carry/pyfastattn-*.whl > "$OUT/build.log" 2>&1
else
  PYFASTATTN_CUDA=ON PYFASTATTN_CUDA_ARCHS="${PYFASTATTN_CUDA_ARCHS:-90a-real}" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    $PY -m pip install -q --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1
fi
rc=$?; log "install rc=$rc"; [ $rc -eq 0 ] || { tail -30 "$OUT/build.log"; exit 1; }
cd /tmp  # import the installed package, not the source tree
$PY -m pyfastattn info | tee "$OUT/info.txt"
cd - >/dev/null

# 2. CUDA tests (and the CPU ones that touch the same code paths)
timeout 300 $PY -m pytest -q -m cuda --rootdir=. -p no:cacheprovider tests -x --maxfail=20 \
  -o addopts="--import-mode=importlib -ra" > "$OUT/pytest_cuda.log" 2>&1
log "pytest -m cuda rc=$? :: $(tail -1 "$OUT/pytest_cuda.log")"

# 3. compute-sanitizer: memcheck on every CUDA op, racecheck on attention and conv
if command -v compute-sanitizer >/dev/null; then
  timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 $PY bench/sanitize_cases.py all \
    > "$OUT/memcheck.log" 2>&1
  log "memcheck rc=$? :: $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log" | tail -1)"
  timeout 120 compute-sanitizer --tool racecheck --error-exitcode 9 $PY bench/sanitize_cases.py attention conv \
    > "$OUT/racecheck.log" 2>&1
  log "racecheck rc=$? :: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/racecheck.log" | tail -1)"
fi

# 4. benchmarks
if [ -z "${GPU_CHECK_SKIP_BENCH:-}" ]; then
  cd /tmp
  for dt in bf16 fp32; do
    timeout 150 $PY -m pyfastattn bench --device cuda --dtype $dt --json "$OUT/bench_$dt.json" \
      > "$OUT/bench_$dt.txt" 2>&1
    log "bench $dt rc=$?"
  done
  cd - >/dev/null
fi
log "done"
echo; cat "$OUT/summary.txt"; echo; grep -E "FAILED|Error" "$OUT/pytest_cuda.log" | head -30
for dt in bf16 fp32; do [ -f "$OUT/bench_$dt.txt" ] && cat "$OUT/bench_$dt.txt"; done
