"""Numeric precision (``--precision auto|fp32|bf16``): bfloat16 autocast where the processor multiplies bfloat16
natively (a GPU; a CPU with AMX or AVX-512 BF16, through oneDNN), float32 elsewhere, where bfloat16 is emulated and
slower. Matrix products and convolutions run in bfloat16; losses, optimiser state and caches keep their types."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import cache
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of the units that multiply bfloat16


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere, which keeps float32)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def choose(requested: str, device: str, flags: frozenset[str] | set[str] = frozenset(),
           warn: Callable[[str], None] = lambda m: warnings.warn(m, stacklevel=3)) -> str:
    """"bf16" or "fp32" for ``requested`` on ``device`` ("cpu" or "cuda") with these CPU ``flags``: auto takes bf16
    where it is native; bf16 asked for where it is emulated is kept, with a warning that it will be slow."""
    if requested not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    native = device == "cuda" or (device == "cpu" and any(f in flags for f in BF16_FLAGS))
    if requested == "auto":
        return "bf16" if native else "fp32"
    if requested == "bf16" and not native:
        warn(f"--precision bf16 on a {device} without bfloat16 units ({' or '.join(BF16_FLAGS)}): it runs, "
             "emulated and slower than fp32; --precision auto picks fp32 here")
    return requested


def resolve(requested: str, device: str | torch.device = "cpu") -> str:
    """``choose`` for this machine's CPU flags."""
    device = torch.device(device).type
    return choose(requested, device, cpu_flags() if device == "cpu" else frozenset())


def summary(precision: str, device: str | torch.device = "cpu") -> str:
    """One log line saying which precision runs, and why."""
    device = torch.device(device).type
    if precision == "fp32":
        return f"precision: float32 on the {device}"
    units = "GPU" if device == "cuda" else (" + ".join(f for f in BF16_FLAGS if f in cpu_flags()) or "emulated")
    return f"precision: bfloat16 autocast on the {device} ({units}); losses, optimiser and caches stay float32/16"


def autocast(precision: str, device: str | torch.device = "cpu") -> AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``precision`` is "bf16", else nothing."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
