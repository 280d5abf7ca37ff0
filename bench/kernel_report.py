"""Static report of the compiled CUDA kernels; needs nvcc, no GPU.

For every csrc/<family>/*.cu and every target arch it compiles the file alone with
`nvcc -Xptxas -v`, reads registers, spills, stack and static shared memory per kernel from
ptxas, and counts instructions in the SASS from `cuobjdump -sass`: tensor-core MMA
(HMMA / HGMMA), LDSM (ldmatrix), LDGSTS (cp.async) and LDL/STL (local memory).
Dynamic shared memory is chosen at launch; bench/attention_gpu_notes.md tables it.

Exit status 1 when a rule fails:
  - an attention kernel for float16/bfloat16 has no MMA (other than NO_MATMUL: the backward's
    rowsum preprocess and its dQ conversion, elementwise work; and SM90A_ONLY below sm_90a);
  - an attention kernel spills registers (spill stores/loads or LDL/STL in its SASS);
  - a warpgroup MMA (HGMMA) has a register hazard in the SASS: until the WARPGROUP.DEPBAR that
    retires its group, another instruction writes its register A or accumulators, or reads the
    accumulators (a linear scan in program order; see hgmma_hazards).
Spills in other families are reported as warnings.

  python bench/kernel_report.py                     # sm_80 and sm_90a, every family
  python bench/kernel_report.py --arch 80 --family attention --json out.json

cuobjdump/nvdisasm come from the CUDA toolkit or from pip
(`pip install --target DIR nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm`, then --tools DIR/nvidia/cu13/bin).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_MATMUL = ("bwd_delta", "bwd_dq_convert")
SM90A_ONLY = ("fwd_wgmma", "bwd_wgmma", "wgmma_selftest")  # warpgroup MMA: a trap stub on other archs, never launched there
SASS_OPS = {"mma": r"\b(HMMA|HGMMA)\b", "ldsm": r"\bLDSM\b", "ldgsts": r"\bLDGSTS\b",
            "local": r"\b(LDL|STL)\b"}


def tool_path(extra: list[str]) -> str:
    """PATH with the places cuobjdump/nvdisasm are usually found appended."""
    dirs = list(extra)
    nvcc = shutil.which("nvcc")
    if nvcc:
        dirs.append(os.path.dirname(os.path.realpath(nvcc)))
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            dirs.append(os.path.join(home, "bin"))
    try:
        import nvidia  # the pip wheels' namespace package
        for base in nvidia.__path__:
            dirs += glob.glob(os.path.join(base, "cu*", "bin"))
    except ImportError:
        pass
    return os.pathsep.join([os.environ.get("PATH", "")] + dirs)


def demangle(names: list[str]) -> dict[str, str]:
    if not names or not shutil.which("c++filt"):
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    pretty = []
    for s in out.splitlines():  # "void pfa::fam::(anon)::kern<T, 64>(Params, bool)" -> "kern<T, 64>"
        s = re.sub(r"\(anonymous namespace\)::|pfa::\w+::|^void ", "", s.strip())
        pretty.append(re.sub(r"\([^()]*\)$", "", s))
    return dict(zip(names, pretty))


def compile_one(src: str, arch: str, obj: str) -> str:
    cmd = ["nvcc", "-std=c++17", "-O3", "-I", os.path.join(ROOT, "csrc"), "--expt-relaxed-constexpr",
           "-DPFA_WITH_CUDA=1", "-Xptxas", "-v", "-gencode", f"arch=compute_{arch},code=sm_{arch}",
           "-c", src, "-o", obj]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"nvcc failed for {src} (sm_{arch}):\n{res.stderr[-4000:]}")
    return res.stderr


def parse_ptxas(log: str) -> dict[str, dict]:
    kernels, cur = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            cur = m.group(1)
            kernels[cur] = {"regs": 0, "stack": 0, "spill_stores": 0, "spill_loads": 0, "smem_static": 0}
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            k = kernels[cur]
            k["stack"], k["spill_stores"], k["spill_loads"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            kernels[cur]["regs"] = int(m.group(1))
            m2 = re.search(r"(\d+) bytes smem", line)
            kernels[cur]["smem_static"] = int(m2.group(1)) if m2 else 0
    return kernels


def _register(operand: str) -> int | None:
    m = re.fullmatch(r"-?\|?R(\d+)\|?(\.\w+)*", operand)
    return int(m.group(1)) if m else None


def hgmma_hazards(sass: str) -> list[str]:
    """The instructions of one kernel's SASS that touch a warpgroup MMA's registers while it
    may still run: between an HGMMA and the WARPGROUP.DEPBAR.LE gsb0, N that retires its
    group (the HGMMA carrying gsb0 closes a group), a write to its register A or accumulators,
    or a read of the accumulators. Program order, branches ignored: the kernels keep every
    wgmma and its wait in straight-line code."""
    pending, group, hazards = [], [], []
    for line in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;", line)
        if not m:
            continue
        body = re.sub(r"^@!?U?P\w+\s+", "", m.group(1))
        op = body.split()[0]
        operands = [o.strip() for o in body[len(op):].split(",")]
        if op.startswith("HGMMA"):
            n = int(re.search(r"64x(\d+)x16", op).group(1))
            acc, a = _register(operands[0]), _register(operands[1])
            group.append((set(range(acc, acc + n // 2)), set(range(a, a + 4)) if a is not None else set()))
            if "gsb0" in body:
                pending.append(group)
                group = []
            continue
        if op.startswith("WARPGROUP.DEPBAR"):
            del pending[:max(0, len(pending) - int(operands[-1], 0))]
            continue
        if not pending:
            continue
        accs = set().union(*(acc for g in pending for acc, _ in g))
        a_regs = set().union(*(a for g in pending for _, a in g))
        width = 4 if ".128" in op else 2 if (".64" in op or "WIDE" in op) else 1
        dst = {r + i for r in map(_register, operands[:1]) if r is not None for i in range(width)}
        src = {r for r in map(_register, operands[1:]) if r is not None}
        if op.startswith(("ST", "RED", "ATOM")):  # memory writes read their register operands
            src, dst = src | dst, set()
        if dst & (accs | a_regs) or src & accs:
            hazards.append(m.group(1))
    return hazards


def parse_sass(obj: str, env: dict) -> dict[str, dict]:
    res = subprocess.run(["cuobjdump", "-sass", obj], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit("cuobjdump -sass failed (is nvdisasm on PATH? see --tools):\n" + res.stderr[-2000:])
    parts = re.split(r"\n\s*Function : (\S+)\n", res.stdout)
    return {parts[i]: {**{op: len(re.findall(rx, parts[i + 1])) for op, rx in SASS_OPS.items()},
                       "hgmma_hazards": hgmma_hazards(parts[i + 1])}
            for i in range(1, len(parts), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", help="80, 90a, ... (repeatable; default 80 and 90a)")
    ap.add_argument("--family", action="append", help="csrc/<family> to report (default: all)")
    ap.add_argument("--tools", action="append", default=[], help="extra folder with cuobjdump/nvdisasm")
    ap.add_argument("--json", help="write the rows as JSON here")
    args = ap.parse_args()
    if not shutil.which("nvcc"):
        print("kernel_report: nvcc not found; nothing to report")
        return 0
    env = dict(os.environ, PATH=tool_path(args.tools))
    if not shutil.which("cuobjdump", path=env["PATH"]):
        sys.exit("kernel_report: cuobjdump not found (pip install --target DIR nvidia-cuda-cuobjdump "
                 "nvidia-cuda-nvdisasm, then --tools DIR/nvidia/cu13/bin)")
    archs = args.arch or ["80", "90a"]
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "*", "*.cu")))
    if args.family:
        sources = [s for s in sources if os.path.basename(os.path.dirname(s)) in args.family]
    rows, failures, warnings = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for src in sources:
            family = os.path.basename(os.path.dirname(src))
            for arch in archs:
                obj = os.path.join(tmp, f"{family}_{arch}.o")
                ptxas = parse_ptxas(compile_one(src, arch, obj))
                sass = parse_sass(obj, env)
                names = demangle(sorted(ptxas))
                for mangled, res in sorted(ptxas.items(), key=lambda kv: names[kv[0]]):
                    row = {"family": family, "arch": f"sm_{arch}", "kernel": names[mangled], **res,
                           **sass.get(mangled, {**{op: 0 for op in SASS_OPS}, "hgmma_hazards": []})}
                    rows.append(row)
                    spills = row["spill_stores"] + row["spill_loads"] + row["local"]
                    half = re.search(r"<(__half|__nv_bfloat16)\b", row["kernel"]) is not None
                    where = f"{row['arch']} {row['kernel']}"
                    no_matmul = any(n in row["kernel"] for n in NO_MATMUL) or (
                        arch != "90a" and any(n in row["kernel"] for n in SM90A_ONLY))
                    if family == "attention" and half and row["mma"] == 0 and not no_matmul:
                        failures.append(f"no tensor-core MMA: {where}")
                    for hazard in row["hgmma_hazards"][:5]:
                        failures.append(f"wgmma register hazard: {where}: {hazard}")
                    if spills and family == "attention":
                        failures.append(f"spills: {where}")
                    elif spills:
                        warnings.append(f"spills: {where}")
    w = max((len(r["kernel"]) for r in rows), default=10)
    print(f"{'arch':7} {'kernel':{w}} {'regs':>4} {'spill':>5} {'stack':>5} {'smem':>6} "
          f"{'MMA':>5} {'LDSM':>5} {'LDGSTS':>6} {'LDL/STL':>7}")
    for r in rows:
        print(f"{r['arch']:7} {r['kernel']:{w}} {r['regs']:4} {r['spill_stores'] + r['spill_loads']:5} "
              f"{r['stack']:5} {r['smem_static']:6} {r['mma']:5} {r['ldsm']:5} {r['ldgsts']:6} {r['local']:7}")
    for msg in warnings:
        print("WARNING", msg)
    for msg in failures:
        print("FAIL", msg)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "failures": failures, "warnings": warnings}, f, indent=1)
    print(f"{len(rows)} kernels, {len(failures)} failures, {len(warnings)} warnings")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
