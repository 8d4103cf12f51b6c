"""Training epoch time: decoder on cached encoder features vs the frozen encoder run on every batch.

Both sides run the same training step (CaptionModule's loss, Adam, gradient clipping) over the same
length-bucketed batches of a synthetic set; only where the image features come from differs. The cache is
built once with features.encode_images (its cost is reported on its own row).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.common import device, row, say, sync

SECTION = "train"
FULL = dict(images=1000, backbone="resnet50", size=128, batch=128, timed_batches=4)
QUICK = dict(images=32, backbone="resnet18", size=64, batch=32, timed_batches=1)


def run(quick: bool) -> list[dict]:
    from captioner.data.batching import LengthBucketSampler, pad_collate
    from captioner.data.captions import CachedCaptions, CaptionIds, ImageCaptions
    from captioner.data.datasets import open_split
    from captioner.data.vocab import Vocabulary
    from captioner.features import encode_images
    from captioner.models.captioner import ModelConfig
    from captioner.synth import generate
    from captioner.train import CaptionModule, TrainConfig

    s, dev = QUICK if quick else FULL, device()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "synth", s["images"], 0, 0, s["size"], progress=False)
        records, _ = open_split(Path(tmp) / "synth", "train")
        vocab = Vocabulary.build((c for r in records for c in r.captions), 5)
        model_cfg = ModelConfig(vocab_size=len(vocab), backbone=s["backbone"], encoder_weights="none",
                                image_size=s["size"])
        train_cfg = TrainConfig(data=tmp, batch_size=s["batch"])
        module = CaptionModule(asdict(model_cfg), vocab.itos, asdict(train_cfg)).to(dev).train()
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=train_cfg.lr)

        def step(batch) -> None:
            loss = module._loss([t.to(dev, non_blocking=True) for t in batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, train_cfg.clip)
            optimizer.step()

        say(f"train: building the feature cache of {len(records)} images ({s['backbone']} at {s['size']} px)")
        start = time.perf_counter()
        feats, ok = encode_images([r.path for r in records], s["backbone"], "none", 0, s["size"], 1, Path(tmp) / "c",
                                  64, device=dev, log=lambda _: None, progress=False)
        build = time.perf_counter() - start
        ids = CaptionIds(records, vocab, ok)
        batches = len(LengthBucketSampler(ids.lengths, s["batch"]))

        cached = DataLoader(CachedCaptions(feats, ids), batch_sampler=LengthBucketSampler(ids.lengths, s["batch"]),
                            collate_fn=lambda b: b)
        for i, batch in enumerate(cached):  # warm-up: a few steps, then one full timed epoch
            step(batch)
            if i == 2:
                break
        say(f"train: one epoch on cached features ({len(ids)} captions, {batches} batches)")
        sync(dev)
        start = time.perf_counter()
        for batch in cached:
            step(batch)
        sync(dev)
        cache_epoch = time.perf_counter() - start

        k = s["timed_batches"]
        say(f"train: {k + 1} batches with the encoder run on every batch")
        images = DataLoader(ImageCaptions(records, ids, s["size"]),
                            batch_sampler=LengthBucketSampler(ids.lengths, s["batch"]), collate_fn=pad_collate)
        times, it = [], iter(images)
        for i in range(k + 1):  # the first is the warm-up
            start = time.perf_counter()
            step(next(it))
            sync(dev)
            if i:
                times.append(time.perf_counter() - start)
        per_batch = sum(times) / len(times)
        encoder_epoch = per_batch * batches

    saved = encoder_epoch - cache_epoch
    payback = f"pays for itself after {build / saved:.2f} epochs" if saved > 0 else "no per-epoch saving measured"
    setup = (f"{len(records)} images / {len(ids)} captions, {s['backbone']} at {s['size']} px, batch {s['batch']}, "
             f"{batches} bucketed batches")
    return [
        row(SECTION, "epoch, decoder on the feature cache", cache_epoch, "s", f"full epoch timed; {setup}"),
        row(SECTION, "epoch, frozen encoder on every batch (peers' way)", encoder_epoch, "s",
            f"estimated: mean of {k} timed batch{'es' if k > 1 else ''} ({per_batch:.2f} s each, images "
            f"decoded from disk, num_workers 0) x {batches} batches"),
        row(SECTION, "speed-up of the feature cache", encoder_epoch / cache_epoch, "x", "target >= 10x"),
        row(SECTION, "one-time feature cache build", build, "s", f"encode_images, batch 64; {payback}"),
    ]
