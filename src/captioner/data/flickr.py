"""Flickr-style caption files: Flickr8k/30k token files (``<file>#<k>\\t<caption>``, Flickr8k-CN's
``<file>#zhc#<k> <caption>``) with the archive's split lists, and the common ``image,caption`` CSV (captions.txt)."""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np

from captioner.data.records import ImageRecord, SkipReport, usable
from captioner.io import read_head, read_text

TOKEN_LINE = re.compile(r"^(?P<file>[^#\t]+)#(?:[A-Za-z]+#)?(?P<k>\d+)[\t ](?P<caption>.*)$")
CSV_HEADER = ("image", "caption")
SPLIT_LISTS = {"train": "trainImages.txt", "val": "devImages.txt", "test": "testImages.txt"}  # Flickr_8k.<x>
IMAGE_FOLDERS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k-images", "flickr30k_images", "Images", "images")
HELD_OUT = 0.1  # share of images in val and in test each when a file comes without split lists (at most 1,000)
SEED = 0
MAX_CAPTION_WORDS, MAX_CAPTION_CHARS = 100, 1000  # a CSV caption past these is a broken row, not a caption


def sniff(path: Path) -> str | None:
    """'token' or 'csv' when the file's first non-empty line reads as that format, else None."""
    first = next((line.strip("\r") for line in read_head(path).split("\n") if line.strip()), "")
    if TOKEN_LINE.match(first):
        return "token"
    if tuple(c.strip().lower() for c in first.split(",")) == CSV_HEADER:
        return "csv"
    return None


def read_token_file(path: Path) -> dict[str, list[str]]:
    """{file name: captions in file order}; a line that is not ``<file>#<k><tab or space><caption>`` is an error."""
    captions: dict[str, list[str]] = {}
    for n, line in enumerate(read_text(path, "caption file").split("\n"), 1):  # not splitlines: \x85, \u2028 are text
        line = line.strip("\r")
        if not line.strip():
            continue
        m = TOKEN_LINE.match(line)
        if not m:
            raise ValueError(f"{path}:{n}: not a Flickr token line '<file>#<k><TAB><caption>': {line[:80]!r}")
        captions.setdefault(m["file"].strip(), []).append(m["caption"])
    return captions


def read_captions_csv(path: Path) -> dict[str, list[str]]:
    """{file name: captions} from a CSV with the header ``image,caption`` (commas inside a caption are kept).

    A row is one line: a quoted caption that runs onto the next line (an unclosed quote would swallow the rest of
    the file into one caption) or one longer than ``MAX_CAPTION_WORDS`` / ``MAX_CAPTION_CHARS`` is an error naming
    its line."""
    captions: dict[str, list[str]] = {}
    rows = csv.reader(io.StringIO(read_text(path, "caption file"), newline=""))
    try:
        next(rows, None)
        start = rows.line_num + 1
        for row in rows:
            n, start = start, rows.line_num + 1
            if not row or not "".join(row).strip():
                continue
            if rows.line_num > n:
                raise ValueError(f"{path}:{n}: this row's caption runs over lines {n}-{rows.line_num} (an unclosed "
                                 f"quote?): {','.join(row)[:80]!r}; write each caption on one line, quotes closed")
            if len(row) < 2 or not row[0].strip():
                raise ValueError(f"{path}:{n}: expected 'image,caption', got {','.join(row)[:80]!r}")
            caption = ",".join(row[1:])
            if len(caption) > MAX_CAPTION_CHARS or len(caption.split()) > MAX_CAPTION_WORDS:
                raise ValueError(f"{path}:{n}: a caption of {len(caption.split())} words, {len(caption)} characters "
                                 f"(at most {MAX_CAPTION_WORDS} words, {MAX_CAPTION_CHARS} characters): "
                                 f"{caption[:80]!r}...; shorten it or drop the row")
            captions.setdefault(row[0].strip(), []).append(caption)
    except csv.Error as e:
        raise ValueError(f"{path}:{rows.line_num}: not a readable CSV row ({e})") from None
    return captions


