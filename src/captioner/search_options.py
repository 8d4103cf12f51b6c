"""The search controls beyond beam width, max_len and the length penalty, all off by default; checked here once for
Python callers, the CLI and the API, and torch-free so that the ONNX runner shares them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SearchOptions:
    """``block_ngram`` N: no word that would complete an N-gram already in the caption (0: off); ``bad_endings``:
    no <end> after a function word (data/bad_endings); ``sample``: draw ``n`` captions per image at ``temperature``
    from the ``top_k`` likeliest words (0: all) within the nucleus ``top_p``, seeded by ``seed`` (None: unseeded);
    ``groups`` G > 1: diverse beam search, each group's words penalised by ``diversity`` per earlier group's use."""

    block_ngram: int = 0
    bad_endings: bool = False
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    groups: int = 1
    diversity: float = 0.0

    def check(self, beam: int) -> None:
        """A ValueError naming the option (flag and API name) unless these options and ``beam`` make one search."""
        if beam < 1:
            raise ValueError(f"--beam (beam) must be >= 1, got {beam}")
        for name, ok, rule in (("block_ngram", self.block_ngram >= 0, ">= 0 (0: off)"),
                               ("temperature", self.temperature > 0, "> 0"),
                               ("top_k", self.top_k >= 0, ">= 0 (0: every word)"),
                               ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
                               ("n", self.n >= 1, ">= 1"),
                               ("groups", self.groups >= 1, ">= 1"),
                               ("diversity", self.diversity >= 0, ">= 0")):
            if not ok:
                raise ValueError(f"{_flag(name)} must be {rule}, got {getattr(self, name)}")
        shaping = [f for f, off in (("temperature", 1.0), ("top_k", 0), ("top_p", 1.0), ("n", 1), ("seed", None))
                   if getattr(self, f) != off]
        if shaping and not self.sample:
            raise ValueError(f"{', '.join(map(_flag, shaping))} shape sampling: add --sample (sample=true)")
        if self.sample and (beam > 1 or self.groups > 1):
            raise ValueError("--sample (sample) draws captions instead of searching: leave --beam and --groups at 1")
        if self.groups > 1 and beam % self.groups:
            raise ValueError(f"--groups (groups) {self.groups} must divide --beam (beam) {beam}: each group holds "
                             "beam / groups beams")
        if self.diversity and self.groups == 1:
            raise ValueError("--diversity (diversity) penalises a group for the words of earlier groups: add "
                             "--groups 2 or more")


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')} ({name})"
