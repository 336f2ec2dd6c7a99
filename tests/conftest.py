"""Shared pytest setup: CPU by default, ``@pytest.mark.cuda`` tests skip without a CUDA device."""

from __future__ import annotations

import os
import sys

import pytest

# Triton's interpreter (the CPU tests of pgseg_core.kernels, tests/test_kernels.py) must be chosen before
# triton is first imported: its own reductions are jit functions decorated at import. On a machine without
# CUDA nothing else runs Triton, so the variable changes nothing else.
if "triton" not in sys.modules and "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device() -> str:
    """Device for tests: ``PGSEG_TEST_DEVICE`` (default ``cpu``)."""
    return os.environ.get("PGSEG_TEST_DEVICE", "cpu")


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tests with one intra-op thread (tiny models run far faster without contention)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A saved pgseg-tiny checkpoint with seed-0 random weights, shared by a test module."""
    import torch

    from pgseg_core.config import load_config
    from pgseg_core.checkpoint import save_checkpoint
    from pgseg_core.models.factory import create_model

    torch.manual_seed(0)
    cfg = load_config("pgseg-tiny")
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    save_checkpoint(path, create_model(cfg.model), cfg, step=0)
    return path
