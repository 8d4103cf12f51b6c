"""ONNX export: the encoder and the decoder's start and step as graphs with a dynamic batch axis, beside the config,
vocabulary and preprocessing a runner needs (runner.py runs the folder without torch).

Graphs (opset 17, the TorchScript-based exporter):
  encoder.onnx  images [B, 3, S, S] (normalised) -> features [B, N, C]
  start.onnx    features -> state0, state1, ...
  step.onnx     tokens [B] (int64), state0, ... -> log_probs [B, V], next_state<i> for each state entry the step
                replaces (the attention's values and keys pass through unchanged, so they are not outputs),
                attention [B, N] (attention family only)
"""
from __future__ import annotations

import importlib.util
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from captioner.data.vocab import START
from captioner.inference import Captioner, load
from captioner.io import atomic_write, write_json
from captioner.model_card import write_card

OPSET = 17


class Encode(nn.Module):
    """The encoder with its G x G average pool as a product with a fixed matrix: ONNX has no adaptive pooling to a
    grid that does not divide the feature map."""

    def __init__(self, model: Captioner) -> None:
        super().__init__()
        self.trunk, size, g = model.encoder.backbone, model.config.image_size, model.config.grid
        with torch.no_grad():
            h, w = self.trunk(torch.zeros(1, 3, size, size)).shape[-2:]
        cells = torch.eye(h * w).view(h * w, 1, h, w)  # pooling each one-hot map gives the pool's weights
        self.register_buffer("pool", F.adaptive_avg_pool2d(cells, g).view(h * w, g * g))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (self.trunk(images).flatten(2) @ self.pool).transpose(1, 2)


class Start(nn.Module):
    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.decoder.start(features)


class Step(nn.Module):
    """tokens, *state -> log-probs, the ``replaced`` state entries, the attention (when the family has one)."""

    def __init__(self, decoder: nn.Module, replaced: list[int]) -> None:
        super().__init__()
        self.decoder, self.replaced = decoder, replaced

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        log_probs, new, alpha = self.decoder.step(tokens, state)
        return log_probs, *(new[i] for i in self.replaced), *(() if alpha is None else (alpha,))


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], opset: int) -> None:
    dynamic = {name: {0: "batch"} for name in inputs + outputs}
    atomic_write(path, lambda p: torch.onnx.export(module.eval(), args, str(p), input_names=inputs,
                                                   output_names=outputs, dynamic_axes=dynamic, opset_version=opset,
                                                   dynamo=False))


@torch.no_grad()
def export_onnx(model_dir: str | Path, out: str | Path, opset: int = OPSET) -> Path:
    """Write the graphs, config.json, vocab.json and preprocess.json (size, mean, std) of the model in ``model_dir``
    to ``out``."""
    if importlib.util.find_spec("onnx") is None:
        raise ImportError("ONNX export needs the onnx package: pip install onnx (it is in captioner[dev])")
    model, out = load(model_dir, "cpu"), Path(out)
    c, spec = model.config, model.encoder.spec
    images = torch.zeros(2, 3, c.image_size, c.image_size)  # batch 2: nothing gets specialised to one image
    features = model.encoder(images)
    state = model.decoder.start(features)
    tokens = torch.full((2,), START)
    _, new, alpha = model.decoder.step(tokens, state)
    replaced = [i for i, (a, b) in enumerate(zip(new, state, strict=True)) if a is not b]
    names = [f"state{i}" for i in range(len(state))]
    _export(Encode(model), (images,), out / "encoder.onnx", ["images"], ["features"], opset)
    _export(Start(model.decoder), (features,), out / "start.onnx", ["features"], names, opset)
    _export(Step(model.decoder, replaced), (tokens, *state), out / "step.onnx", ["tokens", *names],
            ["log_probs", *(f"next_{names[i]}" for i in replaced), *([] if alpha is None else ["attention"])], opset)
    write_json(out / "config.json", asdict(replace(c, vocab_sha256=model.vocab.sha256())))
    model.vocab.save(out / "vocab.json")
    write_json(out / "preprocess.json", {"image_size": c.image_size, "mean": list(spec.mean), "std": list(spec.std),
                                         "resize": "short side to image_size (PIL bilinear, antialiased), centre crop"})
    write_card(model_dir, out=out)
    return out
