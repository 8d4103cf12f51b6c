"""Pretrained word vectors (GloVe, fastText .vec, word2vec text format; UTF-8, any language, optionally gzipped)
to initialise a decoder's word embedding: ``--word-vectors FILE`` (``--freeze-word-vectors`` keeps them fixed)."""
from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from captioner.data.vocab import SPECIALS, Vocabulary


@dataclass
class WordVectors:
    """The vectors of the words asked for, found in a file of ``lines`` vectors of ``dim`` numbers."""

    dim: int
    vectors: dict[str, np.ndarray]
    lines: int


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 text file, gzipped when its name ends in .gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}, line {number}: not UTF-8 text ({e.reason} at byte {e.start}); word "
                                 f"vectors must be a UTF-8 text file (GloVe, fastText .vec, word2vec text format)")\
                    from None


def read_word_vectors(path: str | Path, words: set[str]) -> WordVectors:
    """The vectors of ``words`` in ``path``: one word and its numbers a line, separated by spaces, after an optional
    word2vec / fastText header line "COUNT DIM". A word may hold spaces (GloVe 840B has some): the last DIM fields are
    the numbers. Only the lines of ``words`` are parsed to numbers, so a large file is read quickly; every line's
    field count is checked. A word not in ``words`` whose lowercase is (a cased fastText file, a lowercased
    vocabulary) stands in for it when the word itself is absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"word vectors file not found: {path} (give a GloVe / fastText / word2vec text file)")
    dim, count, vectors, lowered, header = 0, 0, {}, {}, None

    def bad(number: int, text: str, why: str) -> ValueError:
        shown = text if len(text) <= 60 else text[:57] + "..."
        return ValueError(f"{path}, line {number}: {why} ({shown!r}); each line must be a word then its {dim or 'N'} "
                          f"numbers separated by spaces (GloVe, fastText .vec or word2vec text format)")

    for number, text in _lines(path):
        fields = text.rstrip().split(" ")
        if number == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
            header, dim = int(fields[0]), int(fields[1])
            continue
        if not text.strip():
            continue
        if not dim:
            dim = len(fields) - 1
            if dim < 1:
                raise bad(number, text, "a word without numbers")
        if len(fields) < dim + 1:
            raise bad(number, text, f"only {len(fields) - 1} of the file's {dim} numbers")
        if len(fields) > dim + 1 and _number(fields[-dim - 1]):
            raise bad(number, text, f"more than the file's {dim} numbers")
        count += 1
        word = " ".join(fields[:-dim])
        key = word if word in words else word.lower() if word.lower() in words and word.lower() not in lowered \
            else None
        if key is None:
            continue
        try:
            vector = np.array(fields[-dim:], dtype=np.float32)
        except ValueError:
            raise bad(number, text, "a field that is not a number") from None
        if not np.isfinite(vector).all():
            raise bad(number, text, "a number that is not finite")
        if key == word:
            vectors[word] = vector
        else:
            lowered[key] = vector
    if not count:
        raise ValueError(f"{path}: no word vectors in it (each line: a word then its numbers, separated by spaces)")
    if header is not None and header != count:
        raise ValueError(f"{path}: its header says {header} vectors but it holds {count} (a truncated file?); "
                         f"download or write it again")
    return WordVectors(dim, lowered | vectors, count)


def _number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def apply_word_vectors(embedding: nn.Embedding, path: str | Path, vocab: Vocabulary, freeze: bool = False) -> str:
    """Set the embedding rows of the vocabulary's words found in ``path``; the others (and <start>, <end>, <unk>)
    keep their random initialisation. ``freeze`` stops the embedding's training. Returns the line to log."""
    words = set(vocab.itos[len(SPECIALS):])
    found = read_word_vectors(path, words)
    if found.dim != embedding.embedding_dim:
        raise ValueError(f"{path} has {found.dim}-dimensional vectors but the word embedding has "
                         f"{embedding.embedding_dim}: pass --embed-size {found.dim}")
    rows = [i for i, w in enumerate(vocab.itos) if w in found.vectors]
    with torch.no_grad():
        if rows:
            vectors = np.stack([found.vectors[vocab.itos[i]] for i in rows])
            embedding.weight[rows] = torch.from_numpy(vectors).to(embedding.weight)
    embedding.weight.requires_grad_(not freeze)
    missing = [w for w in vocab.itos[len(SPECIALS):] if w not in found.vectors]
    example = f", e.g. {', '.join(missing[:5])}" if missing else ""
    return (f"word vectors {path} ({found.lines} vectors of {found.dim}): {len(rows)} of {len(words)} vocabulary "
            f"words found, {len(missing)} not found{example} (random); embedding "
            f"{'frozen' if freeze else 'fine-tuned'}")
