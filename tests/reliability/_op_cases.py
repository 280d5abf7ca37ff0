"""Small but multi-block problems for every op family, shared by the determinism and thread
tests: each case is (name, make(seed) -> (fn, inputs)); fn(*inputs) returns a tensor and
every floating input that requires grad gets a gradient."""
from __future__ import annotations

import torch

import pyfastattn
import pyfastattn.hex as hx


def _r(g, *shape, grad=True):
    return torch.randn(*shape, generator=g).requires_grad_(grad)


def attention(g):
    q, k, v = _r(g, 2, 4, 70, 40), _r(g, 2, 2, 90, 40), _r(g, 2, 2, 90, 40)
    mask = _r(g, 2, 1, 70, 90)  # float mask, broadcast over heads: its gradient is a reduction
    return (lambda q, k, v, m: pyfastattn.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True),
            [q, k, v, mask])


def attention_causal_bool(g):
    q, k, v = _r(g, 1, 2, 130, 16), _r(g, 1, 2, 100, 16), _r(g, 1, 2, 100, 16)
    mask = torch.rand(130, 100, generator=g) < 0.8
    return (lambda q, k, v: pyfastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True),
            [q, k, v])


def varlen(g):
    cu = torch.tensor([0, 0, 37, 100, 101], dtype=torch.int32)
    q, k, v = _r(g, 101, 4, 32), _r(g, 101, 2, 32), _r(g, 101, 2, 32)
    return lambda q, k, v: pyfastattn.varlen_attention(q, k, v, cu, cu, 63, 63, is_causal=True), [q, k, v]


def conv2d(g):
    x, w, b = _r(g, 5, 6, 17, 19), _r(g, 8, 3, 3, 3), _r(g, 8)
    return lambda x, w, b: pyfastattn.conv2d(x, w, b, stride=(1, 2), padding=1, groups=2), [x, w, b]


def hex_conv2d(g):
    x, w, b = _r(g, 5, 4, 15, 13), _r(g, 6, 4, 19), _r(g, 6)
    return lambda x, w, b: pyfastattn.hex_conv2d(x, w, b, stride=2), [x, w, b]


def hex_pool(g):
    x = _r(g, 3, 5, 16, 14)
    return lambda x: pyfastattn.hex_max_pool2d(x, 2, 2) + pyfastattn.hex_avg_pool2d(x, 2, 2), [x]


def indexed_conv(g):
    cells = hx.grid_cells(12, 11)
    keep = torch.rand(cells.shape[0], generator=g) < 0.8  # an array with missing stations
    nb = hx.conv_neighbors(cells[keep], 2)
    x, w, b = _r(g, 4, 5, nb.shape[0]), _r(g, 7, 5, nb.shape[1]), _r(g, 7)
    return lambda x, w, b: pyfastattn.indexed_conv(x, w, nb, b), [x, w, b]


def layer_norm(g):
    x, r, w, b = _r(g, 40, 300), _r(g, 40, 300), _r(g, 300), _r(g, 300)
    return lambda x, r, w, b: pyfastattn.add_layer_norm(x, r, w, b)[0], [x, r, w, b]


CASES = {f.__name__: f for f in (attention, attention_causal_bool, varlen, conv2d, hex_conv2d, hex_pool,
                                 indexed_conv, layer_norm)}


def run(name: str, seed: int = 0):
    """(output, gradients) of one fresh forward + backward."""
    g = torch.Generator().manual_seed(seed)
    fn, inputs = CASES[name](g)
    out = fn(*inputs)
    dout = torch.randn(out.shape, generator=g)
    leaves = [t for t in inputs if t.requires_grad]
    return out.detach(), torch.autograd.grad(out, leaves, dout)
