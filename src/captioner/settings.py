"""Fields of the settings dataclasses (TrainConfig, ModelConfig) that carry their ``captioner train`` option: one
default each, and the option's help text; the CLI builds its options from them (cli/options.py)."""
from __future__ import annotations

from dataclasses import MISSING, field, fields
from typing import Any


def setting(default: Any, help: str = "", path: bool = False, **option: Any) -> Any:
    """A field with the help text of its CLI option; ``path``: the option takes a path (kept as a string);
    ``option``: further typer.Option arguments (e.g. ``min=1``)."""
    return field(default=default, metadata={"help": help, "path": path, "option": option})


def defaults(cls: type) -> dict[str, Any]:
    """The default of each field of a settings dataclass that has one, read now (not at import)."""
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}
