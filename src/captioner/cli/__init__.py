"""The `captioner` command: thin wrappers that parse flags and call the modules, one file per family of commands,
imported in the order `--help` lists them (each registers its commands on the app)."""
# isort: skip_file
from __future__ import annotations

from captioner.cli import data, train, decode, serve  # noqa: F401
from captioner.cli.common import app
from captioner.cli.train import _defaults

__all__ = ["app", "_defaults"]
