# Drives every CUDA conv kernel path once and checks it against a float64 CPU reference.
# Usage: python conv_gpu_paths.py [--device cuda] [--small]   (--small: sanitizer-sized)
import argparse
import torch
import torch.nn.functional as F
import pyfastattn as pfa
from pyfastattn.testing import assert_matches_reference

ap = argparse.ArgumentParser()
ap.add_argument("--device", default="cuda")
ap.add_argument("--small", action="store_true")
args = ap.parse_args()
dev = args.device
HALF = (torch.float16, torch.bfloat16)
failures = []


def hex_square(w, k):
    sq = w.new_zeros(*w.shape[:2], 2 * k + 1, 2 * k + 1)
    for i, t in enumerate(pfa.hex.taps(k)):
        dr, dq = int(t[0]), int(t[1])
        sq[:, :, dr + k, dq + k] = w[:, :, i]
    return sq


def run(name, op, ref_op, tensors, dtype, grad_idx, torch_ref=True):
    """op/ref_op take the same tensors; grads of tensors[grad_idx] are compared too."""
    g = torch.Generator().manual_seed(len(failures) + 1234)
    base = [t if t.dtype in (torch.int32, torch.int64) else t for t in tensors]
    ref_in = [t.detach().clone().requires_grad_(i in grad_idx) for i, t in enumerate(base)]
    ref = ref_op(*ref_in)
    dy = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, [ref_in[i] for i in grad_idx], dy)

    def on(device, dt, fn):
        ins = [t.detach().to(device) if t.dtype in (torch.int32, torch.int64)
               else t.detach().to(device, dt).requires_grad_(i in grad_idx) for i, t in enumerate(base)]
        out = fn(*ins)
        grads = torch.autograd.grad(out, [ins[i] for i in grad_idx], dy.to(device, dt))
        return out, grads

    try:
        out, grads = on(dev, dtype, op)
        same = on(dev, dtype, ref_op) if (dtype in HALF and torch_ref) else \
            (on("cpu", dtype, op) if dtype in HALF else (None, [None] * len(grad_idx)))
        assert_matches_reference(out, ref, same[0], what=f"{name} out")
        for i, (a, b, c) in enumerate(zip(grads, ref_grads, same[1])):
            assert_matches_reference(a, b, c, what=f"{name} grad[{grad_idx[i]}]")
        # Deterministic weight/bias gradients: a second backward is bitwise identical.
        out2, grads2 = on(dev, dtype, op)
        for a, b in zip(grads, grads2):
            assert torch.equal(a, b), f"{name}: gradients differ between two identical runs"
        print(f"ok    {name}")
    except Exception as e:  # report every case, fail at the end
        failures.append(name)
        print(f"FAIL  {name}: {type(e).__name__}: {e}")


def rnd(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


S = 1 if args.small else 2  # batch
conv_cases = [
    # (name, N, Cin, Cout, H, W, kernel, stride, padding, dilation, groups, dtypes)  -> path
    ("direct8 fwd / direct1 dx / CUDA-core dw", S, 5, 12, 11, 13, 3, 1, 1, 1, 1, (torch.float32, torch.float16)),
    ("gemm fwd + gemm dx stride 2 + mma dw", S, 32, 64, 14, 14, 3, 2, 1, 1, 1, HALF),
    ("gemm fast loader, N-tile tail", S, 48, 40, 9, 7, 5, 1, "same", 2, 1, HALF),
    ("gemm generic loader", S, 36, 33, 10, 9, 3, 1, 1, 1, 1, (torch.float16,)),
    ("gemm groups", S, 64, 64, 8, 8, 3, 1, 1, 1, 2, (torch.bfloat16,)),
    ("depthwise direct1", S, 16, 16, 12, 12, 3, 1, 1, 1, 16, (torch.float32, torch.bfloat16)),
    ("1x1 fp32", S, 7, 9, 5, 6, 1, 1, 0, 1, 1, (torch.float32,)),
    ("fp32 32->64 3x3 s2", S, 32, 64, 14, 14, 3, 2, 1, 1, 1, (torch.float32,)),
    ("opt-in smem (dilation 60)", 1, 1, 8, 130, 130, 3, 1, 0, 60, 1, (torch.float32,)),
    ("no-smem fallback fwd (stride 150)", 1, 2, 8, 300, 300, 2, 150, 0, 1, 1, (torch.float32, torch.float16)),
]
for (name, N, ci, co, H, W, k, s, p, d, gr, dts) in conv_cases:
    x, w, b = rnd(N, ci, H, W, seed=1), rnd(co, ci // gr, k, k, seed=2), rnd(co, seed=3)
    for dt in dts:
        run(f"conv2d {name} {dt}",
            lambda x, w, b: pfa.conv2d(x, w, b, stride=s, padding=p, dilation=d, groups=gr),
            lambda x, w, b: F.conv2d(x, w, b, stride=s, padding=p, dilation=d, groups=gr),
            [x, w, b], dt, (0, 1, 2))

hex_cases = [("hex k1 s1 2->32", 1, 2, 32, 13, 13, 1, 1), ("hex k1 s2 32->64", 1, 32, 64, 13, 13, 1, 2),
             ("hex k2 s1 32->32", 2, 32, 32, 9, 11, 2, 1)]
for (name, N, ci, co, R, Q, k, s) in hex_cases:
    T = 3 * k * (k + 1) + 1
    x, w, b = rnd(N * S, ci, R, Q, seed=4), rnd(co, ci, T, seed=5), rnd(co, seed=6)
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        run(f"hex_conv2d {name} {dt}", lambda x, w, b: pfa.hex_conv2d(x, w, b, stride=s),
            lambda x, w, b: F.conv2d(x, hex_square(w, k), b, stride=s, padding=k), [x, w, b], dt, (0, 1, 2))

for mode, fn in (("max", pfa.hex_max_pool2d), ("avg", pfa.hex_avg_pool2d)):
    for dt in (torch.float32, torch.float16):
        x = rnd(S, 3, 9, 10, seed=7)
        run(f"hex_{mode}_pool2d r1 s2 {dt}", lambda x: fn(x, radius=1, stride=2),
            lambda x: fn(x.cpu(), radius=1, stride=2).to(x.device), [x], dt, (0,), torch_ref=False)

# indexed_conv: a hexagonal patch with missing stations (-1), against gather + einsum.
P, T = 40, 7
nb = torch.randint(-1, P, (P, T), generator=torch.Generator().manual_seed(8), dtype=torch.int32)
def idx_ref(x, w, b, nb):
    xg = F.pad(x, (0, 1))[:, :, nb.long().where(nb >= 0, torch.full_like(nb.long(), x.shape[-1]))]
    return torch.einsum("ncot,kct->nko", xg, w) + b[None, :, None]
for cout in (24, 40):  # d weight on CUDA cores / on tensor cores (fp16, >= 32 channels)
    for dt in (torch.float32, torch.float16):
        x, w, b = rnd(S, 20, P, seed=9), rnd(cout, 20, T, seed=10), rnd(cout, seed=11)
        run(f"indexed_conv 20->{cout} {dt}", lambda x, w, b, nb: pfa.indexed_conv(x, w, nb, b),
            lambda x, w, b, nb: idx_ref(x, w, b, nb.to(x.device)), [x, w, b, nb], dt, (0, 1, 2))

print(f"{len(failures)} failure(s)" + (": " + ", ".join(failures) if failures else ""))
raise SystemExit(1 if failures else 0)
