"""The record every reader returns (one image, its captions, its split) and the report of what was left out."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image


@dataclass(frozen=True)
class ImageRecord:
    """One image with its reference captions."""

    image_id: int
    path: Path
    captions: tuple[str, ...]
    split: str


@dataclass
class SkipReport:
    """Images left out of a data set, each with the reason, and notes on how the set was read."""

    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, reason: str) -> None:
        self.skipped.append((what, reason))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def reasons(self) -> Counter[str]:
        return Counter(reason for _, reason in self.skipped)

    def summary(self) -> str:
        """One line: how many were skipped and why, with an example of each reason, then the notes."""
        notes = "".join(f"; {n}" for n in self.notes)
        if not self.skipped:
            return f"{self.source}: nothing skipped{notes}"
        parts = []
        for reason, n in self.reasons().most_common():
            example = next(what for what, r in self.skipped if r == reason)
            parts.append(f"{n} {reason} (e.g. {example})")
        return f"{self.source}: skipped " + "; ".join(parts) + notes


def image_problem(path: Path) -> str | None:
    """Why an image file cannot be used, or None when its header reads as an image."""
    if not path.is_file():
        return "missing file"
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - reading the header is the check
    except (OSError, ValueError, Image.DecompressionBombError):
        return "unreadable image"
    return None


def usable(path: Path, captions: list, what: str, report: SkipReport, check_images: bool) -> tuple[str, ...]:
    """The image's non-empty captions, or () after reporting why the image is skipped."""
    kept = tuple(c.strip() for c in captions if isinstance(c, str) and c.strip())
    problem = "no captions" if not kept else image_problem(path) if check_images else None
    if problem:
        report.add(what, problem)
        return ()
    return kept
