"""Where torchvision's pretrained encoder weights come from (the hub cache, else a quick download), and the error
when they can be had from neither."""
from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from torchvision import models


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither on disk nor downloadable."""


def weights_file(backbone: str) -> Path:
    """Where torchvision's weights API keeps the ImageNet weights of ``backbone`` ($TORCH_HOME/hub/checkpoints)."""
    url = models.get_model_weights(backbone).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def torchvision_state(name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights from the hub cache, downloading them only when the host answers within seconds."""
    weights = models.get_model_weights(name).DEFAULT
    file = weights_file(name)
    remedy = (f"Place the file at {file} (copy it from a machine with internet; $TORCH_HOME moves the folder), "
              f"use --backbone efficientnet_lite0 (ImageNet weights installed with the package, no download) "
              f"or pass --encoder-weights none for a randomly initialised encoder.")
    if not file.is_file():
        host = urlparse(weights.url).hostname or ""
        try:
            socket.create_connection((host, 443), timeout=3).close()
        except OSError as e:
            raise WeightsUnavailableError(f"ImageNet weights for {name} not found at {file} and {host} "
                                          f"cannot be reached ({e}). {remedy}") from None
    try:
        return weights.get_state_dict(progress=True)
    except Exception as e:  # noqa: BLE001 - any download/parse failure gets the same advice
        raise WeightsUnavailableError(f"could not load ImageNet weights for {name}: {e}. {remedy}") from e
