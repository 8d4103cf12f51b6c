"""How a run that stops early ends: what it saved, and the ``captioner train`` command that continues it."""
from __future__ import annotations

import shlex
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from captioner.models.config import ModelConfig
from captioner.settings import defaults
from captioner.training.config import TrainConfig

NEVER_PRINTED = ("resume", "force")


class TrainingFailed(RuntimeError):
    """Training stopped on an error; the message says what was saved (the best model so far, exported)."""


def cli_defaults() -> dict[str, Any]:
    """The defaults of ``captioner train``'s options by name: the fields' of ModelConfig and TrainConfig, where the
    CLI reads them too."""
    return defaults(ModelConfig) | defaults(TrainConfig)


def resume_command(cfg: TrainConfig, model_kwargs: dict[str, Any], resume: bool = True,
                   defaults: dict[str, Any] | None = None) -> str:
    """The ``captioner train`` command that continues this run: its data and folder, every setting that differs
    from ``defaults`` (the CLI's own, by parameter name; default ``cli_defaults()``), the model flags it was given
    (none with ``--init``: the model comes from there), then ``--resume``. A setting the CLI has no option for is
    left out."""
    defaults = cli_defaults() if defaults is None else defaults
    args = ["captioner", "train"]
    chosen = [(f.name, getattr(cfg, f.name)) for f in fields(cfg)] + list(({} if cfg.init else model_kwargs).items())
    for name, value in chosen:
        if name in NEVER_PRINTED or value is None:  # every optional flag's default is None
            continue
        if name in ("data", "out") or (name in defaults and value != defaults[name]):
            args += _flag(name, value)
    return shlex.join(args + (["--resume"] if resume else []))


def _flag(name: str, value: Any) -> list[str]:
    flag = name.replace("_", "-")
    return [f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)]


def stopped_message(cfg: TrainConfig, model_kwargs: dict[str, Any], epoch: int | None, cause: str = "SIGTERM",
                    defaults: dict[str, Any] | None = None) -> str:
    """What a run stopped by ``cause`` in ``epoch`` (0-based; None: before training began) left behind, and the
    command that continues it."""
    out = Path(cfg.out)
    last = out / "checkpoints" / "last.ckpt"
    where = "before training began" if epoch is None else f"in epoch {epoch + 1} of {cfg.epochs}"
    head = f"stopped by {cause} {where}; no model was exported. "
    if not last.is_file():
        return head + ("No epoch was completed: start again with\n"
                       f"{resume_command(cfg, model_kwargs, resume=False, defaults=defaults)}")
    done = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["epoch"] + 1
    return head + (f"Saved: {last} ({done} of {cfg.epochs} epochs done), {out / 'metrics.csv'}. "
                   f"Continue with:\n{resume_command(cfg, model_kwargs, defaults=defaults)}")
