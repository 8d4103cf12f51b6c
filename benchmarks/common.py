"""Shared helpers of the benchmark sections: table rows, device choice and timing."""
from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Hashable
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


def optimizer_of(module) -> torch.optim.Optimizer:
    """The optimizer CaptionModule trains with (its ``configure_optimizers``, without the schedule)."""
    configured = module.configure_optimizers()
    return configured["optimizer"] if isinstance(configured, dict) else configured


def train_step(module, optimizer: torch.optim.Optimizer, batch: tuple, bf16: bool = False) -> None:
    """CaptionModule's cross-entropy step on ``batch``: loss (bf16 autocast on CUDA if asked), backward, gradient
    clipping, Adam."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        loss = module._loss(batch)[1]
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], module.cfg.clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


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


def timed_together(fns: dict[Hashable, Callable[[], object]], dev: torch.device | str = "cpu", repeat: int = 3,
                   warmup: int = 1) -> dict[Hashable, float]:
    """Median wall seconds of each ``fn()``, timed in interleaved rounds so that a change in machine load (other
    processes) falls on all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[Hashable, list[float]] = {key: [] for key in fns}
    for _ in range(repeat):
        for key, fn in fns.items():
            sync(dev)
            start = time.perf_counter()
            fn()
            sync(dev)
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


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
