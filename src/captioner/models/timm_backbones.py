"""Any timm model as the frozen encoder (``--backbone timm:NAME``): CLIP / SigLIP / DINOv2 ViTs, ConvNeXt, ...

A CNN gives its last feature map, a ViT its patch tokens (class and register tokens dropped) laid back on their
grid; either way the trunk outputs [B, C, h, w] like the registry's CNNs, so everything downstream is unchanged.
Weights: ``none`` (seeded random), ``imagenet`` / ``hub`` (the tag's pretrained weights through huggingface_hub,
the local cache first) or a local ``.safetensors`` file. torch only at import: timm loads when a model is built.
"""
from __future__ import annotations

import difflib
import hashlib
import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn

from captioner.models.weights import WeightsUnavailableError

PREFIX = "timm:"
HUB_WEIGHTS = ("imagenet", "hub")  # for a timm model both mean its tag's pretrained weights
HUB_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def is_timm(backbone: str) -> bool:
    return backbone.startswith(PREFIX)


def model_name(backbone: str) -> str:
    """``timm:NAME`` -> NAME, a ValueError listing close matches when timm has no such model."""
    import timm

    name = backbone.removeprefix(PREFIX)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(pretrained=True) + timm.list_models(), n=5,
                                          cutoff=0.6)
        hint = f"close matches: {', '.join(f'{PREFIX}{c}' for c in dict.fromkeys(close))}" if close else (
            "see timm.list_models() for the names")
        raise ValueError(f"unknown timm model {name!r} in --backbone {backbone}; {hint}")
    return name


def pretrained_cfg(backbone: str) -> dict[str, Any]:
    """The model's pretrained config (input size, mean, std, hub repository) without building it."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name(backbone), allow_unregistered=True)
    return cfg.to_dict() if cfg is not None else {}


def own_image_size(backbone: str) -> int:
    """The input side the model was trained at (its pretrained config's; 224 when it has none)."""
    return int(pretrained_cfg(backbone).get("input_size", (3, 224, 224))[-1])


def weights_key(weights: str) -> str:
    """What identifies encoder weights in a cache key: the word, or a local file's content hash."""
    if weights in ("none", *HUB_WEIGHTS) or not Path(weights).is_file():  # gone: the model folder holds them
        return weights
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"file:{h.hexdigest()[:16]}"


class TimmTrunk(nn.Module):
    """A timm model (no classifier) -> its last map [B, C, h, w]: a ViT's patch tokens on their grid."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.prefix = int(getattr(model, "num_prefix_tokens", 0))  # class + register tokens
        self.channels_last_out = getattr(model, "output_fmt", "NCHW") == "NHWC"  # Swin-like maps

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.model.forward_features(images)
        if x.dim() == 3:  # tokens [B, prefix + h * w, C], in row-major patch order
            h, w = images.shape[-2] // self.patch[0], images.shape[-1] // self.patch[1]
            return x[:, self.prefix:].transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)
        return x.permute(0, 3, 1, 2) if self.channels_last_out else x

    @property
    def patch(self) -> tuple[int, int]:
        size = self.model.patch_embed.patch_size
        return (size, size) if isinstance(size, int) else tuple(size)


def _create(name: str, image_size: int | None, **kwargs: Any) -> nn.Module:
    """timm.create_model without the classifier; a ViT-like model is built for ``image_size`` (others take any)."""
    import timm

    if image_size is not None:
        try:
            return timm.create_model(name, num_classes=0, img_size=image_size, **kwargs)
        except TypeError:  # a CNN: no img_size argument, any input size
            pass
    return timm.create_model(name, num_classes=0, **kwargs)


def hub_remedy(repo: str) -> str:
    return (f"On a machine with a network run `huggingface-cli download {repo}` (or `hf download {repo}`), then copy "
            f"its folder models--{repo.replace('/', '--')} into this machine's Hugging Face cache (~/.cache/"
            f"huggingface/hub, or set $HF_HOME); or save the weights as one .safetensors file and pass "
            f"--encoder-weights FILE")


def _cached_hub_file(repo: str, filename: str | None) -> str | None:
    """The weights file of ``repo`` in the local Hugging Face cache, if there."""
    from huggingface_hub import try_to_load_from_cache

    for name in (filename,) if filename else HUB_FILES:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return found
    return None


def _hub_model(backbone: str, name: str, image_size: int | None) -> nn.Module:
    """The model with its tag's pretrained weights: from the local cache, else downloaded when the hub answers."""
    from huggingface_hub import constants


    cfg = pretrained_cfg(backbone)
    repo = cfg.get("hf_hub_id")
    if not repo:
        if cfg.get("url"):  # older timm weights from a URL, kept in the torch hub cache
            return _create(name, image_size, pretrained=True)
        raise WeightsUnavailableError(f"timm has no pretrained weights for {backbone}: pass --encoder-weights none "
                                      f"or a .safetensors FILE")
    repo = repo.split("@")[0]
    file = _cached_hub_file(repo, cfg.get("hf_hub_filename"))
    if file:  # timm's own loading (key conversions, position embeddings resized), straight from the file
        return _create(name, image_size, pretrained=True, pretrained_cfg_overlay={"file": file})
    reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else ""
    if not reason:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=3).close()
        except OSError as e:
            reason = f"huggingface.co cannot be reached ({e})"
    if reason:
        raise WeightsUnavailableError(f"weights for {backbone} come from the Hugging Face repository {repo}, which "
                                      f"is not in the local cache ({constants.HF_HUB_CACHE}), and {reason}. "
                                      f"{hub_remedy(repo)}")
    return _create(name, image_size, pretrained=True)


