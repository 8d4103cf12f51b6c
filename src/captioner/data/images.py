"""Images -> tensors: RGB decoding, torchvision train/eval transforms, and the caption-aware horizontal flip."""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2

from captioner.data.rgb import crop_aspect, load_rgb, to_rgb  # noqa: F401 - re-exported for their callers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIDE = re.compile(r"\b(left|right)(?=(most)?\b)")  # left, rightmost, left-hand, left/right; not leftover or lefty
RESIZE_RATIO = 1.14  # train: resize to 1.14 x crop then random crop (256 -> 224 in the usual recipe)


class BoundedResize(v2.Resize):
    """v2.Resize of a PIL image's centre at most MAX_ASPECT:1 (rgb.crop_aspect): a 1 x 100,000 image is not
    resized to 128 x 12.8M pixels to keep 128 x 128; images up to 3:1 are resized as they are."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return super().transform(crop_aspect(inpt) if isinstance(inpt, Image.Image) else inpt, params)


def _tail(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def eval_transform(size: int, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """Resize the short side to ``size`` and centre-crop: deterministic (normalised with the backbone's mean/std)."""
    return v2.Compose([BoundedResize(size, antialias=True), v2.CenterCrop(size), *_tail(mean, std)])


def train_transform(size: int, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """Resize then random crop; the flip is applied separately so captions can follow it (see flip)."""
    return v2.Compose([BoundedResize(round(size * RESIZE_RATIO), antialias=True), v2.RandomCrop(size),
                       *_tail(mean, std)])


def flip(image: torch.Tensor) -> torch.Tensor:
    """Mirror an image tensor left-right (pair it with swap_left_right on its captions)."""
    return image.flip(-1)


def swap_left_right(tokens: Sequence[str]) -> list[str]:
    """Tokens of the caption of a mirrored image: 'left' and 'right' trade places, in compounds too."""
    return [SIDE.sub(_other_side, t) if "left" in t or "right" in t else t for t in tokens]


def _other_side(side: re.Match[str]) -> str:
    return "right" if side[1] == "left" else "left"
