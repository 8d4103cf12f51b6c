"""Search: one value for a search's settings, checked when it is made, each error naming the flag."""
from __future__ import annotations

import random
from dataclasses import fields

import pytest

from captioner.search import Search, flag

# per field, a generator of values it refuses on its own (the others at their defaults), and what the error says
INVALID = {
    "beam": (lambda r: r.randint(-100, 0), ">= 1"),
    "max_len": (lambda r: r.randint(-100, 0), ">= 1 tokens"),
    "block_ngram": (lambda r: r.randint(-100, -1), ">= 0"),
    "temperature": (lambda r: r.choice([0.0, -r.random() * 10, float("nan")]), "> 0"),
    "top_k": (lambda r: r.randint(-100, -1), ">= 0"),
    "top_p": (lambda r: r.choice([0.0, -r.random(), 1 + r.random() * 10, float("nan")]), "in (0, 1]"),
    "n": (lambda r: r.randint(-100, 0), ">= 1"),
    "groups": (lambda r: r.randint(-100, 0), ">= 1"),
    "diversity": (lambda r: r.choice([-r.random() * 10 - 1e-9, float("nan")]), ">= 0"),
}


@pytest.mark.parametrize("name", INVALID)
def test_search_refuses_each_invalid_field_naming_its_flag(name: str) -> None:
    rng, (draw, rule) = random.Random(name), INVALID[name]
    for _ in range(50):  # with --sample the sampling fields are judged by their own rule alone
        value = draw(rng)
        with pytest.raises(ValueError) as e:
            Search(**{name: value, "sample": name in ("temperature", "top_k", "top_p", "n")})
        message = str(e.value)
        assert message.startswith(f"{flag(name)} must be {rule}") and message.endswith(f", got {value}"), message


def test_every_numeric_field_has_a_rule() -> None:
    assert set(INVALID) == {f.name for f in fields(Search)} - {"length_penalty", "bad_endings", "sample", "seed"}


@pytest.mark.parametrize(("kw", "words"), [
    (dict(temperature=0.5), "--temperature (temperature) shape sampling: add --sample (sample=true)"),
    (dict(top_k=5, seed=1), "--top-k (top_k), --seed (seed) shape sampling: add --sample"),
    (dict(sample=True, beam=3), "--sample (sample) draws captions instead of searching: leave --beam"),
    (dict(sample=True, groups=2, beam=2), "leave --beam and --groups at 1"),
    (dict(beam=3, groups=2), "--groups (groups) 2 must divide --beam (beam) 3"),
    (dict(beam=3, diversity=0.5), "--diversity (diversity) penalises a group for the words of earlier groups: add "
                                  "--groups 2 or more")])
def test_search_refuses_settings_that_do_not_make_one_search(kw: dict, words: str) -> None:
    with pytest.raises(ValueError) as e:
        Search(**kw)
    assert words in str(e.value)


def test_a_valid_search_is_one_hashable_value() -> None:
    a = Search(beam=4, groups=2, diversity=1.0, block_ngram=3, bad_endings=True)
    assert a == Search(beam=4, groups=2, diversity=1.0, block_ngram=3, bad_endings=True) and len({a, a}) == 1
    assert a.kept == 4 and Search(sample=True, n=3).kept == 3
    assert Search().resolved(16).max_len == 16 and Search(max_len=5).resolved(16).max_len == 5
