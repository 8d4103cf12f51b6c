"""Pictures a user looks at: training curves from metrics.csv and image grids with captions underneath; Chinese
captions are drawn with a CJK font found by matplotlib's font manager."""
from __future__ import annotations

import math
import re
import textwrap
import warnings
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from PIL import Image  # noqa: E402

from captioner.data.images import load_rgb  # noqa: E402
from captioner.io import atomic_write, read_csv  # noqa: E402

if TYPE_CHECKING:
    from captioner.search.hypotheses import Caption


# fonts with Chinese glyphs, by family name (Debian's fonts-noto-cjk, fonts-wqy-*, macOS, Windows)
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
                "WenQuanYi Micro Hei", "Droid Sans Fallback", "PingFang SC", "Microsoft YaHei", "SimHei",
                "Arial Unicode MS")
_CJK_FILE = re.compile(r"cjk|wqy|droidsansfallback|sourcehan|simhei|msyh|pingfang", re.IGNORECASE)
FONT_SIZE = 8.5  # caption text under a grid's photos, in points
LINE = FONT_SIZE * 1.2 / 72 * 1.15  # inches a line of it takes (matplotlib's line spacing is 1.2), with a margin
PHOTO, PAD = 3.2, 0.15  # inches: a grid photo's height, the space above and below its caption
_WIDE = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef]")  # CJK characters and full-width forms


@cache
def cjk_font() -> str | None:
    """A font family with Chinese glyphs known to matplotlib; fonts installed after its font list was cached are
    added from the system's font files. None, with a warning, when there is none."""
    def known() -> str | None:
        names = {f.name for f in font_manager.fontManager.ttflist}
        return next((n for n in CJK_FAMILIES if n in names), None)

    if (found := known()) is None:
        for path in font_manager.findSystemFonts():
            if _CJK_FILE.search(Path(path).name):
                font_manager.fontManager.addfont(path)
        found = known()
    if found is None:
        warnings.warn("no CJK font found (e.g. apt-get install fonts-noto-cjk): Chinese characters are drawn as "
                      "empty boxes", stacklevel=3)
    return found


def _fonts(texts: Iterable[str]) -> AbstractContextManager:
    """The CJK font as the fallback of the default one when some text holds Chinese characters."""
    if not any(_WIDE.search(t) for t in texts) or (family := cjk_font()) is None:
        return nullcontext()
    return plt.rc_context({"font.family": [*plt.rcParams["font.family"], family]})  # matplotlib falls back per glyph


def _wrap(text: str, width: int) -> str:
    """Lines of at most ``width`` columns; a CJK character takes two (lines break between them, as Chinese does)."""
    return textwrap.fill(text, width // 2 if _WIDE.search(text) else width)


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
    """Images in a grid, each with its caption(s) underneath (several lines: e.g. model vs reference); each row of
    photos has a band of its own below it, as tall as its longest wrapped caption, so text never runs into the next
    row."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if not images:
        raise ValueError("no images to draw")
    cols = min(cols, len(images))
    rows = math.ceil(len(images) / cols)
    texts = ["\n".join(_wrap(line, 40) for line in ([c] if isinstance(c, str) else c)) for c in captions]
    bands = [max(t.count("\n") + 1 for t in texts[r * cols:(r + 1) * cols]) * LINE + PAD for r in range(rows)]
    top = 0.45 if title else 0.05  # inches above the first row (the title's)
    height = rows * PHOTO + sum(bands) + top
    with _fonts(texts):
        fig = plt.figure(figsize=(3.4 * cols, height))
        grid = fig.add_gridspec(2 * rows, cols, height_ratios=[h for band in bands for h in (PHOTO, band)],
                                left=0.01, right=0.99, bottom=0.01, top=1 - top / height, hspace=0, wspace=0.05)
        for i, (path, text) in enumerate(zip(images, texts, strict=True)):
            row, col = divmod(i, cols)
            photo, under = fig.add_subplot(grid[2 * row, col]), fig.add_subplot(grid[2 * row + 1, col])
            photo.imshow(load_rgb(path))
            photo.axis("off")
            under.axis("off")
            under.text(0.5, 1 - PAD / 2 / bands[row], text, transform=under.transAxes, ha="center", va="top",
                       fontsize=FONT_SIZE)
        if title:
            fig.suptitle(title, y=1 - 0.1 / height, va="top")
        return _save(fig, out)


def attention_maps(images: Sequence[Image.Image], captions: Sequence[Caption], out: str | Path,
                   side: int = 224) -> Path:
    """One row per image, one panel per word: the word's G x G attention, upsampled, over the centre crop."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import ImageOps

    cols = max(len(c.attention) for c in captions) + 1
    with _fonts(c.text for c in captions):
        fig, axes = plt.subplots(len(images), cols, figsize=(1.9 * cols, 2.1 * len(images)), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for row, image, caption in zip(axes, images, captions, strict=True):
            crop = np.asarray(ImageOps.fit(image.convert("RGB"), (side, side)))  # the region the model saw
            row[0].imshow(crop)
            row[0].set_title(_wrap(caption.text, 24), fontsize=7)
            words = [*(caption.words or caption.text.split()), "<end>"]
            maps = F.interpolate(torch.as_tensor(caption.attention)[:, None].float(), size=(side, side),
                                 mode="bilinear")[:, 0]
            for ax, word, m in zip(row[1:], words, maps, strict=False):
                ax.imshow(crop)
                ax.imshow(m.numpy(), cmap="jet", alpha=0.5, extent=(0, side, side, 0))
                ax.set_title(word, fontsize=9)
        fig.tight_layout()
        return _save(fig, out)
