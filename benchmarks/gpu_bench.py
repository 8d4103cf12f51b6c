"""COCO-2014 shapes on a GPU: a bf16-mixed training step of each family (batch 512, 7x7x2048 grid, 10k words) with
the grid cache resident in GPU memory, batches gathered there; the CPU's figures are the scale section's.

Without CUDA the full section is skipped; ``--quick`` runs tiny sizes on any device (a smoke test).
"""
from __future__ import annotations

from dataclasses import asdict
from functools import partial

import torch

from benchmarks.common import device, optimizer_of, row, say, timed, train_step

SECTION = "gpu"
COCO_CAPTIONS = 616_435  # train2014 + val2014
FULL = dict(batch=512, vocab=10_000, cached=40_000, repeat=10)
QUICK = dict(batch=8, vocab=200, cached=64, repeat=2)
LENGTHS = (13, 25)  # tokens with <start>/<end>: a typical COCO caption, the longest


def run(quick: bool) -> list[dict]:
    from captioner.data.vocab import SPECIALS
    from captioner.models.captioner import ModelConfig
    from captioner.training.run import CaptionModule, TrainConfig

    dev = device()
    if dev.type != "cuda" and not quick:
        return [row(SECTION, "training step at COCO shapes", None, "ms", "skipped: no CUDA device")]
    s, cuda = QUICK if quick else FULL, dev.type == "cuda"
    cache = torch.randn(s["cached"], 49, 2048, device=dev, dtype=torch.float16)  # random, in the cache's shape
    note = f"{s['cached']:,} cached grids on {dev.type} ({cache.numel() * 2 / 1e9:.1f} GB), batch {s['batch']}"

    def gather() -> torch.Tensor:
        return cache.index_select(0, torch.randint(0, s["cached"], (s["batch"],), device=dev)).float()

    def step(module, optimizer: torch.optim.Optimizer, captions: torch.Tensor, lengths: torch.Tensor) -> None:
        train_step(module, optimizer, (gather(), captions, lengths), bf16=cuda)  # a fresh batch each step

    rows = [row(SECTION, "gather a batch of grids from the device cache", 1000 * timed(gather, dev, s["repeat"]),
                "ms", note)]
    itos = [*SPECIALS, *(f"w{i}" for i in range(s["vocab"] - len(SPECIALS)))]
    for family in ("show-tell", "attention"):
        say(f"gpu: {family}")
        module = CaptionModule(asdict(ModelConfig(vocab_size=len(itos), decoder=family, backbone="resnet50",
                                                  image_size=224, encoder_weights="none")),
                               itos, asdict(TrainConfig(data=".", batch_size=s["batch"]))).to(dev).train()
        optimizer = optimizer_of(module)
        for length in LENGTHS:
            captions = torch.randint(len(SPECIALS), len(itos), (s["batch"], length), device=dev)
            captions[:, 0], captions[:, -1] = SPECIALS.index("<start>"), SPECIALS.index("<end>")
            lengths = torch.full((s["batch"],), length, device=dev)
            seconds = timed(partial(step, module, optimizer, captions, lengths), dev, s["repeat"], warmup=3)
            peak = f"; peak GPU memory {torch.cuda.max_memory_allocated() / 1e9:.1f} GB" if cuda else ""
            rows += [row(SECTION, f"training step, {family}, {length} tokens", 1000 * seconds, "ms",
                         f"{note}, gather included, median of {s['repeat']}{peak}"),
                     row(SECTION, f"epoch of COCO-2014's captions, {family}, all {length} tokens",
                         COCO_CAPTIONS / s["batch"] * seconds, "s", "steps x the step above; no loader, no logging")]
    return rows
