"""Images -> tensors: RGB decoding, torchvision train/eval transforms, and the caption-aware horizontal flip."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from captioner.data.rgb import load_rgb, to_rgb  # noqa: F401 - re-exported for their callers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIRROR = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
RESIZE_RATIO = 1.14  # train: resize to 1.14 x crop then random crop (256 -> 224 in the usual recipe)


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
