"""Atomic file writes: write to a temp file beside the target, then rename, so nothing is half-written."""
from __future__ import annotations

import csv
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
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from e


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header, as dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
