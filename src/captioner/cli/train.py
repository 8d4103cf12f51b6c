"""`captioner train`: its options are TrainConfig's and ModelConfig's fields (cli/options.py) -> training/run.py."""
from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from captioner.cli.common import DataArg, Decoder, ImagesOpt, LangOpt, PrecisionOpt, TokenizerOpt, _fail, app
from captioner.cli.help import TRAIN_SECTIONS, sectioned
from captioner.cli.options import FieldCommand, field_options
from captioner.models.config import ModelConfig
from captioner.models.families import describe
from captioner.training.config import TrainConfig

NOT_OPTIONS = ("vocab_size", "seed", "trained_on", "vocab_sha256")  # ModelConfig's fields the run sets (seed: --seed)
SHARED = {"data": DataArg, "images": ImagesOpt, "lang": LangOpt, "tokenizer": TokenizerOpt, "precision": PrecisionOpt,
          "decoder": Annotated[Decoder, typer.Option(help=f"Decoder family: {describe()}")]}
ORDER = [name for names in TRAIN_SECTIONS.values() for name in names]  # --help lists them by section, in this order


def options() -> list[inspect.Parameter]:
    """`captioner train`'s options: TrainConfig's fields, then the model's."""
    params = field_options(TrainConfig, shared=SHARED) + field_options(ModelConfig, NOT_OPTIONS, SHARED)
    return sorted(params, key=lambda p: ORDER.index(p.name) if p.name in ORDER else len(ORDER))


def train(ctx: typer.Context, **flags: Any) -> None:
    """Train a captioner (frozen encoder via the feature cache) and export it to the run folder."""
    from captioner.models.backbones import WeightsUnavailableError
    from captioner.training.exit import TrainingFailed
    from captioner.training.run import train as run

    flags = {k: str(v) if isinstance(v, Path) else v.value if isinstance(v, Decoder) else v for k, v in flags.items()}
    model = {f.name: flags[f.name] for f in fields(ModelConfig) if f.name not in NOT_OPTIONS}
    try:
        cfg = TrainConfig(**{f.name: flags[f.name] for f in fields(TrainConfig)})
        if model["backbone"].startswith("timm:") and ctx.get_parameter_source("image_size").name == "DEFAULT":
            model["image_size"] = None  # the model's own (train resolves it)
        run(cfg, model, _defaults(ctx))
    except (OSError, ValueError, WeightsUnavailableError) as e:
        raise _fail(e) from None
    except TrainingFailed as e:  # the best model so far is exported: not a usage error
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None


app.command(name="train", cls=sectioned(TRAIN_SECTIONS))(FieldCommand(train, options))


def _defaults(ctx: typer.Context) -> dict[str, Any]:
    """The command's default value of each parameter, as the config holds it (paths as strings)."""
    return {p.name: str(p.default) if isinstance(p.default, Path) else p.default for p in ctx.command.params}
