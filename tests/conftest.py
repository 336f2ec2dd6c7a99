"""Shared pytest setup: CPU by default, ``@pytest.mark.cuda`` tests skip without a CUDA device."""

from __future__ import annotations

import os

import pytest


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
