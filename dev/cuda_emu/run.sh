#!/usr/bin/env bash
# Runs a family's CUDA source on the host, without a GPU, against its CPU kernels: the .cu
# file is rewritten into C++ (transform.py) where every block runs as blockDim std::threads
# with a std::barrier for __syncthreads (and one per warp for shuffles, votes, ldmatrix and
# mma.sync, emulated from the PTX fragment layouts: emu_cuda.h, emu_mma.h), dynamic shared
# memory starts as garbage, and cp.async copies at once. <family>_driver.cpp runs every CUDA
# entry point on cases that reach each kernel path and compares with the CPU kernels.
# Exit status 1 on any mismatch. It checks the kernels' index maths, tiling, tails and fragment
# bookkeeping, and the data side of wgmma's asynchrony (the attention cases run once with every
# wgmma completing when issued and once when its wait retires it); not speed, not the hardware
# memory model, not the real fragment layout (the PTX manual's is assumed).
#   dev/cuda_emu/run.sh [TREE] [FAMILY...]   (TREE: a checkout, default this one; families:
#                                             conv attention norm, default all; needs g++ and the CUDA headers)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TREE=$(cd "${1:-$HERE/../..}" && pwd)
shift || true
FAMILIES=${*:-conv attention norm}
if [ -z "${CUDA_INC:-}" ]; then  # the CUDA headers (cuda_fp16.h, cuda_bf16.h): first that has them
  NVCC=$(command -v nvcc || true)
  for d in ${CUDA_HOME:+$CUDA_HOME/include} /usr/local/cuda/include ${NVCC:+$(dirname "$(readlink -f "$NVCC")")/../include}; do
    [ -f "$d/cuda_bf16.h" ] && CUDA_INC=$d && break
  done
  [ -n "${CUDA_INC:-}" ] || { echo "run.sh: CUDA headers not found (set CUDA_INC)" >&2; exit 2; }
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
F="-std=c++20 -O1 -fopenmp -I$WORK -I$HERE -I$TREE/csrc -I$CUDA_INC -DPFA_WITH_CUDA=1"
status=0
for fam in $FAMILIES; do
  python3 "$HERE/transform.py" "$fam" "$TREE/csrc" "$WORK"
  g++ $F -include emu_cuda.h -c "$WORK/${fam}_cuda_emu.cpp" -o "$WORK/$fam-emu.o" & p1=$!
  g++ $F -c "$TREE/csrc/$fam/${fam}_cpu.cpp" -o "$WORK/$fam-cpu.o" & p2=$!
  g++ $F -include emu_cuda.h -c "$HERE/${fam}_driver.cpp" -o "$WORK/$fam-driver.o" & p3=$!
  rc=0
  for p in $p1 $p2 $p3; do wait $p || rc=1; done
  [ $rc -eq 0 ] || { echo "run.sh: $fam: compile failed" >&2; exit 2; }
  g++ -fopenmp "$WORK/$fam-emu.o" "$WORK/$fam-cpu.o" "$WORK/$fam-driver.o" -o "$WORK/$fam-emu"
  echo "== $fam"
  "$WORK/$fam-emu" || status=1
done
exit $status
