"""Shared pytest fixtures: devices to test on and per-test seeded generators."""
from __future__ import annotations

import os
import zlib

import pytest
import torch
from hypothesis import HealthCheck, settings

import pyfastattn

# Property tests: a bounded, derandomized profile for CI; `HYPOTHESIS_PROFILE=long` on demand.
settings.register_profile("ci", max_examples=20, derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=400, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAVE_CUDA = torch.cuda.is_available() and pyfastattn.cuda_built()


def pytest_collection_modifyitems(config, items):
    if HAVE_CUDA:
        return
    why = ("no CUDA GPU visible" if pyfastattn.cuda_built() else "this build has no CUDA kernels")
    skip = pytest.mark.skip(reason=f"CUDA test: {why}")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def seed(request) -> int:
    """A fresh seed per test and run, printed when the test fails; PYFASTATTN_SEED=N reruns with N."""
    fixed = os.environ.get("PYFASTATTN_SEED")
    s = int(fixed) if fixed else zlib.crc32(request.node.nodeid.encode() + os.urandom(4))
    request.node.user_properties.append(("seed", s))
    torch.manual_seed(s)
    return s


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for k, v in item.user_properties:
            if k == "seed":
                rep.sections.append(("seed", f"reproduce with PYFASTATTN_SEED={v} pytest '{item.nodeid}'"))

