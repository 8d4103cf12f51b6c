"""Vocabulary build time on the 162k real COCO val2014 captions (from $CAPTIONER_SHARED)."""
from __future__ import annotations

import json
import time

from benchmarks.common import row, shared_file

SECTION = "vocab"
FILE = "data/coco-val2014-captions/captions_val2014_4refs.json"
QUICK_CAPTIONS = 5_000


def run(quick: bool) -> list[dict]:
    from captioner.data.vocab import Vocabulary

    path, why = shared_file(FILE)
    if path is None:
        return [row(SECTION, "vocabulary build, COCO val2014 captions", None, "s", why)]
    captions = [a["caption"] for a in json.loads(path.read_text())["annotations"]]
    total = len(captions)
    if quick:
        captions = captions[:QUICK_CAPTIONS]
    start = time.perf_counter()
    vocab = Vocabulary.build(captions, 5)
    seconds = time.perf_counter() - start
    which = f"first {len(captions):,} of {total:,}" if quick else f"all {total:,}"
    return [row(SECTION, f"vocabulary build, {len(captions):,} COCO captions", seconds, "s",
                f"Vocabulary.build (NLTK Treebank tokenizer), threshold 5 -> {len(vocab):,} words; {which} "
                f"captions of {path.name}"),
            row(SECTION, "tokenizing rate", len(captions) / seconds, "captions/s", "same run")]
