"""The captioning model (encoder + decoder) and its portable artifact: model.safetensors + config.json + vocab.json."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from captioner.data.images import eval_transform, to_rgb
from captioner.data.vocab import Vocabulary
from captioner.decode import beam_search, greedy
from captioner.io import atomic_write, read_json, write_json
from captioner.models.decoder import Decoder

ARTIFACT_FILES = ("model.safetensors", "config.json", "vocab.json")


@dataclass
class ModelConfig:
    """Architecture and preprocessing of a captioner; saved as config.json."""

    vocab_size: int
    backbone: str = "resnet50"
    encoder_weights: str = "imagenet"
    image_size: int = 224
    embed_size: int = 256
    hidden_size: int = 512
    num_layers: int = 1
    dropout: float = 0.0
    batch_norm: bool = True
    fine_tune: bool = False
    max_len: int = 20
    seed: int = 0
    output_stride: int = 32

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{source}: unknown model settings {sorted(unknown)}")
        if "vocab_size" not in data:
            raise ValueError(f"{source}: missing 'vocab_size'")
        return cls(**data)


class Captioner(nn.Module):
    """Show-and-Tell captioner: CNN encoder -> image embedding -> LSTM decoder."""

    def __init__(self, config: ModelConfig, vocab: Vocabulary, load_weights: bool = True) -> None:
        super().__init__()
        from captioner.models.encoder import Encoder  # torchvision import kept off the light paths

        if len(vocab) != config.vocab_size:
            raise ValueError(f"vocabulary has {len(vocab)} words but the model expects {config.vocab_size}")
        self.config, self.vocab = config, vocab
        weights = config.encoder_weights if load_weights else "none"
        self.encoder = Encoder(config.backbone, weights, config.embed_size, config.batch_norm,
                               config.fine_tune, config.seed, config.output_stride)
        self.decoder = Decoder(config.vocab_size, config.embed_size, config.hidden_size, config.num_layers,
                               config.dropout)

    def forward(self, images: torch.Tensor, captions: torch.Tensor,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(self.encoder(images), captions, lengths)

    def generate(self, image: torch.Tensor, beam: int = 1,
                 length_penalty: float = 0.0) -> list[list[tuple[str, float]]]:
        """Captions of image embeddings [B, E]: per image a best-first list of (text, log-probability)."""
        if beam == 1:
            hyps = [[h] for h in greedy(self.decoder, image, self.config.max_len)]
        else:
            hyps = beam_search(self.decoder, image, beam, self.config.max_len, length_penalty)
        return [[(self.vocab.decode(ids), score) for ids, score in row] for row in hyps]

    @torch.inference_mode()
    def caption(self, images: Sequence[Image.Image], beam: int = 1,
                batch_size: int = 32) -> list[list[tuple[str, float]]]:
        """Caption PIL images with the eval preprocessing (resize, centre crop, normalise)."""
        self.eval()
        transform, device = eval_transform(self.config.image_size), next(self.parameters()).device
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(images), batch_size):
            x = torch.stack([transform(to_rgb(im)) for im in images[start:start + batch_size]]).to(device)
            out += self.generate(self.encoder(x), beam)
        return out

    def save(self, folder: str | Path) -> Path:
        """Write the artifact folder (atomically per file); copy the folder anywhere and ``load`` it."""
        folder = Path(folder)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(folder / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "pt"}))
        write_json(folder / "config.json", asdict(self.config))
        self.vocab.save(folder / "vocab.json")
        return folder


def load(folder: str | Path, device: str | torch.device | None = None) -> Captioner:
    """Rebuild a captioner from its artifact folder (no pickle); errors name the missing or mismatched file.

    ``device`` defaults to the GPU when there is one.
    """
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
    model = Captioner(config, vocab, load_weights=False)
    state = load_file(str(folder / "model.safetensors"))
    expected = model.state_dict()
    wrong = [k for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if wrong or state.keys() != expected.keys():
        detail = (f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, config gives "
                  f"{tuple(expected[wrong[0]].shape)}" if wrong else
                  f"tensors differ: missing {sorted(expected.keys() - state.keys())[:3]}, "
                  f"unexpected {sorted(state.keys() - expected.keys())[:3]}")
        raise ValueError(f"{folder / 'model.safetensors'} does not match {folder / 'config.json'} / vocab.json: "
                         f"{detail}")
    model.load_state_dict(state)
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
