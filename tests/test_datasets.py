"""Data set readers: COCO annotation files, COCO folder layouts and Karpathy split files, with skip reports."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from captioner.data.datasets import find_annotation, open_split, read_coco, read_karpathy


def _image(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path)
    return path


def _coco(images: list[dict], captions: dict[int, list[str]]) -> dict:
    annotations = [{"id": 100 * image_id + k, "image_id": image_id, "caption": c}
                   for image_id, caps in captions.items() for k, c in enumerate(caps)]
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations}


def _write(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def coco(tmp_path: Path) -> tuple[Path, Path]:
    """A COCO file over 6 images (2 usable, 1 file missing, 2 without non-empty captions, 1 not an image) and a
    folder that also holds an image the file never mentions."""
    images = tmp_path / "pics"
    _image(images / "7.jpg")
    (images / "README.txt").write_text("not an image, not counted")
    _image(images / "1.png")
    _image(images / "3.png")
    (images / "4.jpg").write_text("this is not a JPEG")
    _image(images / "5.jpg")
    _image(images / "6.jpg", (10, 200, 10))
    files = [{"id": i, "file_name": f"{i}.{'png' if i in (1, 3) else 'jpg'}", "width": 8, "height": 6}
             for i in range(1, 7)]
    captions = {1: ["A red square.", "", "  a red box  "], 2: ["a missing photo"], 4: ["text, not pixels"],
                5: ["", "   "], 6: ["A green square."]}
    return _write(tmp_path / "captions.json", _coco(files, captions)), images


def test_read_coco_keeps_usable_images_and_reports_the_rest(coco: tuple[Path, Path]) -> None:
    ann, images = coco
    records, report = read_coco(ann, images, "val")
    assert [r.image_id for r in records] == [1, 6]
    assert records[0].captions == ("A red square.", "a red box")  # empty caption dropped, text stripped
    assert records[0].path == images / "1.png" and records[1].path == images / "6.jpg"
    assert {r.split for r in records} == {"val"}
    assert report.reasons() == {"no captions": 3, "missing file": 1, "unreadable image": 1}
    assert sorted(report.skipped) == [("2.jpg", "missing file"), ("3.png", "no captions"),
                                      ("4.jpg", "unreadable image"), ("5.jpg", "no captions"),
                                      ("7.jpg", "no captions")]
    summary = report.summary()
    assert summary.startswith(f"{ann}: skipped 3 no captions")
    for part in ("1 missing file (e.g. 2.jpg)", "1 unreadable image (e.g. 4.jpg)"):
        assert part in summary


def test_read_coco_without_image_checks_keeps_missing_and_unreadable_files(coco: tuple[Path, Path]) -> None:
    records, report = read_coco(*coco, check_images=False)
    assert [r.image_id for r in records] == [1, 2, 4, 6]
    assert report.reasons() == {"no captions": 2}


def test_nothing_skipped_summary(tmp_path: Path) -> None:
    _image(tmp_path / "im" / "a.jpg")
    ann = _write(tmp_path / "c.json", _coco([{"id": 7, "file_name": "a.jpg"}], {7: ["a photo"]}))
    records, report = read_coco(ann, tmp_path / "im")
    assert len(records) == 1 and not report.skipped
    assert report.summary() == f"{ann}: nothing skipped"


def test_open_split_on_a_coco_file_with_images(coco: tuple[Path, Path]) -> None:
    ann, images = coco
    records, report = open_split(ann, "test", images=images)
    assert [r.image_id for r in records] == [1, 6] and {r.split for r in records} == {"test"}
    assert sum(report.reasons().values()) == 5


def test_open_split_on_a_coco_file_without_images_asks_for_them(coco: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="--images"):
        open_split(coco[0], "train")


def test_open_split_on_a_coco_folder_layout(tmp_path: Path) -> None:
    for i in (1, 2):
        _image(tmp_path / "val2017" / f"{i:012d}.jpg")
    files = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in (1, 2)]
    _write(tmp_path / "annotations" / "captions_val2017.json", _coco(files, {1: ["one"], 2: ["two", "2"]}))
    _write(tmp_path / "annotations" / "captions_train2017.json", _coco([], {}))
    assert find_annotation(tmp_path, "val") == tmp_path / "annotations" / "captions_val2017.json"
    records, report = open_split(tmp_path, "val")
    assert [(r.image_id, r.path, r.captions) for r in records] == [
        (1, tmp_path / "val2017" / "000000000001.jpg", ("one",)),
        (2, tmp_path / "val2017" / "000000000002.jpg", ("two", "2"))]
    assert not report.skipped
    with pytest.raises(FileNotFoundError, match="image folder not found"):  # annotations but no train2017/
        open_split(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=r"no annotations/captions_test\*\.json"):
        open_split(tmp_path, "test")


def test_open_split_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data not found: .*nowhere"):
        open_split(tmp_path / "nowhere.json", "train")
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON"):
        open_split(bad, "train", images=tmp_path)
    other = _write(tmp_path / "other.json", {"categories": []})
    with pytest.raises(ValueError, match=r"other\.json: not a COCO caption file .*'images' and 'annotations'"):
        open_split(other, "train", images=tmp_path)
    no_name = _write(tmp_path / "noname.json", _coco([{"id": 3}], {3: ["x"]}))
    with pytest.raises(ValueError, match=r"images\[0\] must be an object with 'id' and 'file_name'"):
        open_split(no_name, "train", images=tmp_path)


def _karpathy_image(i: int, split: str, filepath: str | None = "val2014", cocoid: int | None = None) -> dict:
    entry = {"filename": f"im{i}.jpg", "imgid": i, "split": split,
             "sentences": [{"raw": f"Caption {k} of image {i}.", "tokens": ["caption"], "imgid": i, "sentid": k}
                           for k in range(2)], "sentids": [0, 1]}
    if filepath is not None:
        entry["filepath"] = filepath
    if cocoid is not None:
        entry["cocoid"] = cocoid
    return entry


@pytest.fixture
def karpathy(tmp_path: Path) -> Path:
    """A dataset_coco.json-style file: train, restval, val and test images, all files present."""
    entries = [_karpathy_image(0, "train", "train2014", 9000), _karpathy_image(1, "restval", "val2014", 9001),
               _karpathy_image(2, "val", "val2014", 9002), _karpathy_image(3, "test", "val2014", 9003),
               _karpathy_image(4, "test", "val2014", 9004)]
    for e in entries:
        _image(tmp_path / e["filepath"] / e["filename"])
    return _write(tmp_path / "dataset_coco.json", {"images": entries, "dataset": "coco"})


def test_karpathy_splits_restval_and_ids(karpathy: Path) -> None:
    root = karpathy.parent
    train, report = open_split(karpathy, "train")  # images default to the file's folder
    assert [(r.image_id, r.split) for r in train] == [(9000, "train"), (9001, "train")]
    assert train[1].path == root / "val2014" / "im1.jpg"
    assert train[0].captions == ("Caption 0 of image 0.", "Caption 1 of image 0.")
    assert not report.skipped
    assert [r.image_id for r in open_split(karpathy, "val")[0]] == [9002]
    assert [r.image_id for r in open_split(karpathy, "test", images=root)[0]] == [9003, 9004]
    every, _ = read_karpathy(karpathy, root)
    assert [r.split for r in every] == ["train", "train", "val", "test", "test"]


def test_karpathy_flickr_entries_and_skips(tmp_path: Path) -> None:
    entries = [_karpathy_image(7, "train", filepath=None), _karpathy_image(8, "train", filepath=None)]
    entries[1]["sentences"] = [{"raw": "  "}]
    _image(tmp_path / "Flicker8k_Dataset" / "im7.jpg")
    path = _write(tmp_path / "dataset_flickr8k.json", {"images": entries, "dataset": "flickr8k"})
    records, report = read_karpathy(path, tmp_path / "Flicker8k_Dataset", "train")
    assert [(r.image_id, r.path) for r in records] == [(7, tmp_path / "Flicker8k_Dataset" / "im7.jpg")]
    assert report.skipped == [("im8.jpg", "no captions")]


def test_karpathy_missing_field_names_the_entry(tmp_path: Path) -> None:
    entries = [_karpathy_image(0, "train"), _karpathy_image(1, "train")]
    del entries[1]["filename"]
    path = _write(tmp_path / "dataset_coco.json", {"images": entries})
    with pytest.raises(ValueError, match=r"images\[1\] lacks field 'filename'"):
        open_split(path, "train", check_images=False)
    with pytest.raises(ValueError, match="needs an 'images' list"):
        read_karpathy(_write(tmp_path / "k.json", {"images": {}}), tmp_path)


def test_real_coco_val_skips_images_without_captions(shared: Path) -> None:
    mini = shared / "data" / "coco-mini"
    records, report = open_split(mini / "annotations" / "captions_val2017.json", "val", images=mini / "val2017")
    assert len(records) == 79
    assert sum(len(r.captions) for r in records) == 395
    assert report.reasons() == {"no captions": 80}
    assert all(r.path.is_file() and r.path.parent == mini / "val2017" for r in records)
    assert "80 no captions" in report.summary()


def test_real_coco_train_folder_layout(shared: Path) -> None:
    mini = shared / "data" / "coco-mini"
    assert find_annotation(mini, "train") == mini / "annotations" / "captions_train2017.json"
    records, report = open_split(mini, "train")
    assert len(records) == 80 and sum(len(r.captions) for r in records) == 400
    assert {r.path.parent for r in records} == {mini / "train2017"}
    assert {r.split for r in records} == {"train"} and not report.skipped
    assert len({r.image_id for r in records}) == 80


def test_coco_images_sharing_an_id_are_an_error_naming_both_files(tmp_path: Path) -> None:
    """pycocotools kept one entry and gave it both images' captions; the other image read as 'no captions'."""
    _image(tmp_path / "pics" / "a.jpg")
    _image(tmp_path / "pics" / "b.jpg")
    files = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "c.jpg"}, {"id": 1, "file_name": "b.jpg"}]
    ann = _write(tmp_path / "c.json", _coco(files, {1: ["a red square"], 2: ["a blue disc"]}))
    with pytest.raises(ValueError, match=r"c.json: images\[0\] \(a.jpg\) and images\[2\] \(b.jpg\) share the id 1"):
        open_split(ann, "train", tmp_path / "pics")
    files[2]["id"] = "3"
    _write(ann, _coco(files, {1: ["a red square"]}))
    with pytest.raises(ValueError, match=r"c.json: images\[2\] \(b.jpg\) has the id '3': ids are integers"):
        open_split(ann, "train", tmp_path / "pics")


@pytest.mark.parametrize("images", [{"1": {"id": 1, "file_name": "a.jpg"}}, "a.jpg", 7])
def test_coco_images_that_are_not_a_list_are_an_error_naming_the_file(tmp_path: Path, images) -> None:
    ann = _write(tmp_path / "c.json", {"images": images, "annotations": []})
    with pytest.raises(ValueError, match=r"c.json: 'images' must be a list, got"):
        open_split(ann, "train", tmp_path)


def test_a_utf16_coco_file_is_read(tmp_path: Path) -> None:
    _image(tmp_path / "pics" / "a.jpg")
    ann = tmp_path / "c.json"
    ann.write_text(json.dumps(_coco([{"id": 1, "file_name": "a.jpg"}], {1: ["un caf\u00e9"]}), ensure_ascii=False),
                   encoding="utf-16")
    records, _ = open_split(ann, "train", tmp_path / "pics")
    assert records[0].captions == ("un caf\u00e9",)
