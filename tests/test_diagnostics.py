"""Caption-set diagnostics: distinct share, vocabulary, lengths, bad endings, repeated 3-grams."""
from __future__ import annotations

import pytest

from captioner.evaluation.diagnostics import diagnose, format_diagnostics, repeats_ngram


def test_diagnose_counts_each_property() -> None:
    captions = ["a man in a red shirt .", "a man in a red shirt", "a dog running on the",
                "a man in a black shirt and a black shirt"]
    d = diagnose(captions, [["a man .", "two men stand"]] * 4)
    assert d["distinct"] == 75.0  # punctuation and case do not make a caption distinct
    assert d["bad_endings"] == 25.0 and d["repeated_3grams"] == 25.0
    assert d["mean_len"] == pytest.approx((6 + 6 + 5 + 10) / 4) and d["ref_len"] == 2.5
    assert d["vocab_used"] == len(set("a man in red shirt dog running on the black and".split()))
    assert "| m | 75.0 |" in format_diagnostics({"m": d})


@pytest.mark.parametrize("words, n, expected", [("a b c a b c", 3, True), ("a b c a b d", 3, False),
                                                 ("a b a b", 2, True), ("a a", 3, False)])
def test_repeats_ngram(words: str, n: int, expected: bool) -> None:
    assert repeats_ngram(words.split(), n) is expected
