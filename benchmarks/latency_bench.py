"""Caption latency per image: greedy and beam-3 captions against a bare encoder forward, at batch 1 and 16."""
from __future__ import annotations

import torch

from benchmarks.common import device, row, say, timed

SECTION = "latency"
FULL = dict(backbone="resnet50", size=224, vocab=10_000, batches=(1, 16), repeat=5)
QUICK = dict(backbone="resnet18", size=64, vocab=1_000, batches=(1, 4), repeat=2)


def run(quick: bool) -> list[dict]:
    from captioner.data.vocab import SPECIALS, Vocabulary
    from captioner.models.captioner import Captioner, ModelConfig

    s, dev = QUICK if quick else FULL, device()
    vocab = Vocabulary(list(SPECIALS) + [f"word{i}" for i in range(s["vocab"] - len(SPECIALS))])
    config = ModelConfig(vocab_size=len(vocab), backbone=s["backbone"], encoder_weights="none", image_size=s["size"])
    model = Captioner(config, vocab).to(dev).eval()
    setup = (f"{s['backbone']} at {s['size']} px, random weights, {s['vocab']}-word vocabulary, "
             f"max {config.max_len} words")
    rows = []
    for b in s["batches"]:
        say(f"latency: batch {b}")
        x = torch.randn(b, 3, s["size"], s["size"], device=dev)
        with torch.inference_mode():
            lengths = [len(c[0][0].split()) for c in model.generate(model.encoder(x), 1)]
            encoder = timed(lambda x=x: model.encoder(x), dev, s["repeat"])
            greedy = timed(lambda x=x: model.generate(model.encoder(x), 1), dev, s["repeat"])
            beam = timed(lambda x=x: model.generate(model.encoder(x), 3), dev, s["repeat"])
        note = f"median of {s['repeat']}; {setup}"
        rows += [row(SECTION, f"batch {b}: encoder forward only", 1000 * encoder / b, "ms/image", note),
                 row(SECTION, f"batch {b}: encoder + greedy caption", 1000 * greedy / b, "ms/image",
                     f"{note}; captions of {sum(lengths) / len(lengths):.1f} words on average"),
                 row(SECTION, f"batch {b}: encoder + beam-3 caption", 1000 * beam / b, "ms/image", note)]
    return rows
