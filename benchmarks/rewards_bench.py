"""SCST reward speed: CiderD.scores vs pycocoevalcap's CiderScorer on the same candidates, real COCO captions."""
from __future__ import annotations

import json
import time

import numpy as np

from benchmarks.common import row, say, shared_file, timed

SECTION = "rewards"
FILE = "data/coco-val2014-captions/captions_val2014_4refs.json"
IMAGES, SAMPLES = 100, 5  # one SCST batch: 5 sampled captions for each of 100 images
QUICK_IMAGES = 2_000


def run(quick: bool) -> list[dict]:
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    from captioner.data.vocab import END, Vocabulary
    from captioner.training.rewards import CiderD, reference_ids

    path, why = shared_file(FILE)
    if path is None:
        return [row(SECTION, "CIDEr-D reward rate", None, "captions/s", why)]
    captions: dict[int, list[str]] = {}
    for a in json.loads(path.read_text())["annotations"]:
        captions.setdefault(a["image_id"], []).append(a["caption"])
    per_image = list(captions.values())[:QUICK_IMAGES] if quick else list(captions.values())
    say(f"rewards: encoding {len(per_image):,} images' captions")
    vocab = Vocabulary.build([c for caps in per_image for c in caps], threshold=5)
    refs = [reference_ids(vocab, caps) for caps in per_image]
    start = time.perf_counter()
    cider = CiderD.from_references(refs)
    df_seconds = time.perf_counter() - start

    batch = refs[:IMAGES]
    cands = [refs[IMAGES + i * SAMPLES + k][0] for i in range(IMAGES) for k in range(SAMPLES)]  # real captions
    image = np.repeat(np.arange(IMAGES), SAMPLES)
    ours = timed(lambda: cider.scores(cands, batch, image), repeat=5)

    def words(ids: list[int]) -> str:
        return " ".join(map(str, [*ids, END]))

    counted = CiderScorer()
    for image_refs in refs:
        counted += (None, [words(r) for r in image_refs])
    counted.compute_doc_freq()

    def theirs() -> None:
        scorer = CiderScorer()
        for c, i in zip(cands, image, strict=True):
            scorer += (words(c), [words(r) for r in batch[i]])
        scorer.document_frequency = counted.document_frequency
        scorer.compute_cider()

    reference = timed(theirs, repeat=3)
    words_per = np.mean([len(c) for c in cands])
    note = (f"{IMAGES} images x {SAMPLES} real captions of {words_per:.1f} words, df of {len(refs):,} COCO images "
            f"({len(cider.ngrams):,} n-grams), one process")
    return [row(SECTION, f"document frequencies of {len(refs):,} images", df_seconds, "s",
                "CiderD.from_references, captions already word ids"),
            row(SECTION, "CIDEr-D rate, CiderD.scores", len(cands) / ours, "captions/s", note),
            row(SECTION, "CIDEr-D rate, pycocoevalcap CiderScorer", len(cands) / reference, "captions/s",
                "same candidates and df (caption strings, cooked per call)"),
            row(SECTION, "speed-up", reference / ours, "x", "same run")]
