"""The user-facing model: load an artifact, preprocess images, encode, search, and return text (+ attention)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from captioner import decode
from captioner.data.images import eval_transform, to_rgb
from captioner.data.vocab import Vocabulary
from captioner.hypotheses import Caption, captions
from captioner.models.captioner import CaptionModel, ModelConfig, load_state, read_artifact, save_artifact
from captioner.models.ensemble import Ensemble
from captioner.precision import autocast, resolve
from captioner.search import DEFAULT, Search


class Captioner(CaptionModel):
    """A trained captioner with its vocabulary: ``caption(images)`` gives text; ``save``/``load`` the artifact."""

    def __init__(self, config: ModelConfig, vocab: Vocabulary, load_weights: bool = True) -> None:
        if len(vocab) != config.vocab_size:
            raise ValueError(f"vocabulary has {len(vocab)} words but the model expects {config.vocab_size}")
        super().__init__(config, load_weights)
        self.vocab = vocab
        self.precision = "fp32"  # the encoder pass's on images: "bf16" autocasts it (load(precision=...))

    @torch.inference_mode()
    def generate(self, features: torch.Tensor, search: Search = DEFAULT,
                 word_scores: bool = False) -> list[list[Caption]]:
        """Captions of grid features [B, N, C] (or images): per image a best-first list, as ``search`` asks;
        ``word_scores``: with each caption's tokens and their log-probabilities."""
        with autocast(self.precision, features.device):
            features, g = self.features(features).float(), self.config.grid
        s = search.resolved(self.config.max_len)
        rows = decode.search(self.decoder, features, self.vocab, s)
        per_word = decode.word_log_probs(self.decoder, features, [[h.ids for h in row] for row in rows], s.max_len) \
            if word_scores else None
        return captions(self.vocab, rows, per_word, lambda maps: maps.view(-1, g, g).cpu())

    @torch.inference_mode()
    def caption(self, images: Sequence[Image.Image], search: Search = DEFAULT, batch_size: int = 32,
                word_scores: bool = False) -> list[list[Caption]]:
        """Caption PIL images with the eval preprocessing (resize, centre crop, normalise)."""
        self.eval()
        spec, device = self.encoder.spec, next(self.parameters()).device
        transform = eval_transform(self.config.image_size, spec.mean, spec.std)
        out: list[list[Caption]] = []
        for start in range(0, len(images), batch_size):
            x = torch.stack([transform(to_rgb(im)) for im in images[start:start + batch_size]]).to(device)
            out += self.generate(x, search, word_scores)
        return out

    def save(self, folder: str | Path) -> Path:
        """Write model.safetensors + config.json + vocab.json into ``folder``."""
        if isinstance(self.decoder, Ensemble):
            raise ValueError("an ensemble is not one model: save or export each of its models instead")
        return save_artifact(self, self.vocab, folder)


def load(folder: str | Path, device: str | torch.device | None = None, int8: bool = False,
         precision: str = "fp32") -> Captioner:
    """Rebuild a captioner of either family from its artifact folder; ``device`` defaults to the GPU if any.

    ``int8``: searches on the CPU with int8 copies of the decoder's weights (~3x faster steps; a near tie between
    two words may go the other way). ``precision`` (auto, fp32, bf16): the encoder pass on images; the search's
    steps, a few rows each, stay float32."""
    config, vocab, state = read_artifact(folder)
    model = Captioner(config, vocab, load_weights=False)
    load_state(model, state, str(Path(folder) / "model.safetensors"))
    device = torch.device(device or ("cpu" if int8 or not torch.cuda.is_available() else "cuda"))
    if int8 and device.type != "cpu":
        raise ValueError(f"int8 decoding runs on the CPU, not {device}: leave the device out or use --runtime torch")
    model.decoder.affines.int8 = int8
    model.precision = resolve(precision, device)
    return model.to(device).eval()


ENCODER = ("backbone", "encoder_weights", "image_size", "grid", "output_stride", "fine_tune")  # what makes features


def load_ensemble(folders: Sequence[str | Path], device: str | torch.device | None = None,
                  int8: bool = False, precision: str = "fp32") -> Captioner:
    """One captioner that searches with several models at once (models/ensemble.py: their log-probabilities
    averaged at every step), any mix of families; they must share the vocabulary and the frozen encoder, whose
    features are computed once. Attention maps are the first model's. One folder: that model."""
    models = [load(f, device, int8, precision) for f in folders]
    first, name = models[0], folders[0]
    for folder, m in zip(folders[1:], models[1:], strict=True):
        if m.vocab.itos != first.vocab.itos:
            differ = next((i for i, (a, b) in enumerate(zip(first.vocab.itos, m.vocab.itos, strict=False)) if a != b),
                          min(len(first.vocab), len(m.vocab)))
            raise ValueError(f"--model {name} and --model {folder} have different vocabularies ({len(first.vocab)} "
                             f"and {len(m.vocab)} words, first difference at id {differ}): an ensemble averages "
                             f"word by word, so its models must share one vocab.json (train them on the same data "
                             f"and --threshold)")
        keys = [k for k in ENCODER if getattr(m.config, k) != getattr(first.config, k)]
        if m.config.encoder_weights == "none" and m.config.seed != first.config.seed:
            keys.append("seed")
        if keys or m.config.fine_tune:
            what = ", ".join(f"{k} {getattr(first.config, k)!r} vs {getattr(m.config, k)!r}" for k in keys)
            raise ValueError(f"--model {name} and --model {folder} read different image features "
                             f"({what or 'fine-tuned encoders'}): an ensemble's models share one frozen encoder")
    if len(models) > 1:
        first.decoder = Ensemble([m.decoder for m in models]).eval()
    return first
