"""One call of each kernel worth profiling, for Nsight Compute (bench/ncu_profile.sh runs it).

  python bench/ncu_cases.py [attention] [norm] [conv]     (default: attention and norm)

attention: forward + backward, bf16, B=4 H=16 L=4096 D=128 (the issue's target case);
norm: layer_norm forward + backward, bf16, 8192 x 4096; conv: hex_conv2d 13x13 32->64 and
conv2d 32x32x32->64 k3 forward + backward, bf16. Fresh random inputs; nothing is timed.
"""
import sys

import torch

import pyfastattn


def attention():
    q, k, v = (torch.randn(4, 16, 4096, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    out = pyfastattn.scaled_dot_product_attention(q, k, v)
    torch.autograd.grad(out, (q, k, v), torch.randn_like(out))


def norm():
    x = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = pyfastattn.layer_norm(x, (4096,), w, b)
    torch.autograd.grad(y, (x, w, b), torch.randn_like(y))


def conv():
    for fn, x, w in [(pyfastattn.hex_conv2d, (256, 32, 13, 13), (64, 32, 7)),
                     (lambda x, w, b: pyfastattn.conv2d(x, w, b, 1, 1), (128, 32, 32, 32), (64, 32, 3, 3))]:
        ins = [torch.randn(*shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for shape in (x, w, (w[0],))]
        y = fn(*ins)
        torch.autograd.grad(y, ins, torch.randn_like(y))


if __name__ == "__main__":
    torch.manual_seed(0)
    for name in sys.argv[1:] or ["attention", "norm"]:
        {"attention": attention, "norm": norm, "conv": conv}[name]()
    torch.cuda.synchronize()
