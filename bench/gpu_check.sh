#!/usr/bin/env bash
# The one prepared script for a GPU machine (DESIGN.md "GPUs"): install, CUDA tests,
# compute-sanitizer on small cases, benchmarks; everything lands under $OUT (default
# ./gpu_check_out). Budget: ~8 minutes on an H100.
#   bench/gpu_check.sh            build from source with all cores (or install .carry/*.whl if present)
#   GPU_CHECK_SKIP_BENCH=1 ...    tests and sanitizer only; GPU_CHECK_SKIP_RACECHECK=1 skips racecheck
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
# -P: do not put the source tree on sys.path (it has no compiled module)
timeout ${GPU_CHECK_PYTEST_TIMEOUT:-200} $PY -P -m pytest -q -m cuda --rootdir=. -p no:cacheprovider tests --maxfail=40 \
  > "$OUT/pytest_cuda.log" 2>&1
log "pytest -m cuda rc=$? :: $(tail -1 "$OUT/pytest_cuda.log")"

# 2b. standalone GPU checks per family (every kernel path, determinism)
cd /tmp
timeout 90 $PY "$OLDPWD/bench/attention_gpu_smoke.py" > "$OUT/attention_smoke.log" 2>&1
log "attention smoke rc=$? :: $(tail -1 "$OUT/attention_smoke.log")"
timeout 90 $PY "$OLDPWD/bench/conv_gpu_paths.py" > "$OUT/conv_paths.log" 2>&1
log "conv paths rc=$? :: $(tail -1 "$OUT/conv_paths.log")"
cd - >/dev/null

# 3. compute-sanitizer: memcheck on every CUDA op, racecheck on attention and conv
if command -v compute-sanitizer >/dev/null; then
  timeout 100 compute-sanitizer --tool memcheck --error-exitcode 9 $PY bench/sanitize_cases.py all \
    > "$OUT/memcheck.log" 2>&1
  log "memcheck rc=$? :: $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log" | tail -1)"
  [ -z "${GPU_CHECK_SKIP_RACECHECK:-}" ] && timeout 120 compute-sanitizer --tool racecheck --error-exitcode 9 $PY bench/sanitize_cases.py attention conv \
    > "$OUT/racecheck.log" 2>&1
  [ -z "${GPU_CHECK_SKIP_RACECHECK:-}" ] && log "racecheck rc=$? :: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/racecheck.log" | tail -1)"
fi

# 4. benchmarks
if [ -z "${GPU_CHECK_SKIP_BENCH:-}" ]; then
  cd /tmp
  for dt in ${GPU_CHECK_DTYPES:-bf16 fp32}; do
    timeout ${GPU_CHECK_BENCH_TIMEOUT:-150} $PY -m pyfastattn bench ${GPU_CHECK_FAMILIES:-} --device cuda \
      --dtype $dt --json "$OUT/bench_$dt.json" > "$OUT/bench_$dt.txt" 2>&1
    log "bench $dt rc=$?"
  done
  cd - >/dev/null
fi
log "done"
echo; cat "$OUT/summary.txt"; echo; grep -E "FAILED|Error" "$OUT/pytest_cuda.log" | head -30
for dt in bf16 fp32; do [ -f "$OUT/bench_$dt.txt" ] && cat "$OUT/bench_$dt.txt"; done
# the device tool returns at most 8 files: keep the summary and JSON, pack the logs
(cd "$OUT" && tar czf logs.tar.gz --exclude=logs.tar.gz --exclude='*.json' --exclude=summary.txt . \
  && find . -maxdepth 1 -type f ! -name logs.tar.gz ! -name '*.json' ! -name summary.txt -delete)
