"""The user-facing model: load an artifact, preprocess images, encode, search, and return text (+ attention); and
captioning in bulk: a list of records (grid features from the feature cache, or from the images with a fine-tuned
encoder) in batches with a progress bar, or image files a chunk at a time."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from captioner.data import rgb
from captioner.data.captions import float_tensor
from captioner.data.datasets import ImageRecord
from captioner.data.images import eval_transform, to_rgb
from captioner.data.vocab import Vocabulary
from captioner.features import ImageViews, encode_images
from captioner.models.captioner import CaptionModel, ModelConfig, load_state, read_artifact, save_artifact
from captioner.models.ensemble import Ensemble
from captioner.precision import autocast, resolve
from captioner.search import DEFAULT, Search, decode
from captioner.search.hypotheses import Caption, captions


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


CHUNK = 8  # images decoded and captioned together by caption_files: its peak memory, whatever the number of files


def record_features(model: Captioner, records: list[ImageRecord], cache_dir: str | Path | None = None,
                    batch_size: int = 32, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Grid features [n, N, C] of the records (a memmap when cached, never loaded whole) and an ok mask [n]."""
    c, device = model.config, next(model.parameters()).device
    paths = [r.path for r in records]
    if not c.fine_tune:
        feats, ok = encode_images(paths, c.backbone, c.encoder_weights, c.seed, c.image_size, 1, cache_dir,
                                  batch_size, device=device, progress=progress, output_stride=c.output_stride,
                                  grid=c.grid, encoder=model.encoder, precision=model.precision)
        return feats[:, 0], ok
    spec = model.encoder.spec
    loader = DataLoader(ImageViews(paths, c.image_size, 1, spec.mean, spec.std), batch_size=batch_size)
    out, ok = [], []
    for images, good in tqdm(loader, desc="encoding images", disable=not progress):
        with torch.inference_mode(), autocast(model.precision, device):
            out.append(model.encoder(images[:, 0].to(device)).float().cpu().numpy())
        ok.append(good.numpy())
    return np.concatenate(out), np.concatenate(ok)


def caption_features(model: Captioner, features: np.ndarray, rows: np.ndarray | None = None,
                     search: Search = DEFAULT, batch_size: int = 64, progress: bool = True) -> list[Caption]:
    """Best caption of each of ``rows`` (default all) of ``features``, decoded in batches read from disk."""
    rows = np.arange(len(features)) if rows is None else rows
    device = next(model.parameters()).device
    captions: list[Caption] = []
    for start in tqdm(range(0, len(rows), batch_size), desc=f"decoding (beam {search.beam})", disable=not progress):
        x = float_tensor(features[rows[start:start + batch_size]]).to(device)
        captions += [row[0] for row in model.generate(x, search)]
    return captions


def caption_files(model: Any, paths: Sequence[Path], search: Search = DEFAULT, chunk: int = CHUNK,
                  word_scores: bool = False) -> Iterator[tuple[Path, Image.Image | None, list[Caption] | OSError]]:
    """Per file, in order: its decoded image and its captions (best first; ``word_scores``: model.caption's), or
    the OSError that skipped it. Files are decoded and captioned ``chunk`` at a time, so memory does not grow with
    their number (an image is used only until the next chunk is read: keep what you need of it)."""
    for start in range(0, len(paths), chunk):
        loaded: list[tuple[Path, Image.Image | OSError]] = []
        for path in paths[start:start + chunk]:
            try:
                if path.is_dir():
                    raise OSError(f"{path}: a folder without image files (.jpg, .png, .webp, ... as Pillow reads)")
                loaded.append((path, rgb.load_rgb(path)))
            except OSError as e:
                loaded.append((path, e))
        images = [im for _, im in loaded if isinstance(im, Image.Image)]
        captions = iter(model.caption(images, search, word_scores=word_scores) if images else [])
        for path, im in loaded:
            yield (path, None, im) if isinstance(im, OSError) else (path, im, next(captions))
        del loaded, images  # this chunk's images go before the next chunk is decoded
