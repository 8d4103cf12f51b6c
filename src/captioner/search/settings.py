"""A search's settings as one value, ``Search``: what `caption`, `evaluate`, `serve`, the HTTP API and Python callers
ask of decode.py and the ONNX runner, checked once when it is made; torch-free."""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Search:
    """``beam`` width (1: greedy); ``max_len`` tokens at most (None: the model's); ``length_penalty`` alpha of beam
    search (GNMT; 0: raw log-probability). Rules, off by default: ``block_ngram`` N, no word that would complete an
    N-gram already in the caption (0: off); ``bad_endings``, no <end> after a function word (data/bad_endings).
    ``sample``: draw ``n`` captions per image at ``temperature`` from the ``top_k`` likeliest words (0: all) within
    the nucleus ``top_p``, seeded by ``seed`` (None: unseeded). ``groups`` G > 1: diverse beam search, each group's
    words penalised by ``diversity`` per earlier group's use."""

    beam: int = 1
    max_len: int | None = None
    length_penalty: float = 0.0
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

    def __post_init__(self) -> None:
        """A ValueError naming the flag (and the API's name) unless these settings make one search."""
        for name, ok, rule in (("beam", self.beam >= 1, ">= 1"),
                               ("max_len", self.max_len is None or self.max_len >= 1, ">= 1 tokens"),
                               ("block_ngram", self.block_ngram >= 0, ">= 0 (0: off)"),
                               ("temperature", self.temperature > 0, "> 0"),
                               ("top_k", self.top_k >= 0, ">= 0 (0: every word)"),
                               ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
                               ("n", self.n >= 1, ">= 1"),
                               ("groups", self.groups >= 1, ">= 1"),
                               ("diversity", self.diversity >= 0, ">= 0")):
            if not ok:
                raise ValueError(f"{flag(name)} must be {rule}, got {getattr(self, name)}")
        shaping = [f for f, off in (("temperature", 1.0), ("top_k", 0), ("top_p", 1.0), ("n", 1), ("seed", None))
                   if getattr(self, f) != off]
        if shaping and not self.sample:
            raise ValueError(f"{', '.join(map(flag, shaping))} shape sampling: add --sample (sample=true)")
        if self.sample and (self.beam > 1 or self.groups > 1):
            raise ValueError("--sample (sample) draws captions instead of searching: leave --beam and --groups at 1")
        if self.groups > 1 and self.beam % self.groups:
            raise ValueError(f"--groups (groups) {self.groups} must divide --beam (beam) {self.beam}: each group holds "
                             "beam / groups beams")
        if self.diversity and self.groups == 1:
            raise ValueError("--diversity (diversity) penalises a group for the words of earlier groups: add "
                             "--groups 2 or more")

    @property
    def kept(self) -> int:
        """Captions it returns per image (at most: diverse beam search returns a caption two groups found once)."""
        return self.n if self.sample else self.beam

    def resolved(self, model_max_len: int) -> Search:
        """This search with ``max_len`` set: its own, else the model's."""
        return self if self.max_len is not None else replace(self, max_len=model_max_len)


def flag(name: str) -> str:
    """How an error names a setting: its command-line flag, then its name in Python and the HTTP API."""
    return f"--{name.replace('_', '-')} ({name})"


DEFAULT = Search()  # what a Python call searches unless told: greedy, no rules, the model's max_len
