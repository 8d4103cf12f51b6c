"""Caption-set diagnostics beside the metrics: how varied, how long and how well-formed a model's captions are."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from captioner.data.endings import bad_ending_words
from captioner.data.tokenizers import ENGLISH, Tokenizer

DIAGNOSTICS = ("distinct", "vocab_used", "mean_len", "ref_len", "bad_endings", "repeated_3grams")


def repeats_ngram(words: list[str], n: int = 3) -> bool:
    """Whether some word n-gram occurs twice in the caption."""
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) < len(grams)


def diagnose(captions: Iterable[str], references: Iterable[Iterable[str]] | None = None,
             tokenizer: Tokenizer = ENGLISH) -> dict[str, float]:
    """distinct captions (% of images), distinct words used, mean length in words (and the references' mean),
    captions ending in a function word (data/bad_endings, %), captions repeating a word 3-gram (%); words as the
    language's ``tokenizer`` splits them."""
    function_words = frozenset(bad_ending_words(tokenizer.language))
    tokens = [tokenizer.split(c) for c in captions]
    if not tokens:
        raise ValueError("no captions to diagnose")
    out = {"distinct": 100 * len({tuple(t) for t in tokens}) / len(tokens),
           "vocab_used": float(len({w for t in tokens for w in t})),
           "mean_len": float(np.mean([len(t) for t in tokens])),
           "bad_endings": 100 * float(np.mean([bool(t) and t[-1] in function_words for t in tokens])),
           "repeated_3grams": 100 * float(np.mean([repeats_ngram(t) for t in tokens]))}
    if references is not None:
        out["ref_len"] = float(np.mean([len(tokenizer.split(r)) for refs in references for r in refs]))
    return out


def format_diagnostics(columns: dict[str, dict[str, float]]) -> str:
    """Markdown table, one row per named caption set."""
    head = ("| captions | distinct % | words used | mean length (refs) | bad endings % | repeated 3-grams % |\n"
            "|---|---:|---:|---:|---:|---:|")
    rows = [f"| {name} | {d['distinct']:.1f} | {d['vocab_used']:.0f} | {d['mean_len']:.1f} "
            f"({d.get('ref_len', float('nan')):.1f}) | {d['bad_endings']:.1f} | {d['repeated_3grams']:.1f} |"
            for name, d in columns.items()]
    return "\n".join([head, *rows])
