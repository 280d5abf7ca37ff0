"""Timing and reporting shared by every benchmark module."""
from __future__ import annotations

import json
import statistics
import time
from typing import Callable, Iterable

import torch


def keep_freed_memory() -> bool:
    """On glibc, stop malloc from handing freed memory back to the OS (trim) and from serving
    large blocks with fresh mmaps, for the rest of the process. Otherwise a call's large
    temporaries (oneDNN's workspaces, our packed tiles, the outputs) are page-faulted in again
    on some calls and not others, depending on what ran before: the same F.conv2d then swings
    2x between runs on the CPU. Returns whether it applied."""
    import ctypes
    import ctypes.util
    import platform
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_TRIM_THRESHOLD, 1 << 30)) and bool(mallopt(M_MMAP_THRESHOLD, 32 << 20))


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_fns(fns: dict[str, Callable[[], object]], device, warmup: int = 3, reps: int = 10) -> dict[str, float]:
    """Median time of one call of each fns[name]() in seconds, sampled in interleaved rounds.

    Every round takes one sample of each function, starting one further along the list each
    round, so a slow stretch of a shared host (a busy neighbour on the VM) lands on all of them
    alike rather than on whichever ran during it: the ratios between them stay fair.
    CUDA: a sample is a back-to-back run of n calls between two events, n chosen per function
    so a sample lasts about 1 ms, as calls follow each other in a model: the host's per-call
    work overlaps the GPU's unless it takes longer than the kernels (then the sample shows the
    host's time). CPU: perf_counter around single calls.
    """
    dev = torch.device(device)
    names = list(fns)
    calls = {}
    for name in names:
        fn = fns[name]
        for _ in range(warmup):
            fn()
        synchronize(dev)
        calls[name] = 1
        if dev.type == "cuda":
            t0 = time.perf_counter()
            fn()
            synchronize(dev)
            calls[name] = max(1, min(100, int(1e-3 / max(time.perf_counter() - t0, 1e-6))))
    samples = {name: [] for name in names}
    for r in range(reps):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            samples[name].append(_sample(fns[name], dev, calls[name]))
    return {name: statistics.median(samples[name]) for name in names}


def time_fn(fn: Callable[[], object], device, warmup: int = 3, reps: int = 10) -> float:
    """Median time of one fn() call in seconds (time_fns with one function)."""
    return time_fns({"fn": fn}, device, warmup=warmup, reps=reps)["fn"]


def _sample(fn: Callable[[], object], dev: torch.device, n: int) -> float:
    """Seconds per call of n back-to-back calls (CUDA: between events; CPU: n = 1)."""
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / n
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def device_name(device) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def format_table(rows: Iterable[dict], columns: list[str]) -> str:
    rows = list(rows)
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def write_json(path: str, payload: dict) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)
