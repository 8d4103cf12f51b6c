"""Stand-in word vectors for ``--word-vectors`` (none ship offline): PPMI + truncated SVD (Levy et al. 2015) of the
word co-occurrences in the 162k real COCO val2014 captions ($CAPTIONER_SHARED), written in GloVe's text format.

    python -m benchmarks.word_vectors OUT.txt [--dim 256] [--window 4] [--min-count 5]

Needs no extra package (torch's sparse low-rank SVD); about a minute on 2 cores. The captions are split by the
English tokenizer of captioner's vocabulary, so the words match those of an English run.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import say, shared_file

FILE = "data/coco-val2014-captions/captions_val2014_4refs.json"


def ppmi_svd(captions: list[list[str]], dim: int, window: int, min_count: int) -> tuple[list[str], np.ndarray]:
    """Words seen ``min_count`` times and their vectors [words, dim]: U * sqrt(S) of the positive PMI matrix of
    co-occurrences within ``window`` words (context counts smoothed by ^0.75), each scaled to norm sqrt(dim), i.e. a
    root mean square of 1 a component, as nn.Embedding's initialisation (Flickr8k dev, attention, 4 epochs: val loss
    3.30 with the whole matrix scaled to standard deviation 1, 3.16 so; 3.24 without vectors)."""
    counts = Counter(w for c in captions for w in c)
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    index = {w: i for i, w in enumerate(words)}
    ids = [np.array([index.get(w, -1) for w in c]) for c in captions]
    rows, cols = [], []
    for c in ids:
        for d in range(1, window + 1):
            a, b = c[:-d], c[d:]
            keep = (a >= 0) & (b >= 0)
            rows += [a[keep], b[keep]]
            cols += [b[keep], a[keep]]
    n = len(words)
    pairs = torch.sparse_coo_tensor(torch.from_numpy(np.stack([np.concatenate(rows), np.concatenate(cols)])),
                                    torch.ones(sum(len(r) for r in rows)), (n, n)).coalesce()
    (i, j), c = pairs.indices(), pairs.values()
    word_total = torch.zeros(n).index_add_(0, i, c)
    context = torch.zeros(n).index_add_(0, j, c) ** 0.75
    pmi = torch.log(c * context.sum() / (word_total[i] * context[j]))
    keep = pmi > 0
    ppmi = torch.sparse_coo_tensor(torch.stack([i[keep], j[keep]]), pmi[keep], (n, n)).coalesce()
    torch.manual_seed(0)
    u, s, _ = torch.svd_lowrank(ppmi, q=dim, niter=4)
    vectors = (u * s.sqrt()).numpy()
    return words, vectors / np.linalg.norm(vectors, axis=1, keepdims=True) * np.sqrt(dim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--min-count", type=int, default=5)
    args = parser.parse_args()
    from captioner.data.tokenizers import ENGLISH

    path, why = shared_file(FILE)
    if path is None:
        raise SystemExit(f"error: {why}")
    start = time.perf_counter()
    captions = [ENGLISH.split(a["caption"]) for a in json.loads(path.read_text())["annotations"]]
    say(f"{len(captions):,} captions tokenised in {time.perf_counter() - start:.0f} s")
    words, vectors = ppmi_svd(captions, args.dim, args.window, args.min_count)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for word, v in zip(words, vectors, strict=True):
            f.write(word + " " + " ".join(f"{x:.5f}" for x in v) + "\n")
    say(f"{len(words):,} words x {args.dim} -> {args.out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
