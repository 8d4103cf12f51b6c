"""Training epoch time: decoder on cached encoder features vs the frozen encoder run on every batch; the attention
decoder vs Show-Tell on the same cache; a self-critical (SCST) step vs a cross-entropy step.

All sides run CaptionModule's own step (loss, Adam, gradient clipping) over the same length-bucketed batches of a
synthetic set; the cache is built once with features.encode_images (its cost is reported on its own row).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.common import device, optimizer_of, row, say, sync, timed

SECTION = "train"
FULL = dict(images=1000, backbone="resnet50", size=128, grid=4, batch=128, timed_batches=4, scst_images=64)
QUICK = dict(images=32, backbone="resnet18", size=64, grid=2, batch=32, timed_batches=1, scst_images=8)


def run(quick: bool) -> list[dict]:
    from captioner.data.batching import LengthBucketSampler, pad_collate
    from captioner.data.captions import CachedCaptions, CachedImages, CaptionIds, ImageCaptions
    from captioner.data.datasets import open_split
    from captioner.data.synth import generate
    from captioner.data.vocab import Vocabulary
    from captioner.features import encode_images
    from captioner.models.captioner import ModelConfig
    from captioner.training.rewards import CiderD, reference_ids
    from captioner.training.run import CaptionModule, TrainConfig

    s, dev = QUICK if quick else FULL, device()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "synth", s["images"], 0, 0, s["size"], progress=False)
        records, _ = open_split(Path(tmp) / "synth", "train")
        vocab = Vocabulary.build((c for r in records for c in r.captions), 5)
        model_cfg = ModelConfig(vocab_size=len(vocab), backbone=s["backbone"], encoder_weights="none",
                                image_size=s["size"], grid=s["grid"])
        train_cfg = TrainConfig(data=tmp, batch_size=s["batch"])

        def stepper(decoder: str = "show-tell", **cfg):
            module = CaptionModule(asdict(model_cfg) | {"decoder": decoder}, vocab.itos,
                                   asdict(train_cfg) | cfg).to(dev).train()
            optimizer = optimizer_of(module)

            def step(batch) -> None:
                batch = [t.to(dev, non_blocking=True) for t in batch]
                loss = module._self_critical(batch) if module.cfg.scst else module._loss(batch)[1]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), train_cfg.clip)
                optimizer.step()
            return module, step

        module, step = stepper()

        say(f"train: building the feature cache of {len(records)} images ({s['backbone']} at {s['size']} px)")
        start = time.perf_counter()
        feats, ok = encode_images([r.path for r in records], s["backbone"], "none", 0, s["size"], 1, Path(tmp) / "c",
                                  64, device=dev, log=lambda _: None, progress=False, grid=s["grid"])
        build = time.perf_counter() - start
        ids = CaptionIds(records, vocab, ok)
        batches = len(LengthBucketSampler(ids.lengths, s["batch"]))

        cached = DataLoader(CachedCaptions(feats, ids), batch_sampler=LengthBucketSampler(ids.lengths, s["batch"]),
                            collate_fn=lambda b: b)

        def epoch(step) -> float:
            for i, batch in enumerate(cached):  # warm-up: a few steps, then one full timed epoch
                step(batch)
                if i == 2:
                    break
            sync(dev)
            start = time.perf_counter()
            for batch in cached:
                step(batch)
            sync(dev)
            return time.perf_counter() - start

        say(f"train: one epoch on cached features ({len(ids)} captions, {batches} batches), each family")
        cache_epoch = epoch(step)
        attention_epoch = epoch(stepper("attention")[1])

        say("train: self-critical steps vs cross-entropy steps")
        references = [reference_ids(vocab, r.captions) for r in records]
        scst_module, scst_step = stepper(scst=True, init="benchmark", lr=5e-5, min_lr=5e-5)
        scst_module.references, scst_module.cider = references, CiderD.from_references(references)
        images = CachedImages(feats, ok)
        scst_batch = images.__getitems__(list(range(s["scst_images"])))
        xe_batch = next(iter(cached))
        scst_time = timed(lambda: scst_step(scst_batch), dev, 3)
        xe_time = timed(lambda: step(xe_batch), dev, 3)

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
        row(SECTION, "epoch, attention decoder on the feature cache", attention_epoch, "s",
            f"full epoch timed, same data and batches, {s['grid']}x{s['grid']} grid, context 256; "
            f"{attention_epoch / cache_epoch:.1f}x the Show-Tell epoch"),
        row(SECTION, "cross-entropy step, Show-Tell", 1000 * xe_time, "ms/batch",
            f"median of 3; one batch of {len(xe_batch[1])} captions"),
        row(SECTION, "self-critical step, Show-Tell", 1000 * scst_time, "ms/batch",
            f"median of 3; {s['scst_images']} images x 5 samples, CIDEr-D reward, mean-of-others baseline; "
            f"{scst_time / xe_time:.1f}x the cross-entropy step"),
        row(SECTION, "one-time feature cache build", build, "s", f"encode_images, batch 64; {payback}"),
    ]
