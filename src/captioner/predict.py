"""Caption a split with a trained model (from the feature cache when its encoder is frozen) and score it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from captioner.data.datasets import ImageRecord
from captioner.features import ImageViews, encode_images
from captioner.models.captioner import Captioner


def image_embeddings(model: Captioner, records: list[ImageRecord], cache_dir: str | Path | None = None,
                     batch_size: int = 32, progress: bool = True) -> tuple[torch.Tensor, np.ndarray]:
    """Image embeddings [n, E] of the records and an ok mask; frozen encoders go through the feature cache."""
    c, device = model.config, next(model.parameters()).device
    if not c.fine_tune:
        feats, ok = encode_images([r.path for r in records], c.backbone, c.encoder_weights, c.seed, c.image_size,
                                  1, cache_dir, batch_size, device=device, progress=progress,
                                  output_stride=c.output_stride, encoder=model.encoder)
        pooled = torch.from_numpy(np.asarray(feats[:, 0], dtype=np.float32)).to(device)
        with torch.inference_mode():
            return model.encoder(pooled), ok
    loader = DataLoader(ImageViews([r.path for r in records], c.image_size), batch_size=batch_size)
    out, ok = [], []
    for images, good in tqdm(loader, desc="encoding images", disable=not progress):
        with torch.inference_mode():
            out.append(model.encoder(images[:, 0].to(device)))
        ok.append(good.numpy())
    return torch.cat(out), np.concatenate(ok)


def caption_embeddings(model: Captioner, embeddings: torch.Tensor, beam: int = 1, batch_size: int = 64,
                       progress: bool = True) -> list[str]:
    """Best caption for each image embedding, decoded in batches with a progress bar."""
    captions: list[str] = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(embeddings), batch_size), desc=f"decoding (beam {beam})", disable=not progress):
            captions += [hyps[0][0] for hyps in model.generate(embeddings[start:start + batch_size], beam)]
    return captions
