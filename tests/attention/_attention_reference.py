"""Float64 math reference for attention tests (plain torch ops, differentiable)."""
from __future__ import annotations

import math

import torch


def attention_ref(q, k, v, mask=None, is_causal=False, scale=None, *, masked_below=-1e30 / 1.4426950408889634):
    """out, lse of softmax(scale q k^T + bias) v in float64 with pyfastattn's masking rules.

    Bool mask False, causal j > i, and logits <= masked_below (a bias of -inf) do not take part;
    a row with no key gives out = 0 and lse = -inf. GQA: key/value heads are repeated.
    Gradients flow to q, k, v and a float mask.
    """
    q, k, v = q.double(), k.double(), v.double()
    hq, hk = q.shape[1], k.shape[1]
    if hq != hk:
        k = k.repeat_interleave(hq // hk, dim=1)
        v = v.repeat_interleave(hq // hk, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = scale * (q @ k.transpose(-1, -2))
    lq, lk = s.shape[-2:]
    visible = torch.ones(s.shape, dtype=torch.bool)
    if mask is not None:
        if mask.dtype == torch.bool:
            visible = visible & mask
        else:
            s = s + mask.double()
    if is_causal:
        visible = visible & torch.ones(lq, lk, dtype=torch.bool).tril()
    visible = visible & (s.detach() > masked_below)
    s_masked = torch.where(visible, s, torch.full_like(s, -math.inf))
    m = s_masked.detach().amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.where(visible, torch.exp(torch.where(visible, s, torch.zeros_like(s)) - m), torch.zeros_like(s))
    l = e.sum(-1, keepdim=True)
    p = e / torch.where(l > 0, l, torch.ones_like(l))
    out = p @ v
    lse = torch.where(l > 0, m + torch.log(torch.where(l > 0, l, torch.ones_like(l))),
                      torch.full_like(l, -math.inf)).squeeze(-1)
    return out, lse


def varlen_ref(q, k, v, cu_q, cu_k, is_causal=False, scale=None):
    """Per-sequence dense reference for packed (total, H, D) inputs."""
    outs, lses = [], []
    for b in range(cu_q.numel() - 1):
        q0, q1 = int(cu_q[b]), int(cu_q[b + 1])
        k0, k1 = int(cu_k[b]), int(cu_k[b + 1])
        qb = q[q0:q1].transpose(0, 1).unsqueeze(0)
        kb = k[k0:k1].transpose(0, 1).unsqueeze(0)
        vb = v[k0:k1].transpose(0, 1).unsqueeze(0)
        if q1 == q0 or k1 == k0:  # nothing to attend to: zeros (kept differentiable), lse -inf
            outs.append(q[q0:q1] * 0.0)
            lses.append(torch.full((q.shape[1], q1 - q0), -math.inf, dtype=torch.float64))
            continue
        o, l = attention_ref(qb, kb, vb, is_causal=is_causal, scale=scale)
        outs.append(o[0].transpose(0, 1))
        lses.append(l[0])
    return torch.cat(outs, 0), torch.cat(lses, -1)


def summed_dscore_magnitude(q, k, v, mask, dout, is_causal=False, scale=None):
    """sum |dS| over the broadcast dims of a float mask (any rank <= 4), in float64: the size
    of the terms its gradient adds up, which sets the rounding noise of that sum."""
    q, k, v = (t.detach().double() for t in (q, k, v))
    full = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    mask4 = mask.detach().double().reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    mask_full = mask4.expand(full).clone().requires_grad_(True)
    out, _ = attention_ref(q, k, v, mask=mask_full, is_causal=is_causal, scale=scale)
    (ds,) = torch.autograd.grad(out, mask_full, dout.double())
    return ds.abs().sum_to_size(mask4.shape).reshape(mask.shape)


def assert_rounding_noise(got, name, summed_magnitude=None):
    """A gradient that is mathematically zero (dq with one key, a mask's gradient summed over
    all keys) holds rounding noise only: two ulps of the terms summed (300 seeded float32 runs of
    the (1,1,1,1) mask case stayed under 7% of that), or a fixed floor."""
    floor = 1e-12 if got.dtype == torch.float64 else 1e-5
    bound = torch.full_like(got, floor, dtype=torch.float64)
    if summed_magnitude is not None:
        bound = torch.clamp(2 * torch.finfo(got.dtype).eps * summed_magnitude, min=floor)
    err = got.double().abs()
    assert (err <= bound).all(), f"{name}: {err.max().item()} above its rounding bound"
