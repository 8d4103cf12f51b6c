"""A captioner's architecture and preprocessing settings (config.json); no torch, so the ONNX runner reads it too."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from captioner.data.vocab import Vocabulary
from captioner.models.families import family

# each >= 1: a zero or negative one would fail deep in torch, far from the config.json that holds it
SIZES = ("vocab_size", "image_size", "grid", "embed_size", "hidden_size", "num_layers", "attention_size",
         "context_size", "max_len", "output_stride")
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
    vocab_sha256: str = ""  # the vocabulary's fingerprint (Vocabulary.sha256), written with the model; "": not checked

    def __post_init__(self) -> None:
        family(self.decoder)  # an unknown name lists the choices
        if self.attention_score not in ATTENTION_SCORES:
            raise ValueError(f"unknown attention score {self.attention_score!r}; choose one of "
                             f"{', '.join(ATTENTION_SCORES)}")
        for name in SIZES:
            if getattr(self, name) < 1:
                raise ValueError(f"{name!r} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"'dropout' must be in [0, 1), got {self.dropout}")

    def check_vocab(self, vocab: Vocabulary, config_file: str, vocab_file: str) -> None:
        """Stop when ``vocab`` is not the one this model was saved with: same size and, when recorded, the same words
        in the same order (another model's vocabulary of the same size gives wrong words silently)."""
        if len(vocab) != self.vocab_size:
            raise ValueError(f"{vocab_file} has {len(vocab)} words but {config_file} says vocab_size "
                             f"{self.vocab_size}: the vocabulary does not belong to this model")
        if self.vocab_sha256 and vocab.sha256() != self.vocab_sha256:
            raise ValueError(f"{vocab_file} is not the vocabulary of {config_file} (its words' sha256 "
                             f"{vocab.sha256()[:12]}... differs from the recorded {self.vocab_sha256[:12]}...): copy "
                             f"the model folder's own vocab.json back beside it")

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
