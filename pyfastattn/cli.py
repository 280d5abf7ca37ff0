"""`pyfastattn info | bench | train`: the application layer.

Benchmarks and models are imported inside their subcommands, so `info` stays light.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

# Public op -> kernel family that implements it.
OPS = {
    "layer_norm": "norm",
    "rms_norm": "norm",
    "add_layer_norm": "norm",
    "scaled_dot_product_attention": "attention",
    "varlen_attention": "attention",
    "conv2d": "conv",
    "hex_conv2d": "conv",
    "hex_max_pool2d": "conv",
    "hex_avg_pool2d": "conv",
    "indexed_conv": "conv",
}


def _gpus() -> list[str]:
    import torch
    if not torch.cuda.is_available():
        return []
    return [f"cuda:{i} {torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
            for i in range(torch.cuda.device_count())]


def cmd_info(args) -> int:
    import torch
    import pyfastattn
    from pyfastattn import _C
    from pyfastattn._C import cuda_device_count
    info = dict(pyfastattn.BUILD_INFO)
    gpus = _gpus()
    families = set(info["families"])
    ops = {}
    for op, fam in OPS.items():
        present = fam in families and hasattr(pyfastattn, op)
        ops[op] = {"cpu": present, "cuda": present and info["cuda"] and bool(gpus)}
    if args.json:
        print(json.dumps({"version": pyfastattn.__version__, "torch": torch.__version__, "build": info,
                          "gpus": gpus, "ops": ops}, indent=2))
        return 0
    print(f"pyfastattn {pyfastattn.__version__} (torch {torch.__version__})")
    if info["cuda"]:
        rt = info["cuda_runtime"]
        print(f"build: CPU + CUDA {rt // 1000}.{rt % 1000 // 10}, archs {info['cuda_archs']}")
    else:
        print("build: CPU only (no CUDA kernels compiled)")
    if info["sanitize"]:
        print("build: AddressSanitizer + UBSan instrumented")
    print(f"kernel families: {', '.join(sorted(families)) or 'none'}")
    print(f"CPU threads: {torch.get_num_threads()}")
    if gpus:
        print("GPUs: " + "; ".join(gpus))
        if "attention" in families and info["cuda"]:
            ok = _C.attention.wgmma_available()
            print("attention with warpgroup MMA (PYFASTATTN_ATTN_FWD_WGMMA=1, PYFASTATTN_ATTN_BWD_WGMMA=1): "
                  + ("available on this GPU" if ok else "not on this GPU or build (needs sm_90 and sm_90a code)"))
            if ok:
                from .testing import wgmma_selftest
                wrong = {name: n for name, n in wgmma_selftest().items() if n}
                print("  operand self-test (bf16): " + (f"FAILED {wrong}" if wrong else "every form exact"))
    else:
        print(f"GPUs: none visible (runtime sees {cuda_device_count()})")
    print("ops:")
    for op, where in ops.items():
        places = [d for d in ("cpu", "cuda") if where[d]]
        print(f"  {op:30s} {', '.join(places) if places else 'not available in this build'}")
    return 0


def cmd_bench(args) -> int:
    import torch
    from pyfastattn.benchmark import FAMILIES
    from pyfastattn.benchmark.common import device_name, format_table, keep_freed_memory, write_json
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and keep_freed_memory():
        print("note: malloc keeps freed memory for the run (steady CPU timings; see "
              "pyfastattn.benchmark.common.keep_freed_memory)", file=sys.stderr)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    if device == "cpu" and args.dtype == "fp16":
        print("note: fp16 on the CPU is emulated by every implementation; timings say little", file=sys.stderr)
    families = args.families or list(FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        print(f"unknown benchmark family {unknown}; choose from {list(FAMILIES)}", file=sys.stderr)
        return 2
    all_rows = []
    for fam in families:
        try:
            mod = importlib.import_module(FAMILIES[fam])
        except ImportError as e:
            print(f"[{fam}] not available in this build: {e}", file=sys.stderr)
            continue
        rows = mod.run(device, dtype, args.quick)
        for r in rows:
            r.setdefault("family", fam)
        all_rows.extend(rows)
        cols = [c for c in ("case", "impl", "pass", "ms", "tflops", "gbps", "vs_torch", "ours_speedup") if any(c in r for r in rows)]
        print(f"\n== {fam} on {device_name(device)}, {args.dtype} ==")
        print(format_table(rows, cols))
    if args.json:
        import datetime
        write_json(args.json, {"device": device_name(device), "dtype": args.dtype,
                               "date": datetime.date.today().isoformat(), "results": all_rows})
    if args.plot and all_rows:
        _plot(all_rows, args.plot)
    return 0


def _plot(rows, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ratios = [r for r in rows if r.get("vs_torch") is not None and r.get("impl") == "pyfastattn"]
    if not ratios:
        return
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(ratios) + 1.5))
    labels = [f"{r['family']}: {r['case']} {r.get('pass', '')}" for r in ratios]
    ax.barh(labels, [r["vs_torch"] for r in ratios])
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("speed-up over PyTorch (>1 is faster)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def cmd_train(args) -> int:
    train = importlib.import_module("python_models.train")
    return int(train.main(args.train_args) or 0)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        # argparse's REMAINDER drops a leading option (`train -h`): hand everything over as is
        return cmd_train(argparse.Namespace(train_args=argv[1:]))
    parser = argparse.ArgumentParser(prog="pyfastattn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="build, CUDA archs, devices, which ops run where")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(fn=cmd_info)
    p = sub.add_parser("bench", help="microbenchmarks against PyTorch (and peers)")
    p.add_argument("families", nargs="*", help="norm, attention, conv (default: all)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    p.add_argument("--json", metavar="PATH", help="write all results as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a bar chart of speed-ups (PNG)")
    p.set_defaults(fn=cmd_bench)
    p = sub.add_parser("train", help="train an example model (see `pyfastattn train -h`)", add_help=False)
    p.add_argument("train_args", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_train)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
