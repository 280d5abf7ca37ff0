#!/usr/bin/env bash
# The one prepared script for a GPU machine (DESIGN.md "GPUs"): install, CUDA tests,
# compute-sanitizer on small cases, benchmarks. $OUT (default ./gpu_check_out) gets summary.txt,
# the benchmark JSON and logs.tar.gz (refreshed after every step, so a run cut short still
# returns its logs). Budget: ~8 minutes on an H100.
#   bench/gpu_check.sh [OUTDIR]   build from source with all cores (or install .carry/*.whl if present);
#                                 installs the conv peers from .carry/peers/ (bench/fetch_peers.sh)
#   GPU_CHECK_SKIP_BENCH=1 ...    tests and sanitizer only; GPU_CHECK_SKIP_RACECHECK=1, GPU_CHECK_SKIP_FP32=1
#   GPU_CHECK_FAMILIES="norm conv"  only these families' tests, checks, sanitizer cases and benchmarks
#   GPU_CHECK_BENCH_TIMEOUT=s GPU_CHECK_PYTEST_TIMEOUT=s GPU_CHECK_SMOKE_TIMEOUT=s
#   GPU_CHECK_RACECHECK_FAMILIES="norm"  racecheck cases (default: the families above)
#   GPU_CHECK_AB_SO=path/_C*.so   same-process A/B of the installed build against another CUDA build
#                                 of the module (bench/ab_builds.py, bf16), on GPU_CHECK_AB_CASES
#                                 (default "hex13 hex49 conv2d conv2d-k5s2 attn layer_norm-8192
#                                 layer_norm-16384"): ab.txt
#   GPU_CHECK_FOCUS=wgmma         only the sm_90a warpgroup-MMA attention kernels (3-5 minutes after
#                                 the install, so that a fix can be rerun within one lease): their
#                                 tests (operand self-test, parity), memcheck, kernel_time.py
#                                 attention-tiles (against mma.sync), and kernel_time.py attention
#                                 with both of them on (against torch's flash / efficient backends)
#   GPU_CHECK_NCU=1               Nsight Compute on attention/norm (bench/ncu_profile.sh), plus the
#                                 per-SASS-line summary (bench/ncu_sass_summary.py): ncu_details.txt,
#                                 sass_summary.txt
# At most 8 files come back from the lent machine: everything else goes into logs.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-$PWD/gpu_check_out}}
LOGS=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
t0=$(date +%s)
log() {
  echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a "$OUT/summary.txt"
  tar czf "$OUT/logs.tar.gz" -C "$LOGS" . 2>/dev/null
}
PY=${PYTHON:-python3}
FAMILIES=${GPU_CHECK_FAMILIES:-norm attention conv}
has() { [[ " $FAMILIES " == *" $1 "* ]]; }

log "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$OUT/summary.txt"

# 1. install: a wheel built ahead for this Python (.carry/), else from source on all cores
if ls .carry/pyfastattn-*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-deps --no-index --force-reinstall .carry/pyfastattn-*.whl > "$LOGS/build.log" 2>&1
else
  PYFASTATTN_CUDA=ON PYFASTATTN_CUDA_ARCHS="${PYFASTATTN_CUDA_ARCHS:-90a-real}" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    $PY -m pip install -q --no-build-isolation --no-deps . > "$LOGS/build.log" 2>&1
