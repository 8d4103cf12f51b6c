"""A JSON-saved vocabulary built from training captions, with its language's tokenizer (data/tokenizers.py)."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from captioner.data.endings import bad_ending_words
from captioner.data.tokenizers import ENGLISH, Tokenizer, get_tokenizer
from captioner.io import read_json, write_json

SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")
PAD, START, END, UNK = range(4)


@dataclass
class Vocabulary:
    """Words <-> indices; indices 0-3 are <pad> <start> <end> <unk>; ``tokenizer`` splits and joins its captions."""

    itos: list[str]
    threshold: int = 1
    tokenizer: Tokenizer = ENGLISH
    stoi: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if tuple(self.itos[:4]) != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}, got {self.itos[:4]}")
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    @classmethod
    def build(cls, captions: Iterable[str], threshold: int = 5, progress: bool = False,
              tokenizer: Tokenizer = ENGLISH) -> Vocabulary:
        """Keep words seen at least ``threshold`` times, most frequent first (ties alphabetical)."""
        if threshold < 1:
            raise ValueError(f"vocabulary threshold must be >= 1, got {threshold}")
        counts: Counter[str] = Counter()
        for caption in tqdm(captions, desc="tokenizing", unit=" captions", disable=not progress):
            counts.update(tokenizer.split(caption))
        words = sorted((w for w, n in counts.items() if n >= threshold and w not in SPECIALS),
                       key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + words, threshold, tokenizer)

    def encode(self, caption: str | Sequence[str]) -> list[int]:
        """<start> word ids <end>; unknown words map to <unk>."""
        tokens = self.tokenizer.split(caption) if isinstance(caption, str) else caption
        return [START, *(self.stoi.get(t, UNK) for t in tokens), END]

    def decode(self, ids: Iterable[int]) -> str:
        """The caption's text: its words up to the first <end> (no <pad>/<start>/<end>), joined as the language
        writes them."""
        return self.tokenizer.join(self.words(ids))

    def words(self, ids: Iterable[int]) -> list[str]:
        """Words up to the first <end>, without <pad>/<start>/<end>."""
        words = []
        for i in ids:
            i = int(i)
            if i == END:
                break
            if i not in (PAD, START):
                words.append(self.itos[i])
        return words

    def bad_ending_ids(self) -> list[int]:
        """Ids of the words that its language's captions should not end on (data/bad_endings/) that it holds."""
        return [self.stoi[w] for w in bad_ending_words(self.tokenizer.language) if w in self.stoi]

    def sha256(self) -> str:
        """A fingerprint of the words and their order (config.json records it: a model's ids mean these words)."""
        return hashlib.sha256(json.dumps(self.itos, ensure_ascii=False).encode("utf-8")).hexdigest()

    def save(self, path: str | Path) -> Path:
        return write_json(path, {"threshold": self.threshold, "language": self.tokenizer.language,
                                 "tokenizer": self.tokenizer.kind, "itos": self.itos})

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
        language, kind = data.get("language", "en"), data.get("tokenizer")  # files before languages: English
        try:
            tokenizer = get_tokenizer(language, kind)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None
        return cls(data["itos"], threshold, tokenizer)
