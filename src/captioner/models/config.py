"""A captioner's architecture and preprocessing settings (config.json); no torch, so the ONNX runner reads it too."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

DECODERS = ("show-tell", "attention")


@dataclass
class ModelConfig:
    """Architecture and preprocessing of a captioner; saved as config.json."""

    vocab_size: int
    decoder: str = "show-tell"
    backbone: str = "resnet50"
    encoder_weights: str = "imagenet"
    image_size: int = 224
    grid: int = 7
    embed_size: int = 256
    hidden_size: int = 512
    num_layers: int = 1
    attention_size: int = 256
    context_size: int = 256
    dropout: float = 0.0
    batch_norm: bool = True
    fine_tune: bool = False
    max_len: int = 20
    seed: int = 0
    output_stride: int = 32

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {self.decoder!r}; choose one of {', '.join(DECODERS)}")
        if self.grid < 1 or self.max_len < 1:
            raise ValueError(f"grid and max_len must be >= 1, got {self.grid} and {self.max_len}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{source}: unknown model settings {sorted(unknown)}")
        if "vocab_size" not in data:
            raise ValueError(f"{source}: missing 'vocab_size'")
        return cls(**data)
