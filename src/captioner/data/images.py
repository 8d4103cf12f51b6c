"""Images -> tensors: RGB decoding, torchvision train/eval transforms, and the caption-aware horizontal flip."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIRROR = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
RESIZE_RATIO = 1.14  # train: resize to 1.14 x crop then random crop (256 -> 224 in the usual recipe)


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale (8 or 16 bit), CMYK, palette and alpha images become RGB (transparent areas on white)."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "I" or image.mode.startswith("I;16"):  # 16-bit gray 0..65535 -> 0..255 (Pillow would clip)
        gray = np.asarray(image).clip(0, 65535) / 257
        return Image.fromarray(gray.round().astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully into RGB; raises OSError naming the file when it cannot."""
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise OSError(f"cannot read image {path}: {e}") from e


def _tail(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def eval_transform(size: int, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """Resize the short side to ``size`` and centre-crop: deterministic (normalised with the backbone's mean/std)."""
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), *_tail(mean, std)])


def train_transform(size: int, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """Resize then random crop; the flip is applied separately so captions can follow it (see flip)."""
    return v2.Compose([v2.Resize(round(size * RESIZE_RATIO), antialias=True), v2.RandomCrop(size),
                       *_tail(mean, std)])


def flip(image: torch.Tensor) -> torch.Tensor:
    """Mirror an image tensor left-right (pair it with swap_left_right on its captions)."""
    return image.flip(-1)


def swap_left_right(tokens: Sequence[str]) -> list[str]:
    """Tokens of the caption of a mirrored image: 'left' and 'right' trade places."""
    return [MIRROR.get(t, t) for t in tokens]
