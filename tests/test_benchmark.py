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


def test_time_fns_samples_in_rotating_rounds():
    from pyfastattn.benchmark.common import time_fns
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = time_fns(fns, "cpu", warmup=1, reps=3)
    assert sorted(times) == ["a", "b", "c"] and all(t >= 0 for t in times.values())
    # warm-ups, then each round one sample of every function, starting one further along
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab"


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
