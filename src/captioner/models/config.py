"""A captioner's architecture and preprocessing settings (config.json); no torch, so the ONNX runner reads it too."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

DECODERS = ("show-tell", "attention")
ATTENTION_SCORES = ("additive", "dot")  # attention.py's score functions (models saved before "dot" are additive)
SYNTHETIC = "captioner synthetic shapes"  # synth.py's description: a model trained on it knows shapes, not photos
# JSON types each annotation accepts (a float setting takes an integer too; true/false is no number)
_KINDS: dict[str, tuple[tuple[type, ...], str]] = {"int": ((int,), "an integer"), "float": ((int, float), "a number"),
                                                   "str": ((str,), "a string"), "bool": ((bool,), "true or false")}


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
    attention_score: str = "additive"
    dropout: float = 0.0
    batch_norm: bool = True
    fine_tune: bool = False
    max_len: int = 20
    seed: int = 0
    output_stride: int = 32
    trained_on: str = ""  # the training data (a COCO file's info.description, else its path): see SYNTHETIC

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {self.decoder!r}; choose one of {', '.join(DECODERS)}")
        if self.attention_score not in ATTENTION_SCORES:
            raise ValueError(f"unknown attention score {self.attention_score!r}; choose one of "
                             f"{', '.join(ATTENTION_SCORES)}")
        if self.grid < 1 or self.max_len < 1:
            raise ValueError(f"grid and max_len must be >= 1, got {self.grid} and {self.max_len}")

    def synthetic_warning(self) -> str | None:
        """What to tell a user who captions photos with a model that only ever saw the synthetic shapes."""
        if SYNTHETIC not in self.trained_on:
            return None
        return ("this model was trained on captioner's synthetic shapes: it describes coloured shapes, not photos "
                "(no pretrained photo model ships; train one: README, 'Real photos')")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        if not isinstance(data, dict):
            raise ValueError(f"{source}: not a model config (needs a JSON object of settings)")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{source}: unknown model settings {sorted(unknown)}")
        if "vocab_size" not in data:
            raise ValueError(f"{source}: missing 'vocab_size'")
        for f in fields(cls):
            types, kind = _KINDS[str(f.type)]
            value = data.get(f.name, f.default)
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise ValueError(f"{source}: {f.name!r} must be {kind}, got {value!r}; fix the file or re-save "
                                 f"the model")
        try:
            return cls(**data)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
