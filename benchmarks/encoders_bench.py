"""Encoders side by side: native grid, feature width and encoding img/s at each one's own input size (random
weights: the speed does not depend on them). ``python -m benchmarks.encoders_bench [--quick] [--threads 2]``."""
from __future__ import annotations

import argparse
import time

import torch

SECTION = "encoders"
FULL = dict(encoders=("efficientnet_lite0", "efficientnet_lite2", "timm:vit_base_patch16_clip_224.openai",
                      "timm:vit_base_patch16_siglip_224", "timm:convnext_tiny"), batch=8, batches=3)
QUICK = dict(encoders=("efficientnet_lite0", "timm:vit_tiny_patch16_224", "timm:convnext_atto"), batch=2, batches=1)
OWN_SIZE = {"efficientnet_lite0": 224, "efficientnet_lite2": 260}  # the recipe's sizes of the built-in backbones


def measure(backbone: str, batch: int, batches: int) -> dict:
    """One encoder's native grid side, feature width and img/s (best of ``batches`` timed batches after a warm-up)."""
    from captioner.models.encoder import Encoder
    from captioner.models.timm_backbones import is_timm, own_image_size

    size = own_image_size(backbone) if is_timm(backbone) else OWN_SIZE.get(backbone, 224)
    encoder = Encoder(backbone, "none", grid=1, image_size=size).eval()
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        side = encoder.backbone(images[:1]).shape[-1]
        encoder(images)  # warm-up
        best = min(_timed(encoder, images) for _ in range(batches))
    return {"encoder": backbone, "size": size, "grid": side, "width": encoder.feature_size, "img/s": batch / best}


def _timed(encoder: torch.nn.Module, images: torch.Tensor) -> float:
    start = time.perf_counter()
    encoder(images)
    return time.perf_counter() - start


def run(quick: bool = False, threads: int = 2) -> list[dict]:
    torch.set_num_threads(threads)
    s = QUICK if quick else FULL
    rows = [measure(name, s["batch"], s["batches"]) for name in s["encoders"]]
    base = rows[0]["img/s"]
    for r in rows:
        r["vs first"] = r["img/s"] / base
    return rows


def table(rows: list[dict], threads: int) -> str:
    lines = [f"| encoder | input px | grid (native) | feature width | img/s ({threads} threads) | "
             f"vs {rows[0]['encoder']} |", "|---|---|---|---|---|---|"]
    lines += [f"| `{r['encoder']}` | {r['size']} | {r['grid']} x {r['grid']} | {r['width']} | {r['img/s']:.1f} | "
              f"{r['vs first']:.2f}x |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny models, one batch (a smoke test)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(table(run(args.quick, args.threads), args.threads))


if __name__ == "__main__":
    main()
