"""Words a caption should not end on (function words): one list per language, kept as data in bad_endings/."""
from __future__ import annotations

from importlib import resources


def bad_ending_words(language: str = "en") -> list[str]:
    """The language's list (bad_endings/<language>.txt: one word a line, # comments)."""
    try:
        text = resources.files("captioner.data").joinpath(f"bad_endings/{language}.txt").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"no bad-endings list for language {language!r}: add captioner/data/bad_endings/"
                         f"{language}.txt (one word a line)") from None
    return [w for line in text.splitlines() if (w := line.split("#")[0].strip())]

