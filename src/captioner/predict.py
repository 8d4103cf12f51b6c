"""Caption a list of records with a trained model: grid features from the feature cache (frozen encoder) or from
the images (fine-tuned encoder), then batched search with a progress bar; or caption image files, a chunk at a time."""
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
from captioner.data.datasets import ImageRecord
from captioner.features import ImageViews, encode_images
from captioner.hypotheses import Caption
from captioner.inference import Captioner
from captioner.precision import autocast
from captioner.search import DEFAULT, Search

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
        x = torch.from_numpy(np.asarray(features[rows[start:start + batch_size]], dtype=np.float32)).to(device)
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
