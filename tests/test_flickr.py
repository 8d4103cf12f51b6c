"""Flickr-style readers: token files with the archive's split lists, captions.txt CSV, format detection."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from captioner.data.datasets import has_splits, open_split


def _images(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (8, 6), (120, 40, 200)).save(folder / name)
    return folder


@pytest.fixture
def flickr(tmp_path: Path) -> Path:
    """Flickr8k's layout: token file, train/dev lists, Flicker8k_Dataset/ (one listed image missing on disk)."""
    names = [f"{i}_abc.jpg" for i in range(6)]
    _images(tmp_path / "Flicker8k_Dataset", names[:5])
    lines = [f"{n}#{k}\tcaption {k} of {n} ." for n in names for k in range(5)]
    (tmp_path / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("\n".join(names[:3]) + "\n")
    (tmp_path / "Flickr_8k.devImages.txt").write_text("\n".join(names[3:]))  # no final newline, as the archive
    return tmp_path / "Flickr8k.token.txt"


def test_token_file_splits_follow_the_lists_beside_it(flickr: Path) -> None:
    train, report = open_split(flickr, "train")
    val, val_report = open_split(flickr, "val")
    assert [r.path.name for r in train] == ["0_abc.jpg", "1_abc.jpg", "2_abc.jpg"]
    assert [r.path.name for r in val] == ["3_abc.jpg", "4_abc.jpg"]
    assert val_report.skipped == [("5_abc.jpg", "missing file")]
    assert train[1].captions == tuple(f"caption {k} of 1_abc.jpg ." for k in range(5))
    assert len({r.image_id for r in train + val}) == 5  # ids are unique across splits
    assert has_splits(flickr) and {r.split for r in val} == {"val"}


def test_a_split_without_its_list_is_named(flickr: Path) -> None:
    with pytest.raises(FileNotFoundError, match="testImages.txt"):
        open_split(flickr, "test")


def test_a_bad_token_line_is_an_error_naming_the_line(flickr: Path) -> None:
    flickr.write_text(flickr.read_text() + "0_abc.jpg a caption without its number\n")
    with pytest.raises(ValueError, match=r"Flickr8k.token.txt:31: not a Flickr token line"):
        open_split(flickr, "train")


def test_captions_csv_gets_a_seeded_split_said_in_the_report(tmp_path: Path) -> None:
    names = [f"im{i}.png" for i in range(30)]
    _images(tmp_path / "Images", names)
    rows = ["image,caption"] + [f'{n},"a dog, running"' for n in names] + [f"{n},a dog , on grass ." for n in names]
    (tmp_path / "captions.txt").write_text("\n".join(rows))
    splits = {s: open_split(tmp_path / "captions.txt", s) for s in ("train", "val", "test")}
    assert [len(splits[s][0]) for s in ("train", "val", "test")] == [24, 3, 3]
    assert "seeded split" in splits["train"][1].summary()
    assert splits["val"][0][0].captions == ("a dog, running", "a dog , on grass .")  # commas inside kept
    names_by_split = [{r.path.name for r in splits[s][0]} for s in splits]
    assert set.union(*names_by_split) == set(names) and sum(map(len, names_by_split)) == 30
    again = open_split(tmp_path / "captions.txt", "val")[0]
    assert [r.path for r in again] == [r.path for r in splits["val"][0]]  # seeded: the same split every time


def test_a_csv_row_without_a_caption_is_an_error_naming_the_line(tmp_path: Path) -> None:
    _images(tmp_path / "Images", ["a.png"])
    (tmp_path / "captions.txt").write_text("image,caption\na.png,a cat .\na.png\n")
    with pytest.raises(ValueError, match=r"captions.txt:3: expected 'image,caption'"):
        open_split(tmp_path / "captions.txt", "train")


def test_an_unknown_text_format_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello world\n")
    with pytest.raises(ValueError, match="unknown annotation format"):
        open_split(tmp_path / "notes.txt", "train")


@pytest.mark.parametrize("entry, field", [({"file_name": "a.png"}, "images\\[0\\]"), ("a.png", "images\\[0\\]")])
def test_coco_image_entries_without_id_are_clear_errors(tmp_path: Path, entry, field: str) -> None:
    _images(tmp_path / "pics", ["a.png"])
    ann = tmp_path / "c.json"
    ann.write_text(json.dumps({"images": [entry], "annotations": [{"image_id": 1, "caption": "x"}]}))
    with pytest.raises(ValueError, match=f"{field} must be an object with 'id'"):
        open_split(ann, "train", tmp_path / "pics")


def test_coco_annotations_without_id_are_read(tmp_path: Path) -> None:
    _images(tmp_path / "pics", ["a.png"])
    ann = tmp_path / "c.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}],
                               "annotations": [{"image_id": 1, "caption": "a cat"}, {"image_id": 1, "caption": "b"}]}))
    records, _ = open_split(ann, "train", tmp_path / "pics")
    assert records[0].captions == ("a cat", "b")


def test_shared_flickr8k_token_file(shared: Path) -> None:
    token = shared / "data" / "flickr8k" / "Flickr8k.token.txt"
    val, report = open_split(token, "val", check_images=False)
    train, _ = open_split(token, "train", check_images=False)
    assert (len(train), len(val)) == (6000, 1000) and report.skipped == []
    assert all(len(r.captions) == 5 for r in train + val)
    assert not {r.path for r in train} & {r.path for r in val}
    assert val[0].path.parent.name == "Flicker8k_Dataset" and val[0].path.is_file()
