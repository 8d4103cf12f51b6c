"""Caption tokenisation (NLTK Treebank, lower-case) and a JSON-saved vocabulary built from training captions."""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nltk.tokenize import TreebankWordTokenizer
from tqdm import tqdm

from captioner.io import read_json, write_json

SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")
PAD, START, END, UNK = range(4)
_TREEBANK = TreebankWordTokenizer()
_PUNCT = frozenset(string.punctuation) | {"``", "''", "--", "..."}
# Letters, digits and spaces with at most a final full stop (92% of COCO's captions): the Treebank tokenizer splits
# these only at spaces and in words like "cannot" or "gonna" (its CONTRACTIONS2); done directly, ~5x faster.
_PLAIN = re.compile(r"[a-z0-9 ]*\.?\s*")


def tokenize(text: str) -> list[str]:
    """Lower-case and split a caption into words with NLTK's Treebank tokenizer; punctuation is dropped."""
    text = text.lower()
    if _PLAIN.fullmatch(text) and not any(r.search(f" {text} ") for r in _TREEBANK.CONTRACTIONS2):
        return text.replace(".", " ").split()
    return [t for t in _TREEBANK.tokenize(text) if t not in _PUNCT]


@dataclass
class Vocabulary:
    """Words <-> indices; indices 0-3 are <pad> <start> <end> <unk>."""

    itos: list[str]
    threshold: int = 1
    stoi: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if tuple(self.itos[:4]) != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}, got {self.itos[:4]}")
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    @classmethod
    def build(cls, captions: Iterable[str], threshold: int = 5, progress: bool = False) -> Vocabulary:
        """Keep words seen at least ``threshold`` times, most frequent first (ties alphabetical)."""
        if threshold < 1:
            raise ValueError(f"vocabulary threshold must be >= 1, got {threshold}")
        counts: Counter[str] = Counter()
        for caption in tqdm(captions, desc="tokenizing", unit=" captions", disable=not progress):
            counts.update(tokenize(caption))
        words = sorted((w for w, n in counts.items() if n >= threshold and w not in SPECIALS),
                       key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + words, threshold)

    def encode(self, caption: str | Sequence[str]) -> list[int]:
        """<start> word ids <end>; unknown words map to <unk>."""
        tokens = tokenize(caption) if isinstance(caption, str) else caption
        return [START, *(self.stoi.get(t, UNK) for t in tokens), END]

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first <end>, without <pad>/<start>/<end>."""
        words = []
        for i in ids:
            i = int(i)
            if i == END:
                break
            if i not in (PAD, START):
                words.append(self.itos[i])
        return " ".join(words)

    def save(self, path: str | Path) -> Path:
        return write_json(path, {"threshold": self.threshold, "itos": self.itos})

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        data = read_json(path, "vocabulary file")
        if not isinstance(data, dict) or not isinstance(data.get("itos"), list):
            raise ValueError(f"{path}: not a captioner vocabulary (needs an 'itos' word list)")
        threshold = data.get("threshold", 1)
        if not isinstance(threshold, int) or isinstance(threshold, bool):
            raise ValueError(f"{path}: 'threshold' must be an integer, got {threshold!r}")
        if not all(isinstance(w, str) for w in data["itos"]):
            raise ValueError(f"{path}: 'itos' must be a list of words (strings); rebuild it with `captioner vocab`")
        return cls(data["itos"], threshold)
