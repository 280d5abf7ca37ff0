"""Microbenchmark harness (part of the wheel so `pyfastattn bench` works after pip install).

Each family module (`pyfastattn.benchmark.<family>`) exposes
`run(device: str, dtype: torch.dtype, quick: bool) -> list[dict]`; FAMILIES maps the CLI
names to those modules, imported lazily.
"""
FAMILIES = {
    "norm": "pyfastattn.benchmark.norm",
    "attention": "pyfastattn.benchmark.attention",
    "conv": "pyfastattn.benchmark.conv",
}
