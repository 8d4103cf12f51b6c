"""CIDEr-D on word ids with training-set document frequencies: the reward of self-critical sequence training.

The maths is pycocoevalcap's ``CiderScorer`` (n-grams of 1-4 words, candidate tf-idf clipped by the reference's,
Gaussian length penalty with sigma 6, x10) on id sequences that end with <end> where one was chosen, as in
ruotianluo's SCST CIDEr-D, so a caption cut short (at max_len) loses the n-grams of an ending. All of it runs in
numpy, no java and no strings: an n-gram is one uint64 key holding word id + 1 in each 16 bits.
"""
from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from captioner.data.vocab import END, PAD, START, Vocabulary
from captioner.io import atomic_write

N = 4  # n-grams of 1..N words
SIGMA = 6.0  # standard deviation of the length penalty, in words
_BITS = np.uint64(16)  # bits per word in an n-gram key; 0 marks "no word"
MAX_ID = 2**16 - 2

Ids = Sequence[int]
Captions = Sequence[Ids] | np.ndarray | torch.Tensor  # id lists, or a 2-D array/tensor padded after <end>


def reference_ids(vocab: Vocabulary, captions: Sequence[str]) -> list[list[int]]:
    """Captions as word ids without <start>/<end>, the form ``CiderD`` takes (it appends <end> itself)."""
    return [vocab.encode(caption)[1:-1] for caption in captions]


def padded(captions: Sequence[Ids], max_len: int) -> np.ndarray:
    """Decoded captions (word ids, no <end>) as rows of ``max_len``: <end> after each shorter one, then <pad>; one
    of ``max_len`` words was cut there and gets no <end>."""
    rows = np.full((len(captions), max_len + 1), PAD, np.int64)
    for row, ids in enumerate(captions):
        rows[row, :len(ids) + 1] = [*ids, END]
    return rows[:, :max_len]


def reference_key(references: Sequence[Sequence[Ids]], words: Sequence[str]) -> str:
    """A hash of the references' word ids and of the vocabulary spelling them: what a document-frequency file
    counted, so a file left by another run is recognised."""
    lengths = [len(ref) for refs in references for ref in refs]
    h = hashlib.sha256("\n".join(words).encode())
    for part in (list(map(len, references)), lengths, list(chain.from_iterable(chain.from_iterable(references)))):
        h.update(np.asarray(part, np.int64).tobytes() + b"|")
    return h.hexdigest()[:20]


