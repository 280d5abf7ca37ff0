#!/usr/bin/env bash
# Fetches the peers `pyfastattn bench conv` compares against (HexagDLy, IndexedConv and the h5py
# IndexedConv imports) as wheels into .carry/peers/, for the lent GPU machine: it has no network
# and its image lacks them. Carry .carry (run's `carry`); bench/gpu_check.sh installs them.
#   bench/fetch_peers.sh [PYTHON_VERSION]   (the device's Python, default 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
mkdir -p .carry/peers
python3 -m pip download -q --no-deps -d .carry/peers hexagdly indexedconv
python3 -m pip download -q --no-deps -d .carry/peers --only-binary=:all: --python-version "$PYV" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 h5py
ls -l .carry/peers
