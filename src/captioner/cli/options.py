"""A command's options made from the settings dataclasses' fields (settings.setting): each option's type, default and
help come from its field, so a default lives in one place and the CLI, a printed resume command and the demos agree.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer


def field_options(cls: type, skip: Iterable[str] = (), shared: dict[str, Any] | None = None) -> list[inspect.Parameter]:
    """A keyword parameter per field of ``cls`` but ``skip``: its type (Path for a path field), default and help;
    ``shared``: a name's Annotated type when other commands share the option (cli/common.py), defaulting to the
    field's all the same."""
    hints, shared = get_type_hints(cls), shared or {}
    params = []
    for f in fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        if f.metadata.get("path"):
            kind = Path if kind is str else Path | None
        option = typer.Option(help=f.metadata.get("help") or None, **f.metadata.get("option", {}))
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=shared.get(
            f.name, Annotated[kind, option]), default=inspect.Parameter.empty if f.default is MISSING else f.default))
    return params


class FieldCommand:
    """A command callback whose options typer reads from ``parameters()`` each time it builds the command (every
    run), so each default is its field's as it is then; ``run(ctx, **options)`` does the work."""

    def __init__(self, run: Callable[..., None], parameters: Callable[[], list[inspect.Parameter]]) -> None:
        self.run, self.parameters = run, parameters
        self.__name__, self.__doc__ = run.__name__, run.__doc__
        self.__annotations__: dict[str, Any] = {}  # typer reads them; the types are on the signature

    @property
    def __signature__(self) -> inspect.Signature:
        ctx = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
        return inspect.Signature([ctx, *self.parameters()])

    def __call__(self, ctx: typer.Context, **options: Any) -> None:
        self.run(ctx, **options)
