"""Feature extraction throughput (images/s) with DataLoader num_workers 0, 1 and 2, images decoded from disk."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.common import device, row, say, sync

SECTION = "extract"
FULL = dict(images=512, backbone="resnet50", size=128, batch=32, workers=(0, 1, 2))
QUICK = dict(images=24, backbone="resnet18", size=64, batch=8, workers=(0, 1, 2))


def run(quick: bool) -> list[dict]:
    from captioner.features import FeatureCache, ImageViews
    from captioner.models.encoder import build_backbone
    from captioner.synth import generate

    s, dev = QUICK if quick else FULL, device()
    trunk, dim = build_backbone(s["backbone"], "none", 0)
    trunk = trunk.eval().to(dev)

    def encode(x: torch.Tensor) -> torch.Tensor:  # as features.encode_images does
        x = x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            return trunk(x).float()

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
            cache.build(encode, data, dim, s["batch"], num_workers=w, progress=False)
            sync(dev)
            rows.append(row(SECTION, f"extraction, num_workers {w}", len(data) / (time.perf_counter() - start),
                            "img/s", f"FeatureCache.build (encode_images' loop) incl. worker start-up; {setup}"))
    return rows
