"""Scheduled sampling's probability per epoch (Bengio et al. 2015, as ruotianluo/self-critical.pytorch runs it):
``--scheduled-sampling P[:START:EVERY:MAX]``. After epoch START (0-based), the probability of feeding the model its
own sampled word instead of the reference's is P times the number of whole EVERY-epoch periods since START, at most
MAX: min(P * ((epoch - START) // EVERY), MAX) for epoch > START, else 0. Defaults START 0, EVERY 5, MAX 0.25
(ruotianluo's ``scheduled_sampling_increase_every`` / ``_max_prob``)."""
from __future__ import annotations

from typing import NamedTuple


class Schedule(NamedTuple):
    increase: float
    start: int = 0
    every: int = 5
    max_prob: float = 0.25

    def prob(self, epoch: int) -> float:
        """The probability of feeding the model's own word in ``epoch`` (0-based)."""
        if epoch <= self.start:
            return 0.0
        return min(self.increase * ((epoch - self.start) // self.every), self.max_prob)


def parse_schedule(spec: str) -> Schedule | None:
    """The schedule of a ``--scheduled-sampling`` value ("" or "0": none); a ValueError saying the format."""
    if spec.strip() in ("", "0"):
        return None
    parts = spec.split(":")
    try:
        if len(parts) > 4:
            raise ValueError
        kinds = (float, int, int, float)
        s = Schedule(*(kind(p) for kind, p in zip(kinds, parts, strict=False)))
    except ValueError:
        raise ValueError(f"--scheduled-sampling must be P[:START:EVERY:MAX] (e.g. 0.05:0:5:0.25), got {spec!r}") \
            from None
    if not (0 <= s.increase <= 1 and s.start >= 0 and s.every >= 1 and 0 <= s.max_prob <= 1):
        raise ValueError(f"--scheduled-sampling {spec!r}: need 0 <= P <= 1, START >= 0, EVERY >= 1, 0 <= MAX <= 1")
    return s
