"""Backward passes are bitwise reproducible run to run on the CPU (and do not depend on the
number of threads): attention incl. the float-mask gradient and GQA's dk/dv group sums,
varlen, conv2d/hex conv dweight (chunked reductions), pooling, indexed conv (dx through
the inverse table, dweight) and layer norm's weight/bias reductions."""
from __future__ import annotations

import pytest
import torch

from _op_cases import CASES, run


def _equal(a, b):
    out_a, grads_a = a
    out_b, grads_b = b
    assert torch.equal(out_a, out_b)
    for i, (x, y) in enumerate(zip(grads_a, grads_b)):
        assert torch.equal(x, y), f"gradient {i} differs"


@pytest.mark.parametrize("name", sorted(CASES))
def test_backward_bitwise_reproducible(name):
    first = run(name)
    for _ in range(2):
        _equal(first, run(name))


@pytest.mark.parametrize("name", sorted(CASES))
def test_independent_of_thread_count(name):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(name)
        torch.set_num_threads(max(2, before))
        many = run(name)
    finally:
        torch.set_num_threads(before)
    _equal(one, many)
