"""How high can any caption score? ``python -m benchmarks.cider_ceiling runs/demo [--images N]``.

For each test image, a hill climb on CIDEr-D against that image's own references (insert, replace or delete one of
the words its references use, while the score rises), started from the served model's caption and from each
reference. pycocoevalcap's CIDEr-D, document frequencies from the test references as ``Cider`` computes them; the
climb sees the references no model sees, so its mean bounds from below what the best possible captions score.
"""
from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
from pycocoevalcap.cider.cider import Cider
from tqdm import tqdm

Words = list[str]


def ngrams(words: Words) -> Counter:
    return Counter(tuple(words[i:i + n]) for n in range(1, 5) for i in range(len(words) - n + 1))


class Scorer:
    """pycocoevalcap's CIDEr-D (sigma 6, clipped, x10) of one candidate, the references' vectors computed once."""

    def __init__(self, references: dict[int, list[Words]]) -> None:
        self.df = Counter(g for refs in references.values() for g in {g for r in refs for g in ngrams(r)})
        self.ref_len = math.log(len(references))
        self.refs = {i: [self.vector(r) for r in refs] for i, refs in references.items()}

    def vector(self, words: Words) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(4)]
        for gram, tf in ngrams(words).items():
            vec[len(gram) - 1][gram] = tf * (self.ref_len - math.log(max(1.0, self.df[gram])))
        return vec, [math.sqrt(sum(x * x for x in v.values())) for v in vec], max(len(words) - 1, 0)

    def __call__(self, words: Words, image: int) -> float:
        vec, norm, length = self.vector(words)
        total = 0.0
        for ref_vec, ref_norm, ref_length in self.refs[image]:
            penalty = math.exp(-((length - ref_length) ** 2) / 72.0)
            for n in range(4):
                if norm[n] and ref_norm[n]:
                    dot = sum(min(x, ref_vec[n].get(g, 0.0)) * ref_vec[n].get(g, 0.0) for g, x in vec[n].items())
                    total += dot / (norm[n] * ref_norm[n]) * penalty
        return 10.0 * total / 4 / len(self.refs[image])


def climb(score: Scorer, words: Words, image: int, vocabulary: list[str]) -> tuple[float, Words]:
    """Best caption reachable from ``words`` by one-word edits that each raise the score, and its score."""
    best = score(words, image)
    while True:
        moves = [words[:i] + words[i + 1:] for i in range(len(words))]
        moves += [words[:i] + [w] + words[i + keep:] for i in range(len(words) + 1) for w in vocabulary
                  for keep in (0, 1) if i + keep <= len(words)]
        top, caption = max((score(m, image), m) for m in moves)
        if top <= best + 1e-12:
            return best, words
        best, words = top, caption


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="a `captioner demo` output folder (data/, model/results_test.json)")
    parser.add_argument("--images", type=int, default=None, help="only the first N test images")
    args = parser.parse_args()
    for needed in ("data/annotations/captions_test.json", "model/results_test.json"):
        if not (args.demo / needed).is_file():
            parser.error(f"{args.demo / needed} not found: give the folder of a finished `captioner demo --out DIR`")
    annotations = json.loads((args.demo / "data/annotations/captions_test.json").read_text())["annotations"]
    references: dict[int, list[Words]] = {}
    for a in annotations:
        references.setdefault(a["image_id"], []).append(a["caption"].lower().replace(".", " ").split())
    served = {r["image_id"]: r["caption"].lower().split()
              for r in json.loads((args.demo / "model/results_test.json").read_text())}
    score = Scorer(references)
    official, _ = Cider().compute_score({i: [" ".join(r) for r in refs] for i, refs in references.items()},
                                        {i: [" ".join(served[i])] for i in references})
    images = sorted(references)[:args.images]
    model = [score(served[i], i) for i in images]
    own = [max(score(r, i) for r in references[i]) for i in images]
    best = [max(climb(score, start, i, sorted({w for r in references[i] for w in r}))
                for start in (served[i], *references[i])) for i in tqdm(images, desc="climbing")]
    print(f"{len(images)} test images, CIDEr-D x100 (pycocoevalcap on all of them: served model {100 * official:.1f})")
    print(f"served model            {100 * np.mean(model):.1f}")
    print(f"best own reference      {100 * np.mean(own):.1f}")
    print(f"best caption found      {100 * np.mean([b for b, _ in best]):.1f}")
    for i, (value, words) in list(zip(images, best, strict=True))[:5]:
        print(f"  {100 * value:5.1f}  {' '.join(words)}   (model: {' '.join(served[i])})")


if __name__ == "__main__":
    main()
