"""captioner: train, evaluate and serve CNN -> LSTM image-captioning models (Show and Tell)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from captioner.models.captioner import Captioner

__version__ = "0.1.0"


def load(folder: str, device: str | None = None) -> Captioner:
    """Load a trained captioner from its artifact folder (model.safetensors + config.json + vocab.json).

    ``device`` defaults to the GPU when there is one.
    """
    from captioner.models.captioner import load as _load

    return _load(folder, device)
