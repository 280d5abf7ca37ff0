"""bench/kernel_report.py's wgmma register-hazard scan on hand-written SASS (CI runs the scan on
the real kernels; this checks that it can fail)."""
from __future__ import annotations

import importlib.util
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "bench", "kernel_report.py")
_spec = importlib.util.spec_from_file_location("kernel_report", _PATH)
kernel_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernel_report)


def _sass(*instructions: str) -> str:
    return "\n".join(f"        /*{16 * i:04x}*/                   {s} ;  /* 0x0 */" for i, s in enumerate(instructions))


ISSUE = ["WARPGROUP.ARRIVE",
         "HGMMA.64x64x16.F32 R24, gdesc[UR8], RZ, !UPT",           # S: accumulators R24..R55
         "HGMMA.64x64x16.F32 R24, gdesc[UR8], R24, gsb0",
         "HGMMA.64x128x16.F32 R88, R200, gdesc[UR12].tnspB, R88, gsb0"]  # P V: A R200..R203, acc R88..R151


@pytest.mark.parametrize("between,after,hazards", [
    ([], ["WARPGROUP.DEPBAR.LE gsb0, 0x0", "FMUL R30, R30, R2", "MOV R200, R3"], 0),   # all retired first
    (["WARPGROUP.DEPBAR.LE gsb0, 0x1"], ["FMUL R30, R30, R2"], 0),                       # S retired, P V still runs
    (["WARPGROUP.DEPBAR.LE gsb0, 0x1"], ["FADD R5, R100, R2"], 1),                       # reads a running accumulator
    (["WARPGROUP.DEPBAR.LE gsb0, 0x1"], ["MOV R201, R3"], 1),                            # rewrites a running A register
    ([], ["FMUL R30, R30, R2"], 1),                                                       # reads S before any wait
    (["WARPGROUP.DEPBAR.LE gsb0, 0x1"], ["@P0 STS.64 [R3+0x10], R150"], 1),             # stores a running accumulator
    (["WARPGROUP.DEPBAR.LE gsb0, 0x1"], ["LDS.128 R148, [R3]"], 1),                      # a wide load into R148..R151
])
def test_hgmma_hazards(between, after, hazards):
    found = kernel_report.hgmma_hazards(_sass(*ISSUE, *between, *after))
    assert len(found) == hazards, found
