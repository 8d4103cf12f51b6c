"""captioner: train, evaluate and serve image-captioning models (Show and Tell; Show, Attend and Tell)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from captioner.inference import Captioner

__version__ = "0.1.0"


def load(folder: str, device: str | None = None) -> Captioner:
    """Load a trained captioner of either family from its artifact folder (model.safetensors + config.json +
    vocab.json); ``device`` defaults to the GPU when there is one."""
    from captioner.inference import load as _load

    return _load(folder, device)