def split_lists(path: Path) -> tuple[dict[str, set[str]], Path | None]:
    """The ``*trainImages.txt`` / ``*devImages.txt`` / ``*testImages.txt`` lists beside the file (or one folder up,
    as for Flickr8k-CN's and Multi30k's files in subfolders of the Flickr8k folder), and their folder."""
    for folder in (path.parent, path.parent.parent):
        found = {split: sorted(folder.glob(f"*{suffix}")) for split, suffix in SPLIT_LISTS.items()}
        if found["train"]:
            lists = {}
            for split, files in found.items():
                if len(files) > 1:
                    raise ValueError(f"{folder}: {len(files)} files match *{SPLIT_LISTS[split]} "
                                     f"({', '.join(f.name for f in files)}): keep one")
                if files:
                    lists[split] = {line.strip() for line in read_text(files[0], "split list").split("\n")
                                    if line.strip()}
            return lists, folder
    return {}, None


def seeded_splits(names: list[str]) -> dict[str, set[str]]:
    """val and test of ``HELD_OUT`` of the images each (at most 1,000), the rest train, by a seeded shuffle."""
    order = np.random.default_rng(SEED).permutation(len(names))
    held = min(1000, int(HELD_OUT * len(names)))
    shuffled = [names[i] for i in order]
    return {"val": set(shuffled[:held]), "test": set(shuffled[held:2 * held]), "train": set(shuffled[2 * held:])}


def find_images(path: Path) -> Path:
    """The image folder beside a caption file, by the archives' usual names."""
    for folder in (path.parent, path.parent.parent):
        for name in IMAGE_FOLDERS:
            if (folder / name).is_dir():
                return folder / name
    raise FileNotFoundError(f"{path}: no image folder found beside it ({', '.join(IMAGE_FOLDERS)}): give --images DIR")


def read_flickr(path: str | Path, images: str | Path | None, split: str | None = None,
                check_images: bool = True) -> tuple[list[ImageRecord], SkipReport]:
    """One split (or all) of a Flickr token file or captions CSV; image ids follow the file's order."""
    path = Path(path)
    kind = sniff(path)
    if kind is None:
        raise ValueError(f"{path}: neither a Flickr token file nor an 'image,caption' CSV")
    captions = read_token_file(path) if kind == "token" else read_captions_csv(path)
    image_dir = Path(images) if images else find_images(path)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir} (give the folder of {path.name}'s images)")
    report = SkipReport(str(path))
    lists, folder = split_lists(path) if kind == "token" else ({}, None)
    if folder is not None and folder != path.parent:
        report.note(f"split lists (*{', *'.join(SPLIT_LISTS[s] for s in sorted(lists))}) from {folder}, the folder "
                    f"above {path.name}")
    if lists and split is not None and split not in lists:
        raise FileNotFoundError(f"{path}: no *{SPLIT_LISTS.get(split, split + 'Images.txt')} beside it, so no "
                                f"'{split}' split (lists found: {', '.join(sorted(lists))})")
    if lists:
        listed = set().union(*lists.values())
        for name in captions.keys() - listed:
            report.add(name, "in no split list")
        missing = {s: len(names - captions.keys()) for s, names in lists.items()}
        for s, n in missing.items():
            if n:
                report.note(f"{n} images of the {s} list have no captions in {path.name}")
    else:
        lists = seeded_splits(list(captions))
        report.note(f"no split lists beside {path.name}: seeded split (seed {SEED}) of {len(captions)} images into "
                    + ", ".join(f"{s} {len(lists[s])}" for s in ("train", "val", "test")))
    if folder is not None and split is not None and not lists[split] & captions.keys():
        # the split exists but gives nothing: say so, rather than let a caller fall back (train: a hold-out)
        found = f"names {len(lists[split])} images, none with captions in {path.name}" if lists[split] else "is empty"
        raise ValueError(f"{folder}/*{SPLIT_LISTS[split]} {found}: no '{split}' images to read; fix the list (or "
                         f"the caption file), or give the split another way (train: --val-data)")
    where = {name: s for s, names in lists.items() for name in names}
    records = []
    for image_id, (name, caps) in enumerate(captions.items()):
        name_split = where.get(name)
        if name_split is None or (split is not None and name_split != split):
            continue
        if kept := usable(image_dir / name, caps, name, report, check_images):
            records.append(ImageRecord(image_id, image_dir / name, kept, name_split))
    return records, report
