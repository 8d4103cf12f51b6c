"""Shared fixtures: the real data in $CAPTIONER_SHARED (skipped without it)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on the 2 cores: one thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # (and for the processes the tests start)
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """A tiny synthetic data set (24/8/8 images at 64 px), made once per test session."""
    from captioner.data.synth import generate

    out = tmp_path_factory.mktemp("tiny_synth")
    generate(out, n_train=24, n_val=8, n_test=8, size=64, progress=False)
    return out


@pytest.fixture(scope="session")
def shared() -> Path:
    """Path of ../shared as given by $CAPTIONER_SHARED; skips the test when unset or missing."""
    root = os.environ.get("CAPTIONER_SHARED")
    if not root or not Path(root, "data").is_dir():
        pytest.skip("CAPTIONER_SHARED is not set (or has no data/): real COCO files unavailable")
    return Path(root)
