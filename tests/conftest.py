"""Shared test set-up: one torch thread (2-core CI machines contend badly), fixture paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the data/eval tests do not need torch
    pass

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures"


@pytest.fixture
def nsd_fixtures() -> Path:
    path = FIXTURES / "nsd"
    if not (path / "nsd_expdesign.mat").is_file():
        pytest.skip("../shared/fixtures/nsd is not present beside the checkout")
    return path


@pytest.fixture
def weights_fixtures() -> Path:
    path = FIXTURES / "weights"
    if not path.is_dir():
        pytest.skip("../shared/fixtures/weights is not present beside the checkout")
    return path
