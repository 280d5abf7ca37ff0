"""Thread safety: every op family called from several Python threads at once (the bindings
release the GIL during kernel work, so the calls really overlap) gives bitwise the same
outputs and gradients as serial calls."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from _op_cases import CASES, run

THREADS = 4


def _same(a, b):
    return torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


@pytest.mark.parametrize("name", sorted(CASES))
def test_concurrent_calls_match_serial(name):
    seeds = list(range(2 * THREADS))
    serial = [run(name, s) for s in seeds]
    with ThreadPoolExecutor(THREADS) as pool:
        concurrent = list(pool.map(lambda s: run(name, s), seeds))
    for s, a, b in zip(seeds, serial, concurrent):
        assert _same(a, b), f"{name}: seed {s} differs when run concurrently"


def test_all_families_concurrently():
    """Different ops interleaved on the threads (shared state between families, if any)."""
    jobs = [(name, s) for s in range(2) for name in sorted(CASES)]
    serial = [run(n, s) for n, s in jobs]
    with ThreadPoolExecutor(THREADS) as pool:
        concurrent = list(pool.map(lambda j: run(*j), jobs))
    for (n, s), a, b in zip(jobs, serial, concurrent):
        assert _same(a, b), f"{n}: seed {s} differs when run concurrently with other ops"
