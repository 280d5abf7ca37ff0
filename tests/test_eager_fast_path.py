"""The eager fast path of pyfastattn._ops: same results and gradients as the registered op,
and the registered op whenever something could observe the difference."""
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch._subclasses.fake_tensor import FakeTensorMode

import pyfastattn


class _Passthrough(TorchFunctionMode):
    """Any torch function mode sends the call through the registered custom op."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _cases():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    mask = r(1, 1, 5, 6)
    return [
        ("layer_norm", lambda x, w, b: pyfastattn.layer_norm(x, (8,), w, b), (r(3, 8), r(8), r(8))),
        ("add_layer_norm", lambda x, res, w: sum(pyfastattn.add_layer_norm(x, res, w)), (r(3, 8), r(3, 8), r(8))),
        ("sdpa float mask", lambda q, k, v, m: pyfastattn.scaled_dot_product_attention(q, k, v, attn_mask=m),
         (r(2, 2, 5, 4), r(2, 2, 6, 4), r(2, 2, 6, 4), mask)),
        ("conv2d", lambda x, w, b: pyfastattn.conv2d(x, w, b, padding=1), (r(2, 3, 5, 5), r(4, 3, 3, 3), r(4))),
        ("hex_max_pool2d", lambda x: pyfastattn.hex_max_pool2d(x), (r(1, 2, 6, 6),)),
    ]


@pytest.mark.parametrize("name,fn,args", _cases(), ids=[c[0] for c in _cases()])
def test_fast_path_matches_registered_op(name, fn, args):
    def run(through_op):
        leaves = [a.clone().requires_grad_() for a in args]
        if through_op:
            with _Passthrough():
                out = fn(*leaves)
        else:
            out = fn(*leaves)
        grads = torch.autograd.grad(out.square().sum(), leaves)
        return out.detach(), grads

    (out_fast, g_fast), (out_op, g_op) = run(False), run(True)
    assert torch.equal(out_fast, out_op)
    for a, b in zip(g_fast, g_op):
        assert torch.equal(a, b)


def test_which_path_runs():
    """Plain eager calls run the impl through the eager autograd.Function; a mode sends them
    through the registered op (whose autograd node torch generates)."""
    x = torch.randn(2, 8, requires_grad=True)
    assert "eager" in type(pyfastattn.layer_norm(x, 8).grad_fn).__name__
    with _Passthrough():
        assert "GeneratedBackwardFor_pyfastattn_norm_forward" in type(pyfastattn.layer_norm(x, 8).grad_fn).__name__
    with torch.no_grad():
        assert pyfastattn.layer_norm(x, 8).grad_fn is None


def test_fake_tensors_take_the_registered_op():
    with FakeTensorMode():
        x = torch.empty(4, 16)
        y = pyfastattn.layer_norm(x, 16)
        q = torch.empty(1, 2, 7, 8)
        o = pyfastattn.scaled_dot_product_attention(q, q, q)
    assert type(y).__name__ == "FakeTensor" and y.shape == (4, 16)
    assert type(o).__name__ == "FakeTensor" and o.shape == (1, 2, 7, 8)


def test_backward_of_backward_still_raises():
    """The backward ops have no autograd formula: double backward must fail loudly, not give zeros."""
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(pyfastattn.layer_norm(x, 8).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        gx.sum().backward()
