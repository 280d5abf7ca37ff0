#!/usr/bin/env bash
# Runs the conv family's CUDA source on the host, without a GPU, against its CPU kernels
# (~1 min on 2 cores): conv_cuda.cu is rewritten into C++ (transform.py) where every block
# runs as blockDim std::threads with a std::barrier for __syncthreads, dynamic shared memory
# starts as garbage, and mma.sync is emulated per warp from the PTX fragment layout
# (emu_cuda.h, emu_mma.h). conv_driver.cpp runs every *_cuda entry point on the cases that
# reach each kernel path and compares with the CPU kernels. Exit status 1 on any mismatch.
# It checks the kernels' index maths, tiling, tails and fragment bookkeeping; not speed,
# not the hardware memory model, not the real fragment layout (the PTX manual's is assumed).
#   dev/cuda_emu/run.sh [TREE]     (TREE: a checkout, default this one; needs g++ and the CUDA headers)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TREE=$(cd "${1:-$HERE/../..}" && pwd)
if [ -z "${CUDA_INC:-}" ]; then  # the CUDA headers (cuda_fp16.h, cuda_bf16.h): first that has them
  NVCC=$(command -v nvcc || true)
  for d in ${CUDA_HOME:+$CUDA_HOME/include} /usr/local/cuda/include ${NVCC:+$(dirname "$(readlink -f "$NVCC")")/../include}; do
    [ -f "$d/cuda_bf16.h" ] && CUDA_INC=$d && break
  done
  [ -n "${CUDA_INC:-}" ] || { echo "run.sh: CUDA headers not found (set CUDA_INC)" >&2; exit 2; }
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 "$HERE/transform.py" "$TREE/csrc/conv" "$WORK"
F="-std=c++20 -O1 -fopenmp -I$WORK -I$HERE -I$TREE/csrc -I$CUDA_INC -DPFA_WITH_CUDA=1"
g++ $F -include emu_cuda.h -c "$WORK/conv_cuda_emu.cpp" -o "$WORK/emu.o" & p1=$!
g++ $F -c "$TREE/csrc/conv/conv_cpu.cpp" -o "$WORK/cpu.o" & p2=$!
g++ $F -include emu_cuda.h -c "$HERE/conv_driver.cpp" -o "$WORK/driver.o" & p3=$!
rc=0
for p in $p1 $p2 $p3; do wait $p || rc=1; done
[ $rc -eq 0 ] || { echo "run.sh: compile failed" >&2; exit 2; }
g++ -fopenmp "$WORK/emu.o" "$WORK/cpu.o" "$WORK/driver.o" -o "$WORK/conv_emu"
"$WORK/conv_emu"