fi
rc=$?; log "install rc=$rc"; [ $rc -eq 0 ] || { tail -30 "$LOGS/build.log"; exit 1; }
# the conv benchmark's peers, when carried (bench/fetch_peers.sh): the machine has no network
if ls .carry/peers/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-deps --no-index .carry/peers/*.whl > "$LOGS/peers.log" 2>&1
  log "peers (HexagDLy, IndexedConv) install rc=$?"
fi
cd /tmp  # import the installed package, not the source tree
$PY -m pyfastattn info | tee "$LOGS/info.txt"
cd - >/dev/null

if [ "${GPU_CHECK_FOCUS:-}" = wgmma ]; then
  timeout ${GPU_CHECK_PYTEST_TIMEOUT:-150} $PY -P -m pytest -q -m cuda --rootdir=. -p no:cacheprovider \
    tests/attention -k wgmma > "$LOGS/pytest_cuda.log" 2>&1
  log "pytest -m cuda -k wgmma rc=$? :: $(tail -1 "$LOGS/pytest_cuda.log")"
  SAN=$(command -v compute-sanitizer || true)
  if [ -n "$SAN" ]; then  # sanitize_cases runs the wgmma kernels itself (and the others)
    timeout 80 "$SAN" --tool memcheck --error-exitcode 9 $PY bench/sanitize_cases.py attention > "$LOGS/memcheck.log" 2>&1
    log "memcheck rc=$? :: $(grep -E 'ERROR SUMMARY' "$LOGS/memcheck.log" | tail -1)"
  fi
  # device time: the wgmma kernels against the mma.sync ones (attention-tiles), then with both
  # on against torch's flash / efficient backends (attention)
  (cd /tmp && timeout ${GPU_CHECK_KERNEL_TIME_TIMEOUT:-150} $PY "$OLDPWD/bench/kernel_time.py" attention-tiles \
     --json "$OUT/kernel_time_tiles.json" > "$LOGS/kernel_time_tiles.txt" 2>&1)
  log "kernel time (attention-tiles) rc=$?"
  (cd /tmp && PYFASTATTN_ATTN_FWD_WGMMA=1 PYFASTATTN_ATTN_BWD_WGMMA=1 timeout ${GPU_CHECK_KERNEL_TIME_TIMEOUT:-150} \
     $PY "$OLDPWD/bench/kernel_time.py" attention --json "$OUT/kernel_time_wgmma.json" \
     > "$LOGS/kernel_time_wgmma.txt" 2>&1)
  log "kernel time (attention, both wgmma kernels on) rc=$?"
  log "done"
  echo; cat "$OUT/summary.txt"; echo; grep -E "^FAILED|^ERROR|^E  " "$LOGS/pytest_cuda.log" | head -30
  for f in kernel_time_tiles kernel_time_wgmma; do cat "$LOGS/$f.txt"; done
  exit 0
fi

# 2. CUDA tests (and the CPU ones that touch the same code paths)
# -P: do not put the source tree on sys.path (it has no compiled module)
timeout ${GPU_CHECK_PYTEST_TIMEOUT:-200} $PY -P -m pytest -q -m cuda --rootdir=. -p no:cacheprovider \
  $(for f in $FAMILIES; do echo tests/$f; done) --maxfail=40 \
  > "$LOGS/pytest_cuda.log" 2>&1
log "pytest -m cuda rc=$? :: $(tail -1 "$LOGS/pytest_cuda.log")"

# 2b. standalone GPU checks per family (every kernel path, determinism)
cd /tmp
if has attention; then
  timeout ${GPU_CHECK_SMOKE_TIMEOUT:-150} $PY "$OLDPWD/bench/attention_gpu_smoke.py" > "$LOGS/attention_smoke.log" 2>&1
  log "attention smoke rc=$? :: $(tail -1 "$LOGS/attention_smoke.log")"
fi
if has conv; then
  timeout 60 $PY "$OLDPWD/bench/conv_gpu_paths.py" > "$LOGS/conv_paths.log" 2>&1
  log "conv paths rc=$? :: $(tail -1 "$LOGS/conv_paths.log")"
fi
cd - >/dev/null

# 3. compute-sanitizer memcheck on every CUDA op (small cases)
SAN=$(command -v compute-sanitizer || true)
if [ -n "$SAN" ]; then
  timeout 80 "$SAN" --tool memcheck --error-exitcode 9 $PY bench/sanitize_cases.py $FAMILIES > "$LOGS/memcheck.log" 2>&1
  log "memcheck rc=$? :: $(grep -E 'ERROR SUMMARY' "$LOGS/memcheck.log" | tail -1)"
fi

# 4. benchmarks (bf16), then racecheck on attention and conv, then fp32 benchmarks
bench() {
  (cd /tmp && timeout "$2" $PY -m pyfastattn bench $FAMILIES --device cuda --dtype "$1" \
     --json "$OUT/bench_$1.json" > "$LOGS/bench_$1.txt" 2>&1)
  log "bench $1 rc=$?"
}
# device time (profiler) vs eager wall time per call, ours vs torch: kernel speed without host overhead
# (plus the A/B sections: attention-tiles after attention, norm-staged after norm)
base_fams=$(for f in attention norm conv; do has $f && echo $f; done)
kt_fams=$(has attention && echo attention attention-tiles; has norm && echo norm norm-staged; has conv && echo conv)
if [ -n "$kt_fams" ] && [ -z "${GPU_CHECK_SKIP_KERNEL_TIME:-}" ]; then
  (cd /tmp && timeout ${GPU_CHECK_KERNEL_TIME_TIMEOUT:-180} $PY "$OLDPWD/bench/kernel_time.py" $kt_fams --json "$OUT/kernel_time.json" \
     > "$LOGS/kernel_time.txt" 2>&1)
  log "kernel time rc=$?"
fi
if [ -n "${GPU_CHECK_AB_SO:-}" ]; then
  ab_so=$(readlink -f "$GPU_CHECK_AB_SO")
  (cd /tmp && timeout ${GPU_CHECK_AB_TIMEOUT:-120} $PY "$OLDPWD/bench/ab_builds.py" "$ab_so" --device cuda \
     --dtype bfloat16 --reps 15 --case ${GPU_CHECK_AB_CASES:-hex13 hex49 conv2d conv2d-k5s2 attn layer_norm-8192 layer_norm-16384} > "$OUT/ab.txt" 2>&1)
  log "A/B against $GPU_CHECK_AB_SO rc=$?"
fi
if [ -f bench/host_overhead.py ]; then
  (cd /tmp && timeout 30 $PY "$OLDPWD/bench/host_overhead.py" --device cuda --repeats 21 > "$LOGS/host_overhead.txt" 2>&1)
  log "host overhead rc=$?"
fi
[ -z "${GPU_CHECK_SKIP_BENCH:-}" ] && bench bf16 "${GPU_CHECK_BENCH_TIMEOUT:-150}"
# a short bf16 training run of the station transformer (attention with a learned bias, norms)
if [ -n "${GPU_CHECK_TRAIN:-}" ]; then
  (cd /tmp && timeout 75 $PY -m pyfastattn train airshower --arch transformer --device cuda --dtype bf16 \
     --epochs 1 --n-train 20000 --n-test 4000 --no-plots --no-progress --out "$LOGS/train" > "$LOGS/train.log" 2>&1)
  log "train airshower transformer (cuda, bf16) rc=$? :: $(tail -1 "$LOGS/train.log")"
  cp "$LOGS/train/metrics.json" "$OUT/train_metrics.json" 2>/dev/null
fi
if [ -n "$SAN" ] && [ -z "${GPU_CHECK_SKIP_RACECHECK:-}" ]; then
  timeout 100 "$SAN" --tool racecheck --error-exitcode 9 $PY bench/sanitize_cases.py \
    ${GPU_CHECK_RACECHECK_FAMILIES:-$FAMILIES} \
    > "$LOGS/racecheck.log" 2>&1
  log "racecheck rc=$? :: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$LOGS/racecheck.log" | tail -1)"
fi
[ -z "${GPU_CHECK_SKIP_BENCH:-}" ] && [ -z "${GPU_CHECK_SKIP_FP32:-}" ] && bench fp32 "${GPU_CHECK_BENCH_TIMEOUT:-150}"
if [ -n "${GPU_CHECK_NCU:-}" ] && [ -n "$base_fams" ]; then
  timeout ${GPU_CHECK_NCU_TIMEOUT:-120} bash bench/ncu_profile.sh "$LOGS/ncu" $base_fams > "$LOGS/ncu.txt" 2>&1
  log "ncu rc=$? :: $(tail -1 "$LOGS/ncu.txt")"
  cp "$LOGS/ncu/ncu_details.txt" "$OUT/" 2>/dev/null
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  if [ -n "$NCU" ] && [ -f "$LOGS/ncu/ncu.ncu-rep" ]; then
    "$NCU" --import "$LOGS/ncu/ncu.ncu-rep" --page source --csv --print-source sass > "$LOGS/ncu/source.csv" 2>/dev/null
    $PY bench/ncu_sass_summary.py "$LOGS/ncu/source.csv" --top 30 > "$OUT/sass_summary.txt" 2>&1
    gzip -f "$LOGS/ncu/source.csv"
  fi
  rm -f "$LOGS/ncu/ncu.ncu-rep"
  log "ncu summary written"
fi
log "done"
echo; cat "$OUT/summary.txt"; echo; grep -E "^FAILED|^ERROR" "$LOGS/pytest_cuda.log" | head -30
for f in kernel_time host_overhead bench_bf16 bench_fp32; do [ -f "$LOGS/$f.txt" ] && cat "$LOGS/$f.txt"; done
