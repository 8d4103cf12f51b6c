"""Progress of long loops: a tqdm bar on a terminal; redirected to a file (a scheduler's log, nohup), one plain line
every ``every_s`` seconds instead of a silent wait or thousands of carriage-return updates."""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm

EVERY_S = 30.0  # seconds between two progress lines; $CAPTIONER_PROGRESS_EVERY overrides it


def every_s() -> float:
    """Seconds between progress lines: $CAPTIONER_PROGRESS_EVERY, else ``EVERY_S``."""
    try:
        return float(os.environ.get("CAPTIONER_PROGRESS_EVERY", EVERY_S))
    except ValueError:
        return EVERY_S


def eta(seconds: float) -> str:
    """``seconds`` as 1h02m, 3m05s or 12s."""
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class ProgressLines:
    """``tqdm``'s ``update``/``close`` as a line every ``every`` seconds: done, share, rate and time left."""

    def __init__(self, total: int, desc: str, unit: str = "it", every: float | None = None,
                 write: Callable[[str], Any] | None = None) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.every = every_s() if every is None else every
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every and self.n < self.total:
            self.last = now
            self.write(self.line(now))

    def line(self, now: float) -> str:
        spent = now - self.start
        rate = self.n / spent if spent > 0 else 0.0
        left = f", ~{eta((self.total - self.n) / rate)} left" if rate > 0 else ""
        return (f"{self.desc}: {self.n:,}/{self.total:,} {self.unit} ({100 * self.n / max(1, self.total):.0f}%) in "
                f"{eta(spent)}, {rate:.3g} {self.unit}/s{left}")

    def close(self) -> None:
        pass


def bar(total: int, desc: str, unit: str = "it", enabled: bool = True,
        stream: TextIO | None = None) -> tqdm | ProgressLines:
    """A tqdm bar when ``stream`` (stderr) is a terminal, else ``ProgressLines``; disabled, a bar that shows nothing."""
    stream = stream or sys.stderr
    if enabled and not stream.isatty():
        return ProgressLines(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=stream)
