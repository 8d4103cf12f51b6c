"""Pictures a user looks at: training curves from metrics.csv and image grids with captions underneath."""
from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from captioner.data.images import load_rgb  # noqa: E402
from captioner.io import atomic_write, read_csv  # noqa: E402

if TYPE_CHECKING:
    from captioner.inference import Caption


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def loss_plot(metrics_csv: str | Path, out: str | Path) -> Path:
    """Loss, perplexity, learning rate and validation scores per epoch, one panel each."""
    rows = read_csv(metrics_csv)
    if not rows:
        raise ValueError(f"{metrics_csv} has no epochs to plot")
    epochs = [int(r["epoch"]) for r in rows]

    def column(name: str) -> list[float]:
        return [float(r[name]) if r.get(name) not in (None, "") else math.nan for r in rows]

    panels = [("loss", ["train_loss", "val_loss"]), ("perplexity", ["train_ppl", "val_ppl"]),
              ("learning rate", ["lr"]), ("val score (0-100)", ["val_bleu4", "val_cider"])]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for ax, (title, names) in zip(axes, panels, strict=True):
        for name in names:
            if name in rows[0]:
                ax.plot(epochs, column(name), marker="o", ms=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[2].set_yscale("log")
    return _save(fig, out)


def caption_grid(images: Sequence[str | Path], captions: Sequence[str | Sequence[str]], out: str | Path,
                 cols: int = 4, title: str | None = None) -> Path:
    """Images in a grid, each with its caption(s) underneath (several lines: e.g. model vs reference)."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if not images:
        raise ValueError("no images to draw")
    cols = min(cols, len(images))
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 4.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, caption in zip(axes.flat, images, captions, strict=False):
        ax.imshow(load_rgb(path))
        lines = [caption] if isinstance(caption, str) else list(caption)
        text = "\n".join(textwrap.fill(line, 40) for line in lines)
        ax.text(0.5, -0.03, text, transform=ax.transAxes, ha="center", va="top", fontsize=8.5, wrap=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out)


def attention_maps(images: Sequence[Image.Image], captions: Sequence[Caption], out: str | Path,
                   side: int = 224) -> Path:
    """One row per image, one panel per word: the word's G x G attention, upsampled, over the centre crop."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import ImageOps

    cols = max(len(c.attention) for c in captions) + 1
    fig, axes = plt.subplots(len(images), cols, figsize=(1.9 * cols, 2.1 * len(images)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, image, caption in zip(axes, images, captions, strict=True):
        crop = np.asarray(ImageOps.fit(image.convert("RGB"), (side, side)))  # the region the model saw
        row[0].imshow(crop)
        row[0].set_title("\n".join(textwrap.wrap(caption.text, 24)), fontsize=7)
        words = caption.text.split() + ["<end>"]
        maps = F.interpolate(torch.as_tensor(caption.attention)[:, None].float(), size=(side, side),
                             mode="bilinear")[:, 0]
        for ax, word, m in zip(row[1:], words, maps, strict=False):
            ax.imshow(crop)
            ax.imshow(m.numpy(), cmap="jet", alpha=0.5, extent=(0, side, side, 0))
            ax.set_title(word, fontsize=9)
    fig.tight_layout()
    return _save(fig, out)
