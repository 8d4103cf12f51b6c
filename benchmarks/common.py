"""Shared helpers of the benchmark sections: table rows, device choice and timing."""
from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def row(section: str, figure: str, value: float | None, unit: str, note: str = "") -> dict:
    """One line of the results table; ``value`` None marks a figure that was not measured (``note`` says why)."""
    return {"section": section, "figure": figure, "value": value, "unit": unit, "note": note}


def device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(dev: torch.device | str) -> None:
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], dev: torch.device | str = "cpu", repeat: int = 3, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``repeat`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync(dev)
        start = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def say(msg: str) -> None:
    """Progress on stderr, so stdout holds only the table."""
    print(msg, file=sys.stderr, flush=True)


def shared_file(relative: str) -> tuple[Path | None, str]:
    """``$CAPTIONER_SHARED/relative`` when it exists, else (None, why it was skipped)."""
    root = os.environ.get("CAPTIONER_SHARED")
    path = Path(root, relative) if root else None
    if path is None or not path.is_file():
        return None, "skipped: " + ("CAPTIONER_SHARED is unset" if not root else f"{path} not found")
    return path, ""
