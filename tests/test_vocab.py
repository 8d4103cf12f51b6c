"""Tokenisation and the vocabulary: Treebank words, frequency threshold, encode/decode, JSON save/load."""
from __future__ import annotations

import json
import pickle
import time
from collections import Counter
from pathlib import Path

import pytest
from nltk.tokenize import TreebankWordTokenizer

from captioner.data.tokenizers import _PUNCT, tokenize
from captioner.data.vocab import END, PAD, SPECIALS, START, UNK, Vocabulary

CAPTIONS = ["A dog runs.", "A dog sleeps on the sofa!", "a cat, a dog", "The cat sleeps", "A bird"]
# counts: a 5, dog 3, cat 2, sleeps 2, the 2, runs/on/sofa/bird 1


def test_tokenize_lower_cases_splits_like_treebank_and_drops_punctuation() -> None:
    assert tokenize("Don't stop, the DOG's ball!") == ["do", "n't", "stop", "the", "dog", "'s", "ball"]
    assert tokenize('A man -- "smiling"... (left)') == ["a", "man", "smiling", "left"]
    assert tokenize("It costs 3.5 dollars.") == ["it", "costs", "3.5", "dollars"]
    assert tokenize("  ") == [] and tokenize("?!") == []


def treebank(caption: str) -> list[str]:
    """The long way: NLTK's Treebank tokens of the lower-cased caption, punctuation dropped."""
    return [t for t in TreebankWordTokenizer().tokenize(caption.lower()) if t not in _PUNCT]


def test_plain_captions_take_a_shortcut_to_the_same_tokens() -> None:
    tricky = ["A dog.", "a dog . ", "two  dogs   run", "3 cats 2.", "it is 3.5 m", "a.b c", ".", "", "I cannot",
              "CANNOT see", "gonna go", "they wanna", "wanna go", "gotta gimme lemme", "more'n", "cannot.", "a dog..",
              "cat\tdog", "x-ray", "Don't"]
    assert [tokenize(c) for c in tricky] == [treebank(c) for c in tricky]


def test_build_keeps_frequent_words_most_frequent_first() -> None:
    v = Vocabulary.build(CAPTIONS, threshold=2)
    assert v.itos == [*SPECIALS, "a", "dog", "cat", "sleeps", "the"]  # ties alphabetical
    assert v.itos[:4] == ["<pad>", "<start>", "<end>", "<unk>"] and (PAD, START, END, UNK) == (0, 1, 2, 3)
    assert [v.stoi[w] for w in v.itos] == list(range(len(v)))
    assert len(Vocabulary.build(CAPTIONS, threshold=1)) == 4 + 9
    assert Vocabulary.build(CAPTIONS, threshold=3).itos[4:] == ["a", "dog"]
    assert Vocabulary.build(CAPTIONS, threshold=6).itos == list(SPECIALS)


def test_build_rejects_threshold_below_one() -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match="threshold must be >= 1"):
            Vocabulary.build(CAPTIONS, threshold=bad)


def test_encode_and_decode() -> None:
    v = Vocabulary.build(CAPTIONS, threshold=2)
    a, dog, cat = v.stoi["a"], v.stoi["dog"], v.stoi["cat"]
    assert v.encode("A dog chases a CAT.") == [START, a, dog, UNK, a, cat, END]
    assert v.encode(["a", "zebra"]) == [START, a, UNK, END]  # tokens are used as given
    assert v.encode("") == [START, END]
    assert v.decode([START, a, PAD, dog, END, cat, cat]) == "a dog"  # stops at <end>, no <pad>/<start>
    assert v.decode([a, UNK, PAD, PAD]) == "a <unk>"
    assert v.decode(v.encode("the cat sleeps")) == "the cat sleeps"


def test_save_load_round_trip_as_json(tmp_path: Path) -> None:
    v = Vocabulary.build(CAPTIONS, threshold=2)
    path = v.save(tmp_path / "sub" / "vocab.json")
    assert json.loads(path.read_text(encoding="utf-8")) == {"threshold": 2, "language": "en", "tokenizer": "treebank",
                                                            "itos": v.itos}
    loaded = Vocabulary.load(path)
    assert loaded.itos == v.itos and loaded.stoi == v.stoi and loaded.threshold == 2
    path.write_text(json.dumps({"threshold": 2, "itos": v.itos}))  # a file from before languages: English
    assert Vocabulary.load(path).tokenizer.describe() == "English (en), Treebank words"


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    pickled = tmp_path / "vocab.pkl"
    pickled.write_bytes(pickle.dumps(Vocabulary.build(CAPTIONS, threshold=2)))
    with pytest.raises(ValueError, match=r"vocab\.pkl is not valid JSON"):
        Vocabulary.load(pickled)
    listed = tmp_path / "list.json"
    listed.write_text('["<pad>", "<start>"]')
    with pytest.raises(ValueError, match=r"list\.json: not a captioner vocabulary"):
        Vocabulary.load(listed)
    shuffled = tmp_path / "shuffled.json"
    shuffled.write_text(json.dumps({"itos": ["<start>", "<pad>", "<end>", "<unk>", "a"]}))
    with pytest.raises(ValueError, match="must start with"):
        Vocabulary.load(shuffled)
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        Vocabulary.load(tmp_path / "missing.json")


def test_real_val2014_vocabulary(shared: Path) -> None:
    data = json.loads((shared / "data" / "coco-val2014-captions" / "captions_val2014_4refs.json").read_text())
    captions = [a["caption"] for a in data["annotations"]]
    assert len(captions) == 162_150
    start = time.perf_counter()
    v = Vocabulary.build(captions, threshold=5)
    seconds = time.perf_counter() - start
    print(f"vocabulary of {len(captions)} captions, threshold 5: {len(v)} words in {seconds:.1f} s")
    assert 5000 <= len(v) <= 12000 and v.itos[4] == "a"
    part = captions[::4]  # the tokens, threshold and order against NLTK's own count (tokenising is the cost)
    tokens = [treebank(c) for c in part]
    assert [tokenize(c) for c in part] == tokens
    counts = Counter(w for t in tokens for w in t)
    frequent = sorted((w for w, n in counts.items() if n >= 5), key=lambda w: (-counts[w], w))
    assert Vocabulary.build(part, threshold=5).itos[4:] == frequent  # no frequent word missing, most frequent first
    assert set(frequent) < set(v.itos)


@pytest.mark.parametrize("data, field", [({"threshold": "five"}, "'threshold' must be an integer"),
                                         ({"threshold": True}, "'threshold' must be an integer"),
                                         ({"itos": [*SPECIALS, "a", 7]}, "'itos' must be a list of words")])
def test_load_names_the_file_and_the_mistyped_field(tmp_path: Path, data, field) -> None:
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"threshold": 2, "itos": [*SPECIALS, "a"], **data}))
    with pytest.raises(ValueError, match=f"^{path}: {field}"):
        Vocabulary.load(path)
