"""A captioner's architecture and preprocessing settings (config.json); no torch, so the ONNX runner reads it too."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from captioner.data.vocab import Vocabulary
from captioner.models.families import describe, family
from captioner.settings import setting

# each >= 1: a zero or negative one would fail deep in torch, far from the config.json that holds it
SIZES = ("vocab_size", "image_size", "grid", "embed_size", "hidden_size", "num_layers", "attention_size",
         "context_size", "max_len", "output_stride")
ATTENTION_SCORES = ("additive", "dot")  # attention.py's score functions (models saved before "dot" are additive)
SYNTHETIC = "captioner synthetic shapes"  # data/synth.py's description: a model trained on it knows shapes, not photos
# JSON types each annotation accepts (a float setting takes an integer too; true/false is no number)
_KINDS: dict[str, tuple[tuple[type, ...], str]] = {"int": ((int,), "an integer"), "float": ((int, float), "a number"),
                                                   "str": ((str,), "a string"), "bool": ((bool,), "true or false")}


@dataclass
class ModelConfig:
    """Architecture and preprocessing of a captioner; saved as config.json. The defaults are the real-photo recipe's
    (Flickr8k dev figures: README, "Real photos"); recipe.PRESETS and recipe.FAMILY change them."""

    vocab_size: int
    decoder: str = setting("attention", f"Decoder family: {describe()}")
    # Lite2 at 260 px over Lite0 at 224 (Flickr8k dev, beam 3): BLEU-4 16.3 -> 16.9, METEOR 16.7 -> 17.4,
    # CIDEr 34.9 -> 36.6, distinct 40 -> 45%, for 2.2x the encoding time (greedy unchanged: CIDEr 33.1 / 32.7)
    backbone: str = setting("efficientnet_lite2", "efficientnet_lite0/1/2 (ImageNet weights ship with the package: "
                            "offline), resnet18/34/50/101/152, resnext50_32x4d, wide_resnet50_2, or timm:NAME (any "
                            "timm model: CLIP, SigLIP, DINOv2 ViTs, ConvNeXt; docs/encoders.md)")
    encoder_weights: str = setting("imagenet", "imagenet (resnets: file in $TORCH_HOME/hub/checkpoints; timm: the "
                                   "tag's pretrained weights), none (seeded random), hub (timm: Hugging Face, the "
                                   "local cache first) or FILE (timm: a .safetensors of the model's weights)")
    image_size: int = setting(260, "Encoder input side in pixels (a timm: model's own unless given)")
    grid: int = setting(7, "Feature grid side G: the last feature map average-pooled to G x G cells (7 at 224 px is "
                        "the map itself)")
    embed_size: int = setting(256)
    hidden_size: int = setting(512)
    num_layers: int = setting(1, "LSTM layers (show-tell)")
    attention_size: int = setting(256, "Attention MLP width (attention)")
    context_size: int = setting(256, "Width the grid is projected to (attention)")
    attention_score: str = setting("additive", "additive (Bahdanau) or dot (Luong's general score over the values: "
                                   "~1.6x faster training steps; attention)")
    dropout: float = setting(0.5, "Dropout on the LSTM's output (and between its layers)")
    batch_norm: bool = setting(True, "BatchNorm after the image embedding (show-tell)")
    fine_tune: bool = setting(False, "Train the encoder's last stage (no feature cache)")
    max_len: int = setting(20, "Longest caption generated, in tokens", min=1)
    seed: int = 0
    output_stride: int = setting(32, "32 (standard), 16 or 8 (dilated last stages: denser features, slower; "
                                 "resnet50+)")
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
