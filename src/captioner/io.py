"""Atomic file writes (a temp file beside the target, then a rename, so nothing is half-written) and text reads that
take UTF-8, UTF-8 with a BOM and UTF-16/32 with a BOM, and name the file, line and encoding found when they fail."""
from __future__ import annotations

import codecs
import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically rename the temp file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_together(folder: str | Path, writers: dict[str, Callable[[Path], None]]) -> Path:
    """Write each file of ``writers`` (name -> ``write(tmp_path)``) to a temp file in ``folder``, then rename them all
    into place: the slow part is done before any of them changes, so the files are replaced together or not at all
    (short of a crash between renames)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temps: dict[str, Path] = {}
    try:
        for name, write in writers.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
            os.close(fd)
            temps[name] = Path(tmp)
            write(temps[name])
            os.chmod(tmp, 0o666 & ~_umask())
        for name, tmp in temps.items():
            os.replace(tmp, folder / name)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return folder


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write bytes."""
    return atomic_write(path, lambda p: p.write_bytes(data))


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Atomically write an object as UTF-8 JSON."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    return atomic_write(path, lambda p: p.write_text(text + "\n", encoding="utf-8"))


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Read JSON with an error that names the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        text = read_text(path, what)
    except ValueError as e:  # decode_text's message, said as the JSON reader says its own
        raise ValueError(f"{what} {path} is not valid JSON: line {str(e).removeprefix(f'{what} {path}:')}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from e


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header, as dicts."""
    return list(csv.DictReader(io.StringIO(read_text(path, "CSV file"), newline="")))


# Byte-order marks, longest first: UTF-32's little-endian mark begins with UTF-16's.
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def text_encoding(head: bytes) -> str:
    """The codec a file's first bytes call for: the one its byte-order mark names (the codec drops the mark),
    else UTF-8."""
    return next((codec for bom, codec in BOMS if head.startswith(bom)), "utf-8")


def _looks_like(data: bytes) -> str:
    """A guess at the encoding of bytes that are not UTF-8, for the error message."""
    if data.count(0) > len(data) // 4:
        return "UTF-16 or UTF-32 without a byte-order mark"
    if 0 in data:
        return "binary data, not text"
    try:
        data.decode("cp1252")
    except UnicodeDecodeError:
        return "a legacy encoding (GBK, Shift-JIS, ...)"
    return "Latin-1 / Windows-1252"


def decode_text(data: bytes, source: str | Path, what: str = "file") -> str:
    """``data`` as text (see ``text_encoding``); an error names ``source``, the line and the encoding found."""
    codec = text_encoding(data[:4])
    try:
        return data.decode(codec)
    except UnicodeDecodeError as e:
        before = data[:e.start].decode(codec, errors="replace")
        line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
        raise ValueError(f"{what} {source}:{line}: not {codec.upper()} text (byte {data[e.start]:#04x} at column "
                         f"{column}; the file looks like {_looks_like(data)}): save it as UTF-8") from None


def read_text(path: str | Path, what: str = "file") -> str:
    """A whole text file (see ``decode_text``); newlines are kept as they are, so a CSV reader still sees them."""
    path = Path(path)
    return decode_text(path.read_bytes(), path, what)


def read_head(path: str | Path, size: int = 4096) -> str:
    """The first ``size`` bytes of a text file as text, undecodable bytes replaced: enough to tell its format."""
    with open(path, "rb") as f:
        head = f.read(size)
    return head.decode(text_encoding(head[:4]), errors="replace").removeprefix("\ufeff")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
