"""TEMPORARY (replaced by the registry branch): ResNet trunks returning the spatial map."""
from __future__ import annotations

import socket
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models

DILATION = {32: None, 16: [False, False, True], 8: [False, True, True]}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither on disk nor downloadable."""


def weights_file(backbone: str) -> Path:
    """Where torchvision's weights API keeps the ImageNet weights of ``backbone`` ($TORCH_HOME/hub/checkpoints)."""
    url = models.get_model_weights(backbone).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _imagenet_state(backbone: str) -> dict[str, torch.Tensor]:
    """ImageNet weights from the hub cache, downloading them only when the host answers within seconds."""
    weights = models.get_model_weights(backbone).DEFAULT
    file = weights_file(backbone)
    remedy = (f"Place the file at {file} (copy it from a machine with internet; $TORCH_HOME moves the folder) "
              f"or pass --encoder-weights none for a randomly initialised encoder.")
    if not file.is_file():
        host = urlparse(weights.url).hostname or ""
        try:
            socket.create_connection((host, 443), timeout=3).close()
        except OSError as e:
            raise WeightsUnavailableError(f"ImageNet weights for {backbone} not found at {file} and {host} "
                                          f"cannot be reached ({e}). {remedy}") from None
    try:
        return weights.get_state_dict(progress=True)
    except Exception as e:  # noqa: BLE001 - any download/parse failure gets the same advice
        raise WeightsUnavailableError(f"could not load ImageNet weights for {backbone}: {e}. {remedy}") from e




@dataclass(frozen=True)
class BackboneSpec:
    name: str
    channels: int
    stride: int = 32
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    last_stage: tuple[str, ...] = ("layer4.",)


def build_trunk(name: str, weights: str = "imagenet", seed: int = 0, output_stride: int = 32):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = models.get_model(name, weights=None, zero_init_residual=True,
                                 replace_stride_with_dilation=DILATION[output_stride])
    if weights == "imagenet":
        model.load_state_dict(_imagenet_state(name))
    dim = model.fc.in_features
    trunk = nn.Sequential(OrderedDict((n, m) for n, m in model.named_children() if n not in ("avgpool", "fc")))
    return trunk.to(memory_format=torch.channels_last), BackboneSpec(name, dim, output_stride)
