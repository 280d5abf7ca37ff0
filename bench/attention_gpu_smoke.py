"""GPU smoke test of CUDA attention against a float64 reference: dtypes, head dims, causal,
masks, GQA, fully masked rows, varlen, bitwise-deterministic backward. Run by gpu_check.sh."""
import sys
import itertools, torch, pyfastattn
torch.manual_seed(0)
dev = "cuda"
def ref(q, k, v, mask, causal, scale):
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = q @ k.transpose(-1, -2) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.double()
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    return torch.nan_to_num(torch.softmax(s, -1), nan=0.0) @ v
fails = 0
for dt, D, causal, mk, (lq, lk), gqa in itertools.product(
        [torch.float16, torch.bfloat16, torch.float32], [8, 40, 64, 128, 256], [False, True],
        [None, "bool", "float"], [(1, 1), (77, 130), (256, 256)], [False, True]):
    B, Hq = 2, 4
    Hkv = 2 if gqa else Hq
    group = Hq // Hkv
    q = torch.randn(B, Hq, lq, D, device=dev, dtype=dt, requires_grad=True)
    k = torch.randn(B, Hkv, lk, D, device=dev, dtype=dt, requires_grad=True)
    v = torch.randn(B, Hkv, lk, D, device=dev, dtype=dt, requires_grad=True)
    mask = None
    if mk == "bool":
        mask = torch.rand(B, 1, 1, lk, device=dev) > 0.3
        mask[..., 0] = True  # no fully masked rows here: torch's own output would be NaN
    elif mk == "float":
        mask = torch.randn(B, Hq, lq, lk, device=dev, dtype=dt, requires_grad=True)
    scale = D ** -0.5
    out = pyfastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
    do = torch.randn_like(out)
    ins = [q, k, v] + ([mask] if mk == "float" else [])
    grads = torch.autograd.grad(out, ins, do)
    leaves = [t.detach().double().requires_grad_() for t in ins]
    r = ref(*leaves[:3], leaves[3] if mk == "float" else mask, causal, scale)
    rg = torch.autograd.grad(r, leaves, do.double())
    if dt == torch.float32:
        # Absolute floor 1e-5 times the size of dP = dO V^T: a gradient that is exactly 0 in exact
        # arithmetic (dq or dMask with one key: dS = dP - rowsum(dO * O) with O = V) is the
        # rounding noise of that difference.
        dp_scale = max(1.0, float((do.double() @ leaves[2].repeat_interleave(group, 1).transpose(-1, -2)).abs().max()))
        ok = lambda a, b, c: ((a.double() - b).abs().max() <= 1e-5 * dp_scale or
                              ((a.double() - b).norm() <= 1e-5 * b.norm() and
                               (a.double() - b).abs().max() <= 1e-4 * b.abs().max()))
        outs = [(out, r, None)] + [(a, b, None) for a, b in zip(grads, rg)]
    else:
        tq, tk, tv = (t.detach().requires_grad_() for t in (q, k, v))
        mask_leaf = mask.detach().requires_grad_() if mk == "float" else None
        tm = mask_leaf if mk == "float" else mask
        tcausal = causal
        if causal and tm is not None:  # torch rejects attn_mask with is_causal: fold the triangle in
            upper = torch.ones(lq, lk, dtype=torch.bool, device=dev).triu(1)
            tm = tm & ~upper if tm.dtype == torch.bool else tm.masked_fill(upper, float("-inf"))
            tcausal = False
        # torch's own op in this dtype: with GQA, on K/V expanded to Hq heads (torch picks its
        # math backend for enable_gqa with a float mask; expanded, the same fused backends as
        # without GQA, whose rounding is that of a FlashAttention-style kernel)
        to = torch.nn.functional.scaled_dot_product_attention(
            tq, tk.repeat_interleave(group, 1), tv.repeat_interleave(group, 1), attn_mask=tm, is_causal=tcausal)
        tg = torch.autograd.grad(to, [tq, tk, tv] + ([mask_leaf] if mk == "float" else []), do)
        ok = lambda a, b, c: (a.double() - b).abs().max() <= 2 * (c.double() - b).abs().max() + 1e-5
        outs = [(out, r, to)] + list(zip(grads, rg, tg))
    for name, (a, b, c) in zip(["out", "dq", "dk", "dv", "dmask"], outs):
        good = bool(torch.isfinite(a).all()) and bool(ok(a, b, c))
        if not good:
            fails += 1
            print("FAIL", name, dt, D, "causal" if causal else "", mk, lq, lk, "gqa" if gqa else "",
                  "err", float((a.double() - b).abs().max()),
                  "torch err", None if c is None else float((c.double() - b).abs().max()),
                  "max|ref|", float(b.abs().max()))
# fully masked rows: zeros and LSE -inf, never NaN
q = torch.randn(1, 2, 33, 64, device=dev, dtype=torch.float16, requires_grad=True)
k = torch.randn(1, 2, 70, 64, device=dev, dtype=torch.float16, requires_grad=True)
v = torch.randn_like(k, requires_grad=True)
m = torch.rand(1, 1, 33, 70, device=dev) > 0.5
m[:, :, 5] = False
o, lse = pyfastattn.scaled_dot_product_attention(q, k, v, attn_mask=m, return_lse=True)
g = torch.autograd.grad(o, [q, k, v], torch.randn_like(o))
assert (o[:, :, 5] == 0).all() and torch.isneginf(lse[:, :, 5]).all(), "fully masked row"
assert all(torch.isfinite(t).all() for t in (o,) + g), "NaN/inf with a fully masked row"
# varlen with lengths 0, 1 and uneven, against dense per sequence
for dt in (torch.float16, torch.bfloat16, torch.float32):
    lens = [0, 1, 37, 64, 129]
    cu = torch.tensor([0] + list(itertools.accumulate(lens)), device=dev, dtype=torch.int32)
    q = torch.randn(cu[-1].item(), 4, 64, device=dev, dtype=dt)
    k, v = torch.randn_like(q), torch.randn_like(q)
    o = pyfastattn.varlen_attention(q, k, v, cu, cu, max(lens), max(lens), is_causal=True)
    for i, L in enumerate(lens):
        if L == 0: continue
        s = slice(cu[i].item(), cu[i + 1].item())
        d = pyfastattn.scaled_dot_product_attention(*(t[s].transpose(0, 1)[None] for t in (q, k, v)), is_causal=True)
        err = (o[s] - d[0].transpose(0, 1)).abs().max().item()
        if err > (1e-5 if dt == torch.float32 else 1e-2):
            fails += 1; print("FAIL varlen", dt, L, err)
# determinism: two backward runs must be bitwise equal
q = torch.randn(2, 8, 300, 128, device=dev, dtype=torch.bfloat16, requires_grad=True)
k = torch.randn(2, 2, 300, 128, device=dev, dtype=torch.bfloat16, requires_grad=True)
v = torch.randn_like(k, requires_grad=True)
bias = torch.randn(2, 8, 300, 300, device=dev, dtype=torch.bfloat16, requires_grad=True)
do = torch.randn_like(q)
g1 = torch.autograd.grad(pyfastattn.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True), [q, k, v, bias], do)
g2 = torch.autograd.grad(pyfastattn.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True), [q, k, v, bias], do)
if not all(torch.equal(a, b) for a, b in zip(g1, g2)):
    fails += 1; print("FAIL nondeterministic backward")
print("failures:", fails)
sys.exit(1 if fails else 0)
