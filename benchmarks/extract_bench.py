"""Feature extraction throughput (images/s) with DataLoader num_workers 0, 1 and 2, images decoded from disk, and
EfficientNet-Lite0 against ResNet-50: extraction throughput and batch-1 encoder latency."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.common import device, row, say, sync, timed

SECTION = "extract"
FULL = dict(images=512, backbone="resnet50", size=128, batch=32, workers=(0, 1, 2), latency_size=224, repeat=5)
QUICK = dict(images=24, backbone="resnet18", size=64, batch=8, workers=(0, 1, 2), latency_size=64, repeat=2)
PAIR = ("efficientnet_lite0", "resnet50")  # pretrained offline vs the seed's backbone


def run(quick: bool) -> list[dict]:
    from captioner.data.synth import generate
    from captioner.features import FeatureCache, ImageViews
    from captioner.models.encoder import Encoder

    s, dev = QUICK if quick else FULL, device()
    encoders = {name: Encoder(name, "none", grid=1).eval().to(dev) for name in (s["backbone"], *PAIR)}
    dim = encoders[s["backbone"]].feature_size

    def encoder(name: str):
        def encode(x: torch.Tensor) -> torch.Tensor:  # as features.encode_images does
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                return encoders[name](x.to(dev, non_blocking=True)).float()
        return encode
    encode = encoder(s["backbone"])

    setup = f"{s['images']} synthetic {s['size']} px PNGs, {s['backbone']}, batch {s['batch']}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "synth", s["images"], 0, 0, s["size"], progress=False)
        data = ImageViews(sorted((Path(tmp) / "synth" / "train").glob("*.png")), s["size"])
        with torch.inference_mode():
            encode(torch.stack([data[0][0][0]] * s["batch"]))  # warm-up
        start = time.perf_counter()
        for _ in DataLoader(data, batch_size=s["batch"]):
            pass
        rows.append(row(SECTION, "decode + transform only, num_workers 0", len(data) / (time.perf_counter() - start),
                        "img/s", f"no encoder: the loading side alone; {setup}"))
        for w in s["workers"]:
            say(f"extract: num_workers {w}")
            cache = FeatureCache(Path(tmp) / f"cache{w}", f"workers{w}")
            sync(dev)
            start = time.perf_counter()
            cache.build(encode, data, 1, dim, s["batch"], num_workers=w, progress=False)
            sync(dev)
            rows.append(row(SECTION, f"extraction, num_workers {w}", len(data) / (time.perf_counter() - start),
                            "img/s", f"FeatureCache.build (encode_images' loop) incl. worker start-up; {setup}"))
        for name in PAIR:
            say(f"extract: {name}")
            cache = FeatureCache(Path(tmp) / f"cache-{name}", name)
            with torch.inference_mode():
                encoder(name)(torch.stack([data[0][0][0]] * s["batch"]))  # warm-up
            sync(dev)
            start = time.perf_counter()
            cache.build(encoder(name), data, 1, encoders[name].feature_size, s["batch"], progress=False)
            sync(dev)
            rows.append(row(SECTION, f"extraction, {name}", len(data) / (time.perf_counter() - start), "img/s",
                            f"num_workers 0, same images; {setup.replace(s['backbone'], name)}"))
    x = torch.randn(1, 3, s["latency_size"], s["latency_size"], device=dev)
    for name in PAIR:
        with torch.inference_mode():
            ms = 1000 * timed(lambda name=name: encoders[name](x), dev, s["repeat"])
        rows.append(row(SECTION, f"batch-1 encoder forward, {name}", ms, "ms/image",
                        f"median of {s['repeat']}, {s['latency_size']} px, frozen trunk + grid pooling"))
    return rows
