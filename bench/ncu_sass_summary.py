"""Summarise Nsight Compute's per-instruction (SASS) source page: where a kernel's instructions
and stall samples go, by opcode and by line.

  ncu --import rep.ncu-rep --page source --csv --print-source sass > src.csv
  python bench/ncu_sass_summary.py src.csv [--top 40]

Columns are found by name (any with 'Executed' or 'Sampl' in it), so the script follows the
layout of the ncu version that wrote the file; if it finds no header it prints the first lines.
"""
import argparse
import collections
import csv
import re


def number(s):
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def opcode(src):
    s = re.sub(r"^\s*@!?U?P\w+\s+", "", src.strip())
    return s.split(" ")[0].rstrip(";") if s else "?"


def blocks(rows):
    """(title, header, data rows) per kernel: a header is a row with a 'Source' column."""
    title, header, data = "", None, []
    for r in rows:
        if "Source" in r:
            if header:
                yield title, header, data
            header, data = r, []
        elif header and len(r) == len(header):
            data.append(r)
        elif r and (r[0] == "Kernel Name" or (len(r) <= 2 and any(c.strip() for c in r))):
            if header:
                yield title, header, data
                header, data = None, []
            title = " ".join(c for c in r[1:] if c.strip()) if r[0] == "Kernel Name" else " ".join(r)
    if header:
        yield title, header, data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()
    rows = list(csv.reader(open(a.csv, newline="")))
    found = False
    for title, hdr, data in blocks(rows):
        found = True
        src = hdr.index("Source")
        cols = [i for i, h in enumerate(hdr) if ("Executed" in h or "Sampl" in h)]
        print(f"== {title or 'kernel'}: {len(data)} SASS lines; columns: {[hdr[i] for i in cols]}")
        by_op = collections.defaultdict(lambda: [0.0] * len(cols))
        lines = []
        for r in data:
            vals = [number(r[i]) or 0.0 for i in cols]
            acc = by_op[opcode(r[src])]
            for j, v in enumerate(vals):
                acc[j] += v
            lines.append((vals, r[0], r[src].strip()))
        totals = [sum(v[j] for v in by_op.values()) for j in range(len(cols))]
        print("totals:", {hdr[i]: f"{t:.4g}" for i, t in zip(cols, totals)})
        stalls = [i for i, h in enumerate(hdr) if h.startswith("stall_") and "Not Issued" not in h]
        if stalls:
            sums = {hdr[i][6:]: sum(number(r[i]) or 0.0 for r in data) for i in stalls}
            total = sum(sums.values()) or 1.0
            print("stall samples by reason (all samples):",
                  ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(sums.items(), key=lambda kv: -kv[1]) if v))
        key = next((j for j, i in enumerate(cols) if "Instructions Executed" in hdr[i]), 0)
        print(f"-- opcodes by {hdr[cols[key]]}")
        for op, v in sorted(by_op.items(), key=lambda kv: -kv[1][key])[: a.top]:
            print(f"{op:28s} " + " ".join(f"{x:12.4g}" for x in v))
        stall = next((j for j, i in enumerate(cols) if "All Samples" in hdr[i]),
                     next((j for j, i in enumerate(cols) if "Sampl" in hdr[i]), key))
        print(f"-- lines by {hdr[cols[stall]]}")
        for vals, addr, s in sorted(lines, key=lambda t: -t[0][stall])[: a.top]:
            print(f"{addr:>8s} {s[:60]:60s} " + " ".join(f"{x:10.4g}" for x in vals))
    if not found:
        print("no header with a 'Source' column; first lines:")
        for r in rows[:20]:
            print(r)


if __name__ == "__main__":
    main()