class CiderD:
    """CIDEr-D of word-id captions with fixed document frequencies, normally those of the training references."""

    def __init__(self, ngrams: np.ndarray, document_frequency: np.ndarray, ref_len: float, key: str = "") -> None:
        """``ngrams``: sorted uint64 n-gram keys; ``document_frequency``: in how many images each occurs;
        ``ref_len``: log of the number of images; ``key``: what they were counted from (``reference_key``)."""
        self.ngrams = np.asarray(ngrams, np.uint64)
        self.document_frequency = np.asarray(document_frequency, np.int64)
        self.ref_len, self.key = float(ref_len), key
        if not len(self.ngrams) or self.ngrams.shape != self.document_frequency.shape \
                or np.any(self.ngrams[1:] <= self.ngrams[:-1]):
            raise ValueError("ngrams must be non-empty strictly increasing keys, one per document frequency")

    @classmethod
    def from_references(cls, references: Sequence[Sequence[Ids]], chunk: int = 10_000, key: str = "") -> CiderD:
        """Document frequencies over images of the n-grams of their references (word ids, <end> appended).

        ``references[i]`` lists the id sequences of image i; ref_len is log(number of images).
        """
        if not references:
            raise ValueError("no references to count n-grams in")
        keys, df = np.zeros(0, np.uint64), np.zeros(0, np.int64)
        for start in range(0, len(references), chunk):  # bounded memory on the full COCO training set
            part = references[start:start + chunk]
            image = np.repeat(np.arange(len(part)), [len(refs) for refs in part])
            rows, part_keys = _ngrams(_tokens([ref for refs in part for ref in refs]))
            uniq, ids = np.unique(part_keys, return_inverse=True)
            _, ids, _ = _count(image[rows], ids, len(uniq))
            keys, at = np.unique(np.concatenate([keys, uniq[ids]]), return_inverse=True)
            df = np.bincount(at, np.concatenate([df, np.ones(len(ids), np.int64)])).astype(np.int64)
        return cls(keys, df, np.log(len(references)), key)

    def save(self, path: str | Path) -> Path:
        """Write the n-grams, document frequencies, ref_len and key to a numpy .npz file, atomically."""
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, ngrams=self.ngrams, document_frequency=self.document_frequency,
                                    ref_len=np.float64(self.ref_len), key=np.str_(self.key))
        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> CiderD:
        """Read a file written by ``save``."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"CIDEr-D document frequencies not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                key = str(data["key"]) if "key" in data else ""  # files before keys: never matches one
                return cls(data["ngrams"], data["document_frequency"], float(data["ref_len"]), key)
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path} is not a CIDEr-D document-frequency file: {e}") from e

    def scores(self, candidates: Captions, references: Sequence[Sequence[Ids]],
               image: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """CIDEr-D (x10, like pycocoevalcap) of each candidate against ``references[image[i]]`` (or ``[i]``).

        Captions are word ids without <start>: lists of whole captions, or rows read up to the first <end> (a row
        without one, before <pad> or its width, was cut short and scores so); for k samples of each of B images
        give the B reference lists once and ``image = np.repeat(np.arange(B), k)``.
        """
        image = np.arange(len(references)) if image is None else np.asarray(image, np.int64).reshape(-1)
        n_refs = np.fromiter(map(len, references), np.int64, len(references))
        if len(image) != len(candidates):
            raise ValueError(f"{len(candidates)} candidates but {len(image)} image indices")
        if np.any((image < 0) | (image >= len(references))) or np.any(n_refs[image] == 0):
            raise ValueError("every candidate needs an image index into references, with at least one reference")
        if len(image) == 0:
            return np.zeros(0)
        hyp, ref = self._vectors(_tokens(candidates), _tokens([r for refs in references for r in refs]))
        # each reference's image and its slot among that image's references: per-image tables, padded with 0
        ref_image = np.repeat(np.arange(len(references)), n_refs)
        slot = np.arange(len(ref_image)) - np.repeat(np.cumsum(n_refs) - n_refs, n_refs)
        width = int(n_refs.max())
        norms, lengths = np.zeros((len(references), width, N)), np.zeros((len(references), width))
        norms[ref_image, slot], lengths[ref_image, slot] = ref.norm, ref.length
        dot = _clipped_dot(hyp, ref, image, ref_image[ref.rows], slot[ref.rows], width)
        norm = hyp.norm[:, :, None] * norms[image].transpose(0, 2, 1)
        cosine = np.divide(dot, norm, out=dot, where=norm != 0)
        delta = hyp.length[:, None] - lengths[image]
        cosine *= np.exp(-(delta**2) / (2 * SIGMA**2))[:, None, :]
        return 10.0 * cosine.sum(2).mean(1) / n_refs[image]

    def _vectors(self, hyp_tokens: np.ndarray, ref_tokens: np.ndarray) -> tuple[_Vectors, _Vectors]:
        """Tf-idf vectors of candidates and references, their n-grams numbered together (looked up once)."""
        (hyp_rows, hyp_keys), (ref_rows, ref_keys) = _ngrams(hyp_tokens), _ngrams(ref_tokens)
        keys, ids = np.unique(np.concatenate([hyp_keys, ref_keys]), return_inverse=True)
        pos = np.searchsorted(self.ngrams, keys).clip(max=len(self.ngrams) - 1)
        df = np.where(self.ngrams[pos] == keys, self.document_frequency[pos], 0)
        idf, order = self.ref_len - np.log(np.maximum(1.0, df)), _order(keys)
        return (_Vectors.of(hyp_tokens, hyp_rows, ids[:len(hyp_keys)], idf, order),
                _Vectors.of(ref_tokens, ref_rows, ids[len(hyp_keys):], idf, order))


class _Vectors(NamedTuple):
    """Tf-idf vectors of captions: one entry per distinct (caption, n-gram); norms [captions, N]; lengths."""

    rows: np.ndarray
    ids: np.ndarray
    order: np.ndarray
    weight: np.ndarray
    norm: np.ndarray
    length: np.ndarray

    @classmethod
    def of(cls, tokens: np.ndarray, rows: np.ndarray, ids: np.ndarray, idf: np.ndarray,
           order: np.ndarray) -> _Vectors:
        """From the n-gram occurrences (row, id) of ``tokens``, ids indexing ``idf`` and ``order``."""
        rows, ids, tf = _count(rows, ids, len(idf))
        weight = tf * idf[ids]
        norm = np.bincount(rows * N + order[ids], weight**2, len(tokens) * N).reshape(-1, N)
        # pycocoevalcap's length is the number of bigrams: the words before the appended <end>
        return cls(rows, ids, order[ids], weight, np.sqrt(norm), (tokens != 0).sum(1) - 1.0)


def _clipped_dot(hyp: _Vectors, ref: _Vectors, image: np.ndarray, ref_image: np.ndarray, ref_slot: np.ndarray,
                 width: int) -> np.ndarray:
    """[candidates, N, width]: sum of min(hyp, ref) * ref over shared n-grams, per order and reference slot."""
    size = int(max(hyp.ids.max(initial=0), ref.ids.max(initial=0))) + 1
    pairs, at = np.unique(ref_image * size + ref.ids, return_inverse=True)
    table = np.zeros((len(pairs), width))  # weight of each (image, n-gram) in each of the image's references
    table[at, ref_slot] = ref.weight
    hyp_pairs = image[hyp.rows] * size + hyp.ids
    pos = np.searchsorted(pairs, hyp_pairs).clip(max=len(pairs) - 1)
    weight = np.where((pairs[pos] == hyp_pairs)[:, None], table[pos], 0.0)
    clipped = np.minimum(hyp.weight[:, None], weight) * weight
    group = (hyp.rows * N + hyp.order)[:, None] * width + np.arange(width)
    return np.bincount(group.ravel(), clipped.ravel(), len(image) * N * width).reshape(len(image), N, width)


def _tokens(captions: Captions) -> np.ndarray:
    """[captions, T] uint64 of word id + 1 up to the first <end> (kept) or <pad>, then zeros.

    A list is a whole caption (<end> appended); an array row without <end> before its <pad> or its width was cut
    short (by max_len) and gets none."""
    if isinstance(captions, torch.Tensor):
        captions = captions.cpu().numpy()
    if isinstance(captions, np.ndarray):
        if captions.ndim != 2:
            raise ValueError(f"an array of captions must be 2-D [captions, words], got shape {captions.shape}")
        ids = np.hstack([captions.astype(np.int64), np.full((len(captions), 1), PAD)])
    else:
        lengths = np.fromiter(map(len, captions), np.int64, len(captions))
        ids = np.full((len(captions), lengths.max(initial=0) + 1), END, np.int64)
        ids[np.arange(ids.shape[1]) < lengths[:, None]] = np.fromiter(
            chain.from_iterable(captions), np.int64, lengths.sum())
    stop = ((ids == END) | (ids == PAD)).argmax(1)
    kept = np.arange(ids.shape[1]) < (stop + (ids[np.arange(len(ids)), stop] == END))[:, None]
    bad = kept & ((ids < 0) | (ids > MAX_ID) | (ids == START))
    if bad.any():
        row = int(bad.any(1).argmax())
        raise ValueError(f"caption {row} has an id that is <start> or outside 0..{MAX_ID}: {ids[row].tolist()}")
    return np.where(kept, ids + 1, 0).astype(np.uint64)


def _ngrams(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every n-gram occurrence in the rows of ``_tokens``: row index and key."""
    rows, keys, key = [], [], tokens
    for n in range(N):
        if n:
            key = (key[:, :-1] << _BITS) | tokens[:, n:]
        valid = tokens[:, n:] != 0  # zeros only trail, so the last word decides
        rows.append(np.nonzero(valid)[0])
        keys.append(key[valid])
    return np.concatenate(rows), np.concatenate(keys)


def _count(rows: np.ndarray, ids: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (row, id) pairs, ids below ``size``, sorted by row then id, with how often each occurs."""
    pairs, counts = np.unique(rows * size + ids, return_counts=True)
    return pairs // size, pairs % size, counts


def _order(keys: np.ndarray) -> np.ndarray:
    """n - 1 for each n-gram key (how many words it holds beyond the first)."""
    return sum((keys >> (_BITS * np.uint64(b)) != 0).astype(np.int64) for b in range(1, N))
