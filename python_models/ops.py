"""The one place where a model's `backend` picks its kernels.

Every model in `python_models` calls its heavy ops through `get_ops(backend)`:

- ``"pyfastattn"``: pyfastattn's public functional API (`pyfastattn.scaled_dot_product_attention`,
  `layer_norm`, `add_layer_norm`, `conv2d`, `hex_conv2d`, `hex_max_pool2d`, `hex.taps`).
- ``"torch"``: the PyTorch reference for the same math (`torch.nn.functional`; hexagonal
  convolution as a masked (2k+1)x(2k+1) `F.conv2d` on the axial tensor, hexagonal max pooling as
  a max over the shifted axial tensor).

Parameters live in the models, never in the ops, so both backends hold exactly the same
parameters and state_dicts. When an op has not landed in the installed pyfastattn, the
pyfastattn backend fails at model construction with a message naming the missing kernel.

Under autocast, the pyfastattn backend casts the inputs the way torch's autocast casts the
matching torch op (attention and convolution in the autocast dtype, layer norm in float32),
so both backends see the same dtypes.
"""
from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Iterable, Optional

import torch
import torch.nn.functional as F

import pyfastattn

BACKENDS = ("pyfastattn", "torch")

# op name in this module -> attribute path in pyfastattn
_PFA_NAMES = {
    "sdpa": "scaled_dot_product_attention",
    "layer_norm": "layer_norm",
    "add_layer_norm": "add_layer_norm",
    "conv2d": "conv2d",
    "hex_conv2d": "hex_conv2d",
    "hex_max_pool2d": "hex_max_pool2d",
    "hex_taps": "hex.taps",
}


def _pfa_attr(path: str):
    obj = pyfastattn
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def missing_kernels(names: Iterable[str]) -> list[str]:
    """pyfastattn functions (public names) among `names` (ops of this module) not installed yet."""
    return [f"pyfastattn.{_PFA_NAMES[n]}" for n in names if _pfa_attr(_PFA_NAMES[n]) is None]


