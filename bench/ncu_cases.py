"""One call of each kernel worth profiling, for Nsight Compute (bench/ncu_profile.sh runs it).

Attention forward + backward (bf16, B=4 H=16 L=4096 D=128, the issue's target case) and the
layer norm forward + backward (bf16, 8192 x 4096). Fresh random inputs; nothing is timed here.
"""
import torch

import pyfastattn


def main():
    torch.manual_seed(0)
    dt = torch.bfloat16
    q, k, v = (torch.randn(4, 16, 4096, 128, device="cuda", dtype=dt, requires_grad=True) for _ in range(3))
    out = pyfastattn.scaled_dot_product_attention(q, k, v)
    torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    x = torch.randn(8192, 4096, device="cuda", dtype=dt, requires_grad=True)
    w = torch.randn(4096, device="cuda", dtype=dt, requires_grad=True)
    b = torch.randn(4096, device="cuda", dtype=dt, requires_grad=True)
    y = pyfastattn.layer_norm(x, (4096,), w, b)
    torch.autograd.grad(y, (x, w, b), torch.randn_like(y))
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
