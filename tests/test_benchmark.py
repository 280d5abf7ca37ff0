"""The benchmark harness (`pyfastattn bench`): it runs, and its rows carry the ratios the README
quotes. Speed itself is never asserted here."""
from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest


def test_keep_freed_memory_applies_on_glibc():
    from pyfastattn.benchmark.common import keep_freed_memory
    applied = keep_freed_memory()
    assert isinstance(applied, bool)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert applied


@pytest.mark.parametrize("family", ["norm", "conv"])
def test_bench_quick_writes_ratios(tmp_path, family):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "-m", "pyfastattn", "bench", family, "--device", "cpu", "--quick",
                          "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = json.loads(out.read_text())["results"]
    ours = [r for r in rows if r["impl"] == "pyfastattn"]
    assert ours and all(r["ms"] > 0 and r["vs_torch"] > 0 for r in ours)
    assert {r["family"] for r in rows} == {family}
