"""The captioning model (encoder + a decoder family) and its portable artifact: model.safetensors + config.json +
vocab.json."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from captioner.data.vocab import Vocabulary
from captioner.io import atomic_write, read_json, write_json
from captioner.models.attention import ShowAttendTell
from captioner.models.config import ModelConfig
from captioner.models.decoder import ShowTell

ARTIFACT_FILES = ("model.safetensors", "config.json", "vocab.json")
class CaptionModel(nn.Module):
    """A frozen CNN encoder giving grid features and a decoder family reading them (Show-Tell or attention)."""

    def __init__(self, config: ModelConfig, load_weights: bool = True) -> None:
        super().__init__()
        from captioner.models.encoder import Encoder  # torchvision import kept off the light paths

        self.config = c = config
        self.encoder = Encoder(c.backbone, c.encoder_weights if load_weights else "none", c.grid, c.fine_tune,
                               c.seed, c.output_stride)
        if c.decoder == "attention":
            self.decoder: nn.Module = ShowAttendTell(c.vocab_size, self.encoder.feature_size, c.embed_size,
                                                     c.hidden_size, c.attention_size, c.context_size, c.dropout,
                                                     cells=c.grid * c.grid, score=c.attention_score)
        else:
            self.decoder = ShowTell(c.vocab_size, self.encoder.feature_size, c.embed_size, c.hidden_size,
                                    c.num_layers, c.dropout, c.batch_norm)

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Grid features [B, N, C] of images [B, 3, H, W], or cached grid features passed through."""
        return inputs if inputs.dim() == 3 else self.encoder(inputs)

    def forward(self, inputs: torch.Tensor, captions: torch.Tensor,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing: the output layer's inputs [B, T-1, H] (see ``caption_loss``) and attention [B, T-1, N]
        (None for Show-Tell)."""
        return self.decoder(self.features(inputs), captions, lengths)


def save_artifact(model: CaptionModel, vocab: Vocabulary, folder: str | Path) -> Path:
    """Write the artifact folder (atomically per file); copy the folder anywhere and ``captioner.load`` it."""
    folder = Path(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    write_json(folder / "config.json", asdict(model.config))
    vocab.save(folder / "vocab.json")
    return folder


def read_artifact(folder: str | Path) -> tuple[ModelConfig, Vocabulary, dict[str, torch.Tensor]]:
    """Config, vocabulary and weights of an artifact folder (no pickle); errors name the missing or wrong file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder} (give a run folder written by `captioner train`)")
    missing = [f for f in ARTIFACT_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"model folder {folder} lacks {', '.join(missing)} "
                                f"(it needs {', '.join(ARTIFACT_FILES)})")
    config = ModelConfig.from_dict(read_json(folder / "config.json", "model config"), str(folder / "config.json"))
    vocab = Vocabulary.load(folder / "vocab.json")
    if len(vocab) != config.vocab_size:
        raise ValueError(f"{folder / 'vocab.json'} has {len(vocab)} words but {folder / 'config.json'} says "
                         f"vocab_size {config.vocab_size}: the vocabulary does not belong to this model")
    try:
        state = load_file(str(folder / "model.safetensors"))
    except SafetensorError as e:
        raise ValueError(f"{folder / 'model.safetensors'} is not a readable safetensors file ({e}): copy it again "
                         f"from the run folder (truncated?) or re-export the model") from None
    return config, vocab, state


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights that must match the model exactly; the error names ``source`` and the first difference."""
    expected = model.state_dict()
    wrong = [k for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if wrong or state.keys() != expected.keys():
        detail = (f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, config gives "
                  f"{tuple(expected[wrong[0]].shape)}" if wrong else
                  f"tensors differ: missing {sorted(expected.keys() - state.keys())[:3]}, "
                  f"unexpected {sorted(state.keys() - expected.keys())[:3]} (a model saved by an earlier captioner "
                  f"whose decoder had other layers: retrain it with this version)")
        raise ValueError(f"{source} does not match its config.json / vocab.json: {detail}")
    model.load_state_dict(state)