def _load_file(model: nn.Module, path: Path, backbone: str) -> None:
    """Weights from a local .safetensors file (the classifier's tensors, if any, are ignored); the keys must match."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.suffix != ".safetensors" or not path.is_file():
        raise ValueError(f"--encoder-weights {path}: not a .safetensors file (give imagenet, none, hub or the path "
                         f"of a .safetensors file of {backbone}'s weights)")
    try:
        state = load_file(str(path))
    except SafetensorError as e:
        raise ValueError(f"--encoder-weights {path}: not a readable safetensors file ({e})") from None
    head = str(getattr(model, "pretrained_cfg", {}).get("classifier") or "head")
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(head)}
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    wrong = [k for k in expected.keys() & state.keys() if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = (f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, the model has "
                  f"{tuple(expected[wrong[0]].shape)}" if wrong else
                  f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        raise ValueError(f"--encoder-weights {path} does not fit {backbone}: {detail} ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected tensors). Save the state dict of timm.create_model"
                         f"({model_name(backbone)!r}, num_classes=0) at the same image size")
    model.load_state_dict(state)


def build_timm(backbone: str, weights: str, seed: int, image_size: int | None) -> tuple[TimmTrunk, dict[str, Any]]:
    """The trunk of ``timm:NAME`` and what the encoder needs of it: channels, mean, std, image size, last stage."""
    name = model_name(backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if weights in HUB_WEIGHTS:
            model = _hub_model(backbone, name, image_size)
        else:
            model = _create(name, image_size, pretrained=False)
            if weights != "none":
                _load_file(model, Path(weights), backbone)
    cfg = pretrained_cfg(backbone)
    blocks = next((n for n in ("blocks", "stages", "layers") if isinstance(getattr(model, n, None), nn.Sequential)),
                  None)
    last = (f"model.{blocks}.{len(getattr(model, blocks)) - 1}.", "model.norm.") if blocks else ("model.",)
    info = {"channels": int(model.num_features), "mean": tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
            "std": tuple(cfg.get("std", (0.229, 0.224, 0.225))),
            "image_size": image_size or own_image_size(backbone), "last_stage": last}
    return TimmTrunk(model), info
