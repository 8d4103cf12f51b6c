"""Flickr-style readers: token files with the archive's split lists, captions.txt CSV, format detection."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from captioner.cli import app
from captioner.data.datasets import has_splits, open_split
from captioner.data.flickr import read_flickr
from captioner.training.config import TrainConfig
from captioner.training.run import load_records


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


def _csv_with_open_quote(folder: Path) -> Path:
    """A 400-row captions.txt over 5 images whose row on line 22 opens a quote it never closes."""
    names = [f"im{i}.png" for i in range(5)]
    _images(folder / "Images", names)
    rows = [f"{names[i % 5]},a dog number {i} runs on the grass ." for i in range(400)]
    rows[20] = f'{names[0]},"a dog that opens a quote and never closes it'
    (folder / "captions.txt").write_text("image,caption\n" + "\n".join(rows) + "\n")
    return folder / "captions.txt"


def test_a_csv_caption_with_an_unclosed_quote_is_an_error_naming_its_line(tmp_path: Path) -> None:
    """Before, the quote swallowed the other 379 rows into one 32 kB caption and the file read as 21 captions."""
    with pytest.raises(ValueError, match=r"captions.txt:22: this row's caption runs over lines 22-401 \(an unclosed "
                                         r"quote\?\)"):
        open_split(_csv_with_open_quote(tmp_path), "train")


def test_inspect_names_the_line_of_an_unclosed_csv_quote(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["inspect", "--data", str(_csv_with_open_quote(tmp_path))])
    assert result.exit_code == 2 and "captions.txt:22:" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("caption", ["word " * 101, "a" * 1001])
def test_a_csv_caption_past_the_bounds_is_an_error_naming_its_line(tmp_path: Path, caption: str) -> None:
    _images(tmp_path / "Images", ["a.png"])
    (tmp_path / "captions.txt").write_text(f"image,caption\na.png,a cat .\na.png,{caption}\na.png,a cat .\n")
    with pytest.raises(ValueError, match=r"captions.txt:3: a caption of \d+ words, \d+ characters \(at most 100 "
                                         r"words, 1000 characters\)"):
        open_split(tmp_path / "captions.txt", "train")


def test_a_latin1_caption_file_is_an_error_naming_the_file_line_and_encoding(flickr: Path) -> None:
    flickr.write_bytes(flickr.read_bytes() + "0_abc.jpg#5\tun caf\u00e9 pr\u00e8s du lac\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"Flickr8k.token.txt:31: not UTF-8 text \(byte 0xe9 at column 19; the file "
                                         r"looks like Latin-1 / Windows-1252\): save it as UTF-8"):
        open_split(flickr, "train")


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be"])
def test_caption_files_with_a_byte_order_mark_read_as_text(flickr: Path, encoding: str) -> None:
    """UTF-16 was an 'unknown annotation format' and UTF-8's BOM stuck to the first file name."""
    text = flickr.read_text().replace("caption 0 of 0_abc.jpg", "un caf\u00e9 \u4e00")
    flickr.write_bytes(("\ufeff" + text if encoding == "utf-16-be" else text).encode(encoding))
    train, _ = open_split(flickr, "train")
    assert [r.path.name for r in train] == ["0_abc.jpg", "1_abc.jpg", "2_abc.jpg"]
    assert train[0].captions[0] == "un caf\u00e9 \u4e00 ."
    csv_file = flickr.parent / "captions.csv"
    csv_text = "\ufeffimage,caption\n0_abc.jpg,\"un caf\u00e9, \u4e00\"\n"
    csv_file.write_bytes(csv_text.encode(encoding.replace("-sig", "")))
    records, _ = read_flickr(csv_file, flickr.parent / "Flicker8k_Dataset")
    assert [(r.path.name, r.captions) for r in records] == [("0_abc.jpg", ("un caf\u00e9, \u4e00",))]


def test_a_dev_list_whose_images_lack_captions_stops_training_instead_of_holding_out(flickr: Path) -> None:
    (flickr.parent / "Flickr_8k.devImages.txt").write_text("9_abc.jpg\n8_abc.jpg\n")
    with pytest.raises(ValueError, match=r"\*devImages.txt names 2 images, none with captions in Flickr8k.token.txt"):
        open_split(flickr, "val")
    with pytest.raises(ValueError, match=r"no 'val' images to read"):
        load_records(TrainConfig(data=str(flickr)))
    result = CliRunner().invoke(app, ["inspect", "--data", str(flickr)])  # the other splits still read
    assert result.exit_code == 0 and "val: none (" in result.output and "train: 3 images" in result.output
    (flickr.parent / "Flickr_8k.devImages.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"\*devImages.txt is empty: no 'val' images to read"):
        load_records(TrainConfig(data=str(flickr)))
