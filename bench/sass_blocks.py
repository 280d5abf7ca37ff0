"""The static shape of one kernel's SASS, for counting instructions along a path without a GPU.

    python bench/sass_blocks.py OBJ KERNEL_REGEX [--range LO HI] [--tools DIR]

OBJ is an object or shared library with device code (nvcc -c ... -o x.o, or the built
pyfastattn/_C*.so); KERNEL_REGEX picks one mangled kernel name (cuobjdump -symbols).
Without --range it prints the kernel's instruction count, its opcode histogram and its loops
(backward branches: the largest span is usually the main tile loop). With --range (hex
addresses, e.g. the main loop's) it prints that range as basic blocks: each block's address
span, instruction count and most common opcodes, and every branch, barrier and reconvergence
point, so that the instructions of one path (say, an interior tile) can be summed by hand.
bench/attention_gpu_notes.md uses these counts (instructions per tensor-core MMA).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys

LINE = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


def run(tools: str | None, *args: str) -> str:
    exe = os.path.join(tools, args[0]) if tools else args[0]
    return subprocess.run([exe, *args[1:]], check=True, capture_output=True, text=True).stdout


def opcode(text: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0]


def instructions(sass: str) -> list[tuple[int, str, str]]:
    """(address, opcode, text) of every instruction."""
    out = []
    for line in sass.splitlines():
        m = LINE.match(line)
        if m:
            text = m.group(2).strip()
            out.append((int(m.group(1), 16), opcode(text), text))
    return out


def target(text: str) -> int | None:
    m = re.search(r"0x([0-9a-f]+)", text)
    return int(m.group(1), 16) if m else None


def summary(ins) -> None:
    hist = collections.Counter(op.split(".")[0] for _, op, _ in ins)
    print(f"{len(ins)} instructions; " + " ".join(f"{k}:{v}" for k, v in hist.most_common(24)))
    print("loops (backward branches), largest first:")
    loops = [(a, t, txt) for a, op, txt in ins if op.startswith("BRA") and (t := target(txt)) is not None and t < a]
    for a, t, txt in sorted(loops, key=lambda x: x[1] - x[0]):
        print(f"  {t:#07x} .. {a:#07x}  ({(a - t) // 16 + 1} instructions)  {txt}")


def blocks(ins, lo: int, hi: int) -> None:
    ins = [x for x in ins if lo <= x[0] <= hi]
    starts = {t for _, op, txt in ins if op.startswith(("BRA", "BSSY")) and (t := target(txt)) is not None}
    block: list[str] = []
    first = ins[0][0] if ins else lo

    def flush(last: int) -> None:
        if block:
            hist = collections.Counter(op.split(".")[0] for op in block)
            print(f"{first:#07x}-{last:#07x} n={len(block):4d}  " +
                  " ".join(f"{k}:{v}" for k, v in hist.most_common(8)))
        block.clear()

    for a, op, txt in ins:
        if a in starts and block:
            flush(a - 16)
            first = a
        block.append(op)
        if op.startswith(("BRA", "EXIT", "BSYNC", "BAR", "RET")):
            flush(a)
            print(f"    {a:#07x}  {txt}")
            first = a + 16
    flush(hi)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("obj")
    ap.add_argument("kernel", help="regex matching one mangled kernel name")
    ap.add_argument("--range", nargs=2, metavar=("LO", "HI"), help="hex addresses: list basic blocks")
    ap.add_argument("--tools", help="folder with cuobjdump (e.g. the nvidia-cuda-cuobjdump wheel's bin)")
    a = ap.parse_args()
    names = sorted(set(re.findall(r"_Z\S+", run(a.tools, "cuobjdump", "-symbols", a.obj))))
    hits = [n for n in names if re.search(a.kernel, n)]
    if len(hits) != 1:
        print(f"{len(hits)} kernels match {a.kernel!r}" + "".join(f"\n  {n}" for n in hits[:20]), file=sys.stderr)
        return 2
    ins = instructions(run(a.tools, "cuobjdump", "-sass", "-fun", hits[0], a.obj))
    print(hits[0])
    if a.range:
        blocks(ins, int(a.range[0], 16), int(a.range[1], 16))
    else:
        summary(ins)
    return 0


if __name__ == "__main__":
    sys.exit(main())