def require(backend: str, names: Iterable[str], who: str) -> None:
    """Raises for an unknown backend, or when pyfastattn lacks a kernel `who` needs."""
    if backend not in BACKENDS:
        raise ValueError(f"{who}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "pyfastattn":
        missing = missing_kernels(names)
        if missing:
            raise RuntimeError(
                f"{who}: backend='pyfastattn' needs {', '.join(missing)}, which this pyfastattn "
                f"build ({pyfastattn.__version__}) does not provide yet (that kernel has not landed); "
                "use backend='torch' meanwhile")


# ---------------------------------------------------------------- hexagonal grid helpers

def _hex_taps_fallback(k: int) -> list[tuple[int, int]]:
    """Hexagon offsets |dr|,|dq|,|dr+dq| <= k, row-major in (dr, dq).

    Used only while `pyfastattn.hex.taps` is absent; the order matters only for the weight's
    last dimension, and both backends read it from the same function.
    """
    return [(dr, dq) for dr in range(-k, k + 1) for dq in range(-k, k + 1) if abs(dr + dq) <= k]


def hex_taps(k: int) -> list[tuple[int, int]]:
    """(dr, dq) offsets of a radius-k hexagonal kernel, in the weight's tap order."""
    taps = _pfa_attr("hex.taps")
    if taps is None:
        return _hex_taps_fallback(k)
    out = taps(k)
    if isinstance(out, torch.Tensor):
        out = out.tolist()
    return [(int(a), int(b)) for a, b in out]


def hex_radius(num_taps: int) -> int:
    k = 0
    while 3 * k * (k + 1) + 1 < num_taps:
        k += 1
    if 3 * k * (k + 1) + 1 != num_taps:
        raise ValueError(f"hexagonal kernel: {num_taps} taps is not 3k(k+1)+1 for any k")
    return k


@functools.lru_cache(maxsize=None)
def _tap_index(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    taps = hex_taps(k)
    dr = torch.tensor([t[0] for t in taps]) + k
    dq = torch.tensor([t[1] for t in taps]) + k
    return dr, dq


def hex_weight_to_dense(weight: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, T) hexagonal weight -> (Cout, Cin, 2k+1, 2k+1), zero outside the hexagon."""
    k = hex_radius(weight.shape[-1])
    dr, dq = _tap_index(k)
    dense = weight.new_zeros(*weight.shape[:-1], 2 * k + 1, 2 * k + 1)
    dense[..., dr.to(weight.device), dq.to(weight.device)] = weight
    return dense


def axial_hexagon_mask(radius: int, size: Optional[int] = None) -> torch.Tensor:
    """Bool (size, size) axial mask of the hexagon of `radius` centred in the tensor."""
    size = 2 * radius + 1 if size is None else size
    c = size // 2
    r = torch.arange(size).view(-1, 1) - c
    q = torch.arange(size).view(1, -1) - c
    return (r.abs() <= radius) & (q.abs() <= radius) & ((r + q).abs() <= radius)


# ---------------------------------------------------------------- torch reference ops

def _torch_hex_conv2d(input, weight, bias=None, stride=1, groups=1):
    k = hex_radius(weight.shape[-1])
    return F.conv2d(input, hex_weight_to_dense(weight), bias, stride=stride, padding=k, groups=groups)


def _torch_hex_max_pool2d(input, radius=1, stride=2):
    # max over the hexagon around each kept cell; cells outside the tensor never win
    k = radius
    padded = F.pad(input, (k, k, k, k), value=float("-inf"))
    R, Q = input.shape[-2:]
    shifted = [padded[..., k + dr: k + dr + R, k + dq: k + dq + Q] for dr, dq in hex_taps(k)]
    out = torch.stack(shifted, dim=0).amax(dim=0)
    return out[..., ::stride, ::stride]


def _torch_add_layer_norm(input, residual, weight=None, bias=None, eps=1e-5):
    total = input + residual
    return F.layer_norm(total, total.shape[-1:], weight, bias, eps), total


# ---------------------------------------------------------------- pyfastattn ops with autocast casts

def _autocast_dtype(t: torch.Tensor) -> Optional[torch.dtype]:
    dev = t.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return None


def _cast(dtype, *ts):
    return tuple(None if t is None or not t.is_floating_point() else t.to(dtype) for t in ts)


def _pfa_sdpa(query, key, value, attn_mask=None, is_causal=False, scale=None):
    fn = _pfa_attr("scaled_dot_product_attention")
    dt = _autocast_dtype(query) or query.dtype
    query, key, value = _cast(dt, query, key, value)
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.to(dt)
    return fn(query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale)


def _pfa_layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    if _autocast_dtype(input) is not None:
        input, weight, bias = _cast(torch.float32, input, weight, bias)
    return pyfastattn.layer_norm(input, normalized_shape, weight, bias, eps)


def _pfa_add_layer_norm(input, residual, weight=None, bias=None, eps=1e-5):
    if _autocast_dtype(input) is not None:
        input, residual, weight, bias = _cast(torch.float32, input, residual, weight, bias)
    return pyfastattn.add_layer_norm(input, residual, weight, bias, eps)


def _pfa_conv(name):
    def conv(input, weight, bias=None, **kw):
        dt = _autocast_dtype(input) or input.dtype
        input, weight, bias = _cast(dt, input, weight, bias)
        return _pfa_attr(name)(input, weight, bias, **kw)
    conv.__name__ = f"_pfa_{name}"
    return conv


def _pfa_hex_max_pool2d(input, radius=1, stride=2):
    return _pfa_attr("hex_max_pool2d")(input, radius=radius, stride=stride)


def _torch_sdpa(query, key, value, attn_mask=None, is_causal=False, scale=None):
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.to(query.dtype)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask,
                                          is_causal=is_causal, scale=scale)


_TORCH = SimpleNamespace(
    name="torch", sdpa=_torch_sdpa, layer_norm=F.layer_norm, add_layer_norm=_torch_add_layer_norm,
    conv2d=F.conv2d, hex_conv2d=_torch_hex_conv2d, hex_max_pool2d=_torch_hex_max_pool2d,
    hex_taps=hex_taps)

_PFA = SimpleNamespace(
    name="pyfastattn", sdpa=_pfa_sdpa, layer_norm=_pfa_layer_norm, add_layer_norm=_pfa_add_layer_norm,
    conv2d=_pfa_conv("conv2d"), hex_conv2d=_pfa_conv("hex_conv2d"),
    hex_max_pool2d=_pfa_hex_max_pool2d, hex_taps=hex_taps)


def get_ops(backend: str, needs: Iterable[str] = (), who: str = "model") -> SimpleNamespace:
    """The op table of `backend`, after checking that the ops in `needs` are available."""
    require(backend, needs, who)
    return _PFA if backend == "pyfastattn" else _TORCH
