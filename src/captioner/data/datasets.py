"""Caption data sets behind one record type: COCO annotation files (pycocotools) and Karpathy split JSON."""
from __future__ import annotations

import contextlib
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from pycocotools.coco import COCO

from captioner.io import read_json

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class ImageRecord:
    """One image with its reference captions."""

    image_id: int
    path: Path
    captions: tuple[str, ...]
    split: str


@dataclass
class SkipReport:
    """Images left out of a data set, each with the reason."""

    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, what: str, reason: str) -> None:
        self.skipped.append((what, reason))

    def reasons(self) -> Counter[str]:
        return Counter(reason for _, reason in self.skipped)

    def summary(self) -> str:
        """One line: how many were skipped and why, with an example of each reason."""
        if not self.skipped:
            return f"{self.source}: nothing skipped"
        parts = []
        for reason, n in self.reasons().most_common():
            example = next(what for what, r in self.skipped if r == reason)
            parts.append(f"{n} {reason} (e.g. {example})")
        return f"{self.source}: skipped " + "; ".join(parts)


def _image_problem(path: Path) -> str | None:
    """Why an image file cannot be used, or None when its header reads as an image."""
    if not path.is_file():
        return "missing file"
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - reading the header is the check
    except (OSError, ValueError, Image.DecompressionBombError):
        return "unreadable image"
    return None


def _usable(path: Path, captions: list, what: str, report: SkipReport, check_images: bool) -> tuple[str, ...]:
    """The image's non-empty captions, or () after reporting why the image is skipped."""
    kept = tuple(c.strip() for c in captions if isinstance(c, str) and c.strip())
    problem = "no captions" if not kept else _image_problem(path) if check_images else None
    if problem:
        report.add(what, problem)
        return ()
    return kept


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
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    report, records = SkipReport(str(annotations)), []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        if "file_name" not in info:
            raise ValueError(f"{annotations}: image {image_id} has no 'file_name'")
        captions = [a.get("caption") for a in coco.imgToAnns.get(image_id, [])]
        path = images / info["file_name"]
        if kept := _usable(path, captions, info["file_name"], report, check_images):
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
        if kept := _usable(file, captions, str(Path(img.get("filepath", "")) / name), report, check_images):
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


def has_splits(data: str | Path) -> bool:
    """Whether a data source names its splits: a COCO-layout folder or a Karpathy JSON (one COCO file does not)."""
    data = Path(data)
    if data.is_dir():
        return True
    head = read_json(data, "annotation file") if data.is_file() else None
    first = (head.get("images") or [{}])[0] if isinstance(head, dict) else {}
    return isinstance(first, dict) and "sentences" in first


def open_split(data: str | Path, split: str, images: str | Path | None = None,
               check_images: bool = True) -> tuple[list[ImageRecord], SkipReport]:
    """One split of a data source: a COCO-layout folder, a Karpathy JSON or one COCO annotation file."""
    data = Path(data)
    if data.is_dir():
        ann = find_annotation(data, split)
        image_dir = Path(images) if images else data / ann.stem.removeprefix("captions_")
        return read_coco(ann, image_dir, split, check_images)
    if not data.is_file():
        raise FileNotFoundError(f"data not found: {data} (give a data set folder, a Karpathy JSON or a COCO "
                                f"annotation file; `captioner synth --out DIR` makes one)")
    head = read_json(data, "annotation file")
    first = (head.get("images") or [{}])[0] if isinstance(head, dict) else {}
    if isinstance(first, dict) and "sentences" in first:
        return read_karpathy(data, images or data.parent, split, check_images)
    if images is None and check_images:
        raise ValueError(f"{data} is a COCO annotation file: also give its image folder (--images DIR)")
    images = images if images is not None else data.parent
    return read_coco(data, images, split, check_images)
