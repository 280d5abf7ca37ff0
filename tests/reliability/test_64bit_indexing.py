"""64-bit indexing on the CPU, cheaply: inputs are strided views whose second batch entry
(or token) starts 2^31 + 5 elements into an untouched torch.empty buffer, so a 32-bit
offset would wrap; only the few pages written below cost memory. Forward and backward
read the inputs at those offsets (outputs and gradients are fresh, small tensors)."""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import pyfastattn
import pyfastattn.hex as hx
from pyfastattn.testing import assert_matches_reference

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "attention"))
from _attention_reference import attention_ref, varlen_ref  # noqa: E402

FAR = 2**31 + 5
SLOT = 4096  # elements per view entry: the views of one test sit side by side in one buffer


@pytest.fixture
def far_view():
    """far_view(shape, g): a float32 tensor of shape (2, ...) whose dim-0 stride is FAR (values
    random). All views of a test share one untouched 8 GiB buffer (one reservation)."""
    try:
        base = torch.empty(FAR + 16 * SLOT, dtype=torch.float32)
    except RuntimeError as e:  # address space refused (strict overcommit): nothing to test
        pytest.skip(f"cannot reserve 8 GiB of address space: {e}")
    used = [0]

    def make(shape, g):
        assert shape[0] == 2 and math.prod(shape[1:]) <= SLOT
        t = base.as_strided(shape, [FAR] + list(torch.empty(shape[1:]).stride()), used[0] * SLOT)
        used[0] += 1
        t.copy_(torch.randn(shape, generator=g))
        return t
    yield make
    del base


def check_fwd_bwd(ours, ref, inputs, g):
    leaves = [t.requires_grad_(True) for t in inputs]
    ref_leaves = [t.detach().double().requires_grad_(True) for t in inputs]
    out, ref_out = ours(*leaves), ref(*ref_leaves)
    assert_matches_reference(out, ref_out, what="out")
    dout = torch.randn(out.shape, generator=g)
    for i, (a, w) in enumerate(zip(torch.autograd.grad(out, leaves, dout),
                                   torch.autograd.grad(ref_out, ref_leaves, dout.double()))):
        assert_matches_reference(a, w, what=f"grad {i}")


def test_attention_batch_offsets_past_2_31(seed, far_view):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (far_view((2, 2, 5, 16), g) for _ in range(3))
    mask = far_view((2, 1, 5, 5), g)
    check_fwd_bwd(lambda q, k, v, m: pyfastattn.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=True),
                  lambda q, k, v, m: attention_ref(q, k, v, mask=m, is_causal=True)[0], [q, k, v, mask], g)


def test_varlen_token_offsets_past_2_31(seed, far_view):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (far_view((2, 2, 8), g) for _ in range(3))  # token stride FAR: one 2-token sequence
    cu = torch.tensor([0, 2], dtype=torch.int32)
    check_fwd_bwd(lambda q, k, v: pyfastattn.varlen_attention(q, k, v, cu, cu, 2, 2, is_causal=True),
                  lambda q, k, v: varlen_ref(q, k, v, cu, cu, is_causal=True)[0], [q, k, v], g)


def test_conv2d_and_hex_batch_offsets_past_2_31(seed, far_view):
    g = torch.Generator().manual_seed(seed)
    x = far_view((2, 3, 6, 7), g)
    w = torch.randn(4, 3, 3, 3, generator=g)
    check_fwd_bwd(lambda x, w: pyfastattn.conv2d(x, w, padding=1, stride=(1, 2)),
                  lambda x, w: F.conv2d(x, w, padding=1, stride=(1, 2)), [x, w], g)
    wh = torch.randn(4, 3, 7, generator=g)
    check_fwd_bwd(lambda x, w: pyfastattn.hex_conv2d(x, w),
                  lambda x, w: F.conv2d(x, hx.hex_to_square_weight(w), padding=1), [x.detach(), wh], g)


def test_pooling_batch_offsets_past_2_31(seed, far_view):
    g = torch.Generator().manual_seed(seed)
    x = far_view((2, 2, 6, 5), g)
    # the reference: the same op on a contiguous copy (its parity is tests/conv's job)
    check_fwd_bwd(lambda x: pyfastattn.hex_avg_pool2d(x, 1, 1),
                  lambda x: pyfastattn.hex_avg_pool2d(x.contiguous(), 1, 1), [x], g)
    check_fwd_bwd(lambda x: pyfastattn.hex_max_pool2d(x, 1, 2),
                  lambda x: pyfastattn.hex_max_pool2d(x.contiguous(), 1, 2), [x.detach()], g)


def test_indexed_conv_batch_offsets_past_2_31(seed, far_view):
    g = torch.Generator().manual_seed(seed)
    x = far_view((2, 3, 10), g)
    w = torch.randn(4, 3, 5, generator=g)
    nb = torch.randint(-1, 10, (6, 5), generator=g)

    def ref(x, w):
        idx = nb.clamp(min=0)
        return torch.einsum("nipt,oit->nop", x[:, :, idx] * (nb >= 0).to(x.dtype), w)
    check_fwd_bwd(lambda x, w: pyfastattn.indexed_conv(x, w, nb), ref, [x, w], g)
