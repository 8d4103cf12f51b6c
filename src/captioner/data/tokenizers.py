"""Caption tokenizers per language: how a caption becomes words and how words become display text again.

English: NLTK Treebank, lower-case (the tokenizer the project always had). Chinese: jieba words (default) or single
characters, joined without spaces. German and other space-separated languages: Unicode words, lower-case, umlauts
and ß kept. A vocabulary stores its tokenizer's language and kind (vocab.json), so every stage decodes alike.
"""
from __future__ import annotations

import logging
import re
import string
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

from nltk.tokenize import TreebankWordTokenizer

from captioner.data.endings import bad_ending_words

_TREEBANK = TreebankWordTokenizer()
_PUNCT = frozenset(string.punctuation) | {"``", "''", "--", "..."}
# Letters, digits and spaces with at most a final full stop (92% of COCO's captions): the Treebank tokenizer splits
# these only at spaces and in words like "cannot" or "gonna" (its CONTRACTIONS2); done directly, ~5x faster.
_PLAIN = re.compile(r"[a-z0-9 ]*\.?\s*")
_WORD = re.compile(r"\w+(?:[-'’]\w+)*")  # Unicode letters/digits, hyphenated or with an apostrophe inside
_CHAR = re.compile(r"[a-z0-9]+|[^\W_]")  # a run of ASCII letters/digits, or any other single letter (a hanzi)
_ASCII_WORD = re.compile(r"[a-z0-9]")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

KINDS = {"en": ("treebank",), "zh": ("jieba", "char"), "de": ("unicode",), "fr": ("unicode",), "es": ("unicode",),
         "it": ("unicode",), "nl": ("unicode",)}  # per language its tokenizers, the default first
LANGUAGE_NAMES = {"en": "English", "zh": "Chinese", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
                  "nl": "Dutch"}


def tokenize(text: str) -> list[str]:
    """English: lower-case and split with NLTK's Treebank tokenizer; punctuation is dropped."""
    text = text.lower()
    if _PLAIN.fullmatch(text) and not any(r.search(f" {text} ") for r in _TREEBANK.CONTRACTIONS2):
        return text.replace(".", " ").split()
    return [t for t in _TREEBANK.tokenize(text) if t not in _PUNCT]


def unicode_words(text: str) -> list[str]:
    """Space-separated languages: lower-cased Unicode words (NFC; umlauts, accents and ß kept), punctuation dropped."""
    return _WORD.findall(unicodedata.normalize("NFC", text).lower())


@cache
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # it logs the dictionary's loading time
    return jieba.Tokenizer()


def jieba_words(text: str) -> list[str]:
    """Chinese: jieba's words (its shipped dictionary, HMM for unseen words), lower-cased, punctuation dropped."""
    return list(_jieba_words(text))


@lru_cache(maxsize=2**18)  # jieba takes ~0.2 ms a caption; the vocabulary, the ids and the scores split the same ones
def _jieba_words(text: str) -> tuple[str, ...]:
    text = unicodedata.normalize("NFKC", text).lower()  # full-width letters, digits and punctuation to ASCII
    return tuple(w for w in _jieba().lcut(text) if any(c.isalnum() for c in w))


def characters(text: str) -> list[str]:
    """Chinese by character: each hanzi a token, a run of ASCII letters or digits one token."""
    return _CHAR.findall(unicodedata.normalize("NFKC", text).lower())


SPLITTERS = {"treebank": tokenize, "unicode": unicode_words, "jieba": jieba_words, "char": characters}


@dataclass(frozen=True)
class Tokenizer:
    """A language's caption tokenizer: ``split`` text into words, ``join`` words into display text."""

    language: str = "en"
    kind: str = "treebank"

    def __post_init__(self) -> None:
        if self.language not in KINDS:
            raise ValueError(f"unknown language {self.language!r}: choose from {', '.join(KINDS)} "
                             f"({', '.join(f'{k} {v}' for k, v in LANGUAGE_NAMES.items())})")
        if self.kind not in KINDS[self.language]:
            raise ValueError(f"tokenizer {self.kind!r} is not one for {LANGUAGE_NAMES[self.language]} "
                             f"({self.language}): choose from {', '.join(KINDS[self.language])}")

    @property
    def spaced(self) -> bool:
        """Whether the language writes spaces between words (Chinese does not)."""
        return self.language != "zh"

    def split(self, text: str) -> list[str]:
        return SPLITTERS[self.kind](text)

    def join(self, words: Iterable[str]) -> str:
        """Words as display text: spaces between them, or for Chinese none (but between two Latin words)."""
        if self.spaced:
            return " ".join(words)
        out = ""
        for w in words:
            out += " " + w if out and _ASCII_WORD.match(out[-1]) and _ASCII_WORD.match(w[0]) else w
        return out

    def describe(self) -> str:
        """e.g. 'Chinese (zh), jieba words'."""
        unit = {"treebank": "Treebank words", "unicode": "Unicode words", "jieba": "jieba words",
                "char": "characters"}[self.kind]
        return f"{LANGUAGE_NAMES[self.language]} ({self.language}), {unit}"


ENGLISH = Tokenizer()


def get_tokenizer(language: str | None = "en", kind: str | None = None) -> Tokenizer:
    """The tokenizer of ``language`` (None: English), ``kind`` or the language's default."""
    language = language or "en"
    if language not in KINDS:
        Tokenizer(language)  # raises the error listing the choices
    return Tokenizer(language, kind or KINDS[language][0])


def guess_language(captions: Sequence[str]) -> tuple[str, str]:
    """(language, why) from some captions: Chinese when most hold hanzi, else the language whose function words
    (data/bad_endings) are most of the words; English when nothing stands out."""

    if not captions:
        return "en", "no captions to guess from"
    hanzi = sum(bool(_CJK.search(c)) for c in captions) / len(captions)
    if hanzi > 0.5:
        return "zh", f"{100 * hanzi:.0f}% of {len(captions)} captions hold Chinese characters"
    words = [w for c in captions for w in unicode_words(c)]
    shares = {lang: sum(w in lists for w in words) / max(1, len(words))
              for lang in KINDS if lang != "zh" and (lists := frozenset(bad_ending_words(lang)))}
    best = max(shares, key=shares.get)
    if shares[best] < 0.1 or shares[best] < 1.5 * max(v for k, v in shares.items() if k != best):
        return "en", f"no language's function words stand out in {len(captions)} captions"
    return best, (f"{100 * shares[best]:.0f}% of the words of {len(captions)} captions are "
                  f"{LANGUAGE_NAMES[best]} function words")


def choose_tokenizer(language: str | None, kind: str | None, captions: Sequence[str],
                     log: Callable[[str], None] = print) -> Tokenizer:
    """The tokenizer of ``language`` (``--lang``), or of the language guessed from ``captions`` (said in ``log``)."""
    if language is None:
        language, why = guess_language(captions)
        log(f"caption language: {LANGUAGE_NAMES[language]} ({language}), guessed: {why}; --lang sets it")
    return get_tokenizer(language, kind)
