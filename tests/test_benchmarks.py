"""Smoke test of `python -m benchmarks`: the quick vocab and latency sections print one table (a few seconds)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmarks_print_one_table() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "vocab", "--only", "latency"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert "CPU cores" in lines[0] and "torch threads" in lines[0]
    assert lines[2:4] == ["| section | figure | value | unit | notes |", "|---|---|---:|---|---|"]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[4:]]
    assert {c[0] for c in cells} == {"vocab", "latency"} and all(len(c) == 5 for c in cells)
    latency = [c for c in cells if c[0] == "latency"]
    assert len(latency) == 6 and all(float(c[2].replace(",", "")) > 0 and c[3] == "ms/image" for c in latency)
