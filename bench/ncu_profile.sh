#!/usr/bin/env bash
# Nsight Compute on the kernels of bench/ncu_cases.py (attention fwd/bwd, layer norm fwd/bwd,
# conv fwd/bwd): the first NCU_LAUNCHES (default 5) launches of them, full section set, clocks
# left as they are (--clock-control none).
#   bench/ncu_profile.sh OUTDIR [attention] [norm] [conv]   -> OUTDIR/ncu_details.txt (and ncu.ncu-rep)
# Needs the installed package and ncu (on the lent GPU machine's image).
set -uo pipefail
OUT=${1:?output folder}
shift
mkdir -p "$OUT"
HERE=$(cd "$(dirname "$0")" && pwd)
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu not found"; exit 1; }
cd /tmp  # import the installed package
"$NCU" --clock-control none --set full -f -o "$OUT/ncu" \
  -k 'regex:fwd_mma|bwd_dkdv_mma|bwd_dq_mma|forward_kernel|backward_kernel|tap_|weight_grad|reduce_partials' \
  --launch-count ${NCU_LAUNCHES:-5} \
  ${PYTHON:-python3} "$HERE/ncu_cases.py" "$@" > "$OUT/ncu_log.txt" 2>&1
rc=$?
"$NCU" --import "$OUT/ncu.ncu-rep" --page details > "$OUT/ncu_details.txt" 2>&1
echo "ncu rc=$rc; $(grep -c '' "$OUT/ncu_details.txt") lines of details"
