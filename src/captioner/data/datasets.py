"""Caption data sets behind one record type: COCO annotation files (pycocotools), Karpathy split JSON and
Flickr-style files (data/flickr.py); ``open_split`` reads the format from the file."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

from pycocotools.coco import COCO

from captioner.data.flickr import read_flickr, sniff
from captioner.data.records import ImageRecord, SkipReport, usable
from captioner.io import read_head, read_json

__all__ = ["ImageRecord", "SkipReport", "describe", "find_annotation", "has_splits", "open_split", "read_coco",
           "read_karpathy"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def _checked_coco(data: dict, path: Path) -> dict:
    """The file's content, once every image has an id and a file_name and every annotation an image_id;
    annotations without their own id (hand-made files) are numbered, which pycocotools needs."""
    for key in ("images", "annotations"):
        if not isinstance(data[key], list):
            raise ValueError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    seen: dict[int, int] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise ValueError(f"{path}: images[{i}] must be an object with 'id' and 'file_name', got {str(img)[:80]}")
        if not isinstance(img["id"], int) or isinstance(img["id"], bool):
            raise ValueError(f"{path}: images[{i}] ({img['file_name']}) has the id {img['id']!r}: ids are integers")
        if (j := seen.setdefault(img["id"], i)) != i:  # pycocotools would keep one and give it both's captions
            raise ValueError(f"{path}: images[{j}] ({data['images'][j]['file_name']}) and images[{i}] "
                             f"({img['file_name']}) share the id {img['id']!r}: give each image its own id")
    annotations = []
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise ValueError(f"{path}: annotations[{i}] must be an object with 'image_id' and 'caption', "
                             f"got {str(ann)[:80]}")
        annotations.append(ann if "id" in ann else {**ann, "id": f"#{i}"})
    return {**data, "annotations": annotations}


def read_coco(annotations: str | Path, images: str | Path, split: str = "train",
              check_images: bool = True) -> tuple[list[ImageRecord], SkipReport]:
    """Read a COCO caption annotation file (e.g. captions_train2014.json) with its image folder."""
    annotations, images = Path(annotations), Path(images)
    data = read_json(annotations, "COCO annotation file")
    if not isinstance(data, dict) or not {"images", "annotations"} <= data.keys():
        raise ValueError(f"{annotations}: not a COCO caption file (needs 'images' and 'annotations' keys)")
    if not images.is_dir():
        raise FileNotFoundError(f"image folder not found: {images} (give the folder of {annotations.name}'s images)")
    coco = COCO()
    coco.dataset = _checked_coco(data, annotations)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    report, records = SkipReport(str(annotations)), []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        captions = [a.get("caption") for a in coco.imgToAnns.get(image_id, [])]
        path = images / info["file_name"]
        if kept := usable(path, captions, info["file_name"], report, check_images):
            records.append(ImageRecord(int(image_id), path, kept, split))
    if check_images:  # image files in the folder that the annotation file never mentions have no captions either
        named = {info["file_name"] for info in coco.imgs.values()}
        for file in sorted(images.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES and file.name not in named and file.is_file():
                report.add(file.name, "no captions")
    return records, report


def read_karpathy(path: str | Path, image_root: str | Path, split: str | None = None,
                  check_images: bool = True) -> tuple[list[ImageRecord], SkipReport]:
    """Read a Karpathy split file (dataset_coco/flickr8k/flickr30k.json); 'restval' counts as train."""
    path, image_root = Path(path), Path(image_root)
    data = read_json(path, "Karpathy split file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: not a Karpathy split file (needs an 'images' list)")
    report, records = SkipReport(str(path)), []
    for i, img in enumerate(data["images"]):
        try:
            name, img_split = img["filename"], img["split"]
            captions = [s["raw"] for s in img["sentences"]]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: images[{i}] lacks field {e} (needs filename, split, sentences[].raw)") from e
        img_split = "train" if img_split == "restval" else img_split
        if split is not None and img_split != split:
            continue
        file = image_root / img.get("filepath", "") / name
        image_id = int(img.get("cocoid", img.get("imgid", i)))
        if kept := usable(file, captions, str(Path(img.get("filepath", "")) / name), report, check_images):
            records.append(ImageRecord(image_id, file, kept, img_split))
    return records, report


def find_annotation(folder: Path, split: str) -> Path:
    """The annotations/captions_{split}*.json of a COCO-layout folder (synthetic set, COCO 2014/2017)."""
    found = sorted((folder / "annotations").glob(f"captions_{split}*.json"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise FileNotFoundError(
            f"{folder}: {what} annotations/captions_{split}*.json (expected one; for COCO 2014 test splits "
            f"use a Karpathy split file such as dataset_coco.json)")
    return found[0]


def _kind(data: Path) -> str:
    """What a data file is, from its content: 'karpathy', 'coco' (JSON), 'token' or 'csv' (Flickr-style text)."""
    if read_head(data, 64).lstrip()[:1] in ("{", "["):
        content = read_json(data, "annotation file")
        images = content.get("images") if isinstance(content, dict) else None
        first = images[0] if isinstance(images, list) and images else {}
        return "karpathy" if isinstance(first, dict) and "sentences" in first else "coco"
    kind = sniff(data)
    if kind is None:
        raise ValueError(f"{data}: unknown annotation format: expected a COCO or Karpathy JSON, a Flickr token file "
                         f"('<file>#<k><TAB><caption>' lines, e.g. Flickr8k.token.txt) or a CSV with the header "
                         f"'image,caption'")
    return kind


def describe(data: str | Path) -> str:
    """A data source's name for a model's config: its COCO ``info.description`` when it has one, else its path."""
    data = Path(data)
    try:
        ann = find_annotation(data, "train") if data.is_dir() else data
        content = read_json(ann, "annotation file") if _kind(ann) in ("coco", "karpathy") else {}
    except (OSError, ValueError):
        content = {}
    info = content.get("info") if isinstance(content, dict) else None
    description = info.get("description") if isinstance(info, dict) else None
    return description if isinstance(description, str) and description else str(data)


def has_splits(data: str | Path) -> bool:
    """Whether a data source names its splits: a folder, a Karpathy JSON or a Flickr file (one COCO file does not)."""
    data = Path(data)
    return data.is_dir() or (data.is_file() and _kind(data) != "coco")


def open_split(data: str | Path, split: str, images: str | Path | None = None,
               check_images: bool = True) -> tuple[list[ImageRecord], SkipReport]:
    """One split of a data source: a COCO-layout folder, a Karpathy JSON, one COCO annotation file, a Flickr
    token file (splits from the lists beside it) or an ``image,caption`` CSV; the format is read from the file."""
    data = Path(data)
    if data.is_dir():
        ann = find_annotation(data, split)
        image_dir = Path(images) if images else data / ann.stem.removeprefix("captions_")
        return read_coco(ann, image_dir, split, check_images)
    if not data.is_file():
        raise FileNotFoundError(f"data not found: {data} (give a data set folder, a Karpathy JSON, a COCO annotation "
                                f"file or a Flickr token file; `captioner synth --out DIR` makes one)")
    kind = _kind(data)
    if kind == "karpathy":
        return read_karpathy(data, images or data.parent, split, check_images)
    if kind in ("token", "csv"):
        return read_flickr(data, images, split, check_images)
    if images is None and check_images:
        raise ValueError(f"{data} is a COCO annotation file: also give its image folder (--images DIR)")
    images = images if images is not None else data.parent
    return read_coco(data, images, split, check_images)
