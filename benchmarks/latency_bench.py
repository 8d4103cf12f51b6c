"""Caption latency per image: the encoder forward, then greedy and beam-3 captions of each decoder family
(Show-Tell, attention) for 10- and 20-word captions at batch 1 and 16, each with its ratio to the encoder; the
decoder's weights in float32 (``--runtime torch``) and in int8 (``--runtime int8``, CPU only).

Random weights give captions of any length, so <end> is held off (output bias -1e4: the beam still scores an
ended candidate every step, as with trained weights) and max_len fixes the number of decoder steps: 11 for a
10-word caption (its <end> costs a step) and 20, the max_len worst case. The searches run on the encoder's
features; encoder and searches are timed in interleaved rounds (medians) and a caption's time is their sum.
The search options (n-gram blocking, no bad endings, sampling, diverse beam) are timed the same way on the float32
decoders at 20 steps: a decoder step's time for the batch, and its ratio to the plain search's; so is an ensemble of
the two families (models/ensemble.py), against the attention decoder alone.
"""
from __future__ import annotations

import copy
from functools import partial

import torch

from benchmarks.common import device, row, say, timed_together

SECTION = "latency"
FAMILIES = ("show-tell", "attention")
FULL = dict(backbone="resnet50", size=224, vocab=10_000, batches=(1, 16), repeat=7, option_families=FAMILIES)
QUICK = dict(backbone="resnet18", size=64, vocab=1_000, batches=(1, 4), repeat=2, option_families=("attention",))
LENGTHS = ((10, 11), (20, 20))  # (words, decoder steps)
BEAMS = (1, 3)
OPTIONS = (("block-ngram 3", 1, dict(block_ngram=3)), ("no bad endings", 1, dict(bad_endings=True)),
           ("sampling (temperature 0.7, top-k 50, top-p 0.9, seeded)", 1,
            dict(sample=True, temperature=0.7, top_k=50, top_p=0.9, seed=0)),
           ("block-ngram 3", 3, dict(block_ngram=3)), ("no bad endings", 3, dict(bad_endings=True)),
           ("3 diverse groups", 3, dict(groups=3, diversity=0.5)))


def run(quick: bool) -> list[dict]:
    from captioner.data.endings import bad_ending_words
    from captioner.data.vocab import END, SPECIALS, Vocabulary
    from captioner.inference import Captioner
    from captioner.models.captioner import ModelConfig
    from captioner.models.ensemble import Ensemble
    from captioner.search import Search

    s, dev = QUICK if quick else FULL, device()
    real = bad_ending_words()  # so that the bad-endings rule has words to rule on
    vocab = Vocabulary([*SPECIALS, *real, *(f"word{i}" for i in range(s["vocab"] - len(SPECIALS) - len(real)))])
    models = {}
    for family in FAMILIES:
        config = ModelConfig(vocab_size=len(vocab), decoder=family, backbone=s["backbone"], encoder_weights="none",
                             image_size=s["size"])
        models[family] = model = Captioner(config, vocab).to(dev).eval()
        with torch.no_grad():
            model.decoder.out.bias[END] = -1e4
        if dev.type == "cpu":
            models[f"{family} int8"] = model = copy.deepcopy(model)
            model.decoder.affines.int8 = True
    ensemble = copy.deepcopy(models["attention"])
    ensemble.decoder = Ensemble([models[f].decoder for f in FAMILIES])  # one encoder config: the same features
    encoder = models[FAMILIES[0]].encoder
    setup = (f"{s['backbone']} at {s['size']} px, random weights, {s['vocab']}-word vocabulary; median of "
             f"{s['repeat']} interleaved rounds")
    rows = []
    for b in s["batches"]:
        say(f"latency: batch {b}")
        x = torch.randn(b, 3, s["size"], s["size"], device=dev)
        with torch.inference_mode():
            features = encoder(x)
            fns = {"encoder": partial(encoder, x)}
            fns |= {(family, words, steps, beam): partial(model.generate, features, Search(beam, steps))
                    for family, model in models.items() for words, steps in LENGTHS for beam in BEAMS}
            fns |= {("option", family, name, beam): partial(models[family].generate, features, Search(beam, 20, **o))
                    for family in s["option_families"] for name, beam, o in OPTIONS}
            fns |= {("ensemble", beam): partial(ensemble.generate, features, Search(beam, 20)) for beam in BEAMS}
            times = timed_together(fns, dev, s["repeat"])
        options = {key[1:]: times.pop(key) for key in list(times) if key[0] == "option"}
        joined = {key[1]: times.pop(key) for key in list(times) if key[0] == "ensemble"}
        encode = times.pop("encoder")
        rows.append(row(SECTION, f"batch {b}: encoder forward", 1000 * encode / b, "ms/image", setup))
        for (family, words, steps, beam), search in times.items():
            name = f"batch {b}: {family} {'greedy' if beam == 1 else f'beam-{beam}'}, {words} words"
            note = f"encoder + {steps} decoder steps"
            rows += [row(SECTION, name, 1000 * (encode + search) / b, "ms/image", note),
                     row(SECTION, f"{name}: ratio to the encoder", (encode + search) / encode, "x", note)]
        for family in s["option_families"]:
            for beam in BEAMS:
                search = f"{family} {'greedy' if beam == 1 else f'beam-{beam}'}"
                plain = times[(family, 20, 20, beam)]
                rows.append(row(SECTION, f"batch {b}: {search}, a step", 1000 * plain / 20, "ms/step",
                                "20 decoder steps, the whole batch"))
                for name, _, _ in [o for o in OPTIONS if o[1] == beam]:
                    t = options[(family, name, beam)]
                    rows += [row(SECTION, f"batch {b}: {search} + {name}, a step", 1000 * t / 20, "ms/step"),
                             row(SECTION, f"batch {b}: {search} + {name}: ratio to plain {search}", t / plain, "x")]
        for beam, t in joined.items():
            search = "greedy" if beam == 1 else f"beam-{beam}"
            plain = times[("attention", 20, 20, beam)]
            rows += [row(SECTION, f"batch {b}: ensemble of show-tell + attention {search}, a step", 1000 * t / 20,
                         "ms/step", "log-probabilities averaged every step"),
                     row(SECTION, f"batch {b}: ensemble {search}: ratio to attention {search} alone", t / plain, "x")]
    return rows
