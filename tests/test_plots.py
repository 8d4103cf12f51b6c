"""Caption grids: every caption sits in its own band under its photo, clear of the photos and captions around it."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from PIL import Image

from captioner import plots

WORDS = "a brown dog with a red collar runs across the wet green grass towards a small boy in a blue jacket".split()


def _photos(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    paths = []
    for i, size in enumerate(sizes):
        paths.append(folder / f"{i}.png")
        Image.new("RGB", size, (20 * i, 120, 200 - 15 * i)).save(paths[-1])
    return paths


SQUARE = [(224, 224)] * 12  # as the shared Flickr8k photos
MIXED = [(500, 375), (375, 500), (500, 333), (333, 500), (500, 500), (500, 281)] * 2


def _boxes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """The photos' and the captions' boxes on the canvas, taken as the grid is saved."""
    found: dict[str, list] = {}
    save = plots._save

    def measure(fig, path):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        found["photos"] = [image.get_window_extent(renderer) for ax in fig.axes for image in ax.images]
        found["texts"] = [text.get_window_extent(renderer) for ax in fig.axes for text in ax.texts if text.get_text()]
        found["figure"] = fig.bbox
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", measure)
    return found


@pytest.mark.parametrize("sizes", [SQUARE, MIXED], ids=["square", "mixed"])
@pytest.mark.parametrize("words", [6, 16, 20])
def test_captions_never_overlap_the_photos_or_each_other(tmp_path: Path, monkeypatch, sizes, words: int) -> None:
    """Before, the first row's longer captions (model + reference, 5 lines) ran over the square photos below."""
    boxes = _boxes(monkeypatch)
    captions = [(f"model: {' '.join(WORDS[:words if i < 4 else 6])} .",
                 f"ref: {' '.join(WORDS[i:i + (words if i < 4 else 8)])} .") for i in range(12)]
    out = plots.caption_grid(_photos(tmp_path, sizes), captions, tmp_path / "grid.png", cols=4, title="a grid")
    assert out.stat().st_size > 1000
    photos, texts = boxes["photos"], boxes["texts"]
    assert len(photos) == 12 and len(texts) == 12
    for text, photo in itertools.product(texts, photos):
        assert not text.overlaps(photo), (text, photo)
    for a, b in itertools.combinations(texts, 2):
        assert not a.overlaps(b), (a, b)
    for text in texts:  # and none is cut by the figure's edge
        assert boxes["figure"].y0 <= text.y0 and text.y1 <= boxes["figure"].y1


def test_a_grid_checks_its_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        plots.caption_grid(_photos(tmp_path, SQUARE[:2]), ["one"], tmp_path / "g.png")
    with pytest.raises(ValueError, match="no images"):
        plots.caption_grid([], [], tmp_path / "g.png")
