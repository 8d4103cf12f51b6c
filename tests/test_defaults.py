"""Each default lives in one place, its settings dataclass field (TrainConfig, ModelConfig): `captioner train`'s
options, the printed resume command and the demos read it there; the presets (recipe.PRESETS) only change them."""
from __future__ import annotations

from dataclasses import MISSING, asdict, fields
from pathlib import Path

import click
import pytest
import typer.main
from typer.testing import CliRunner

import captioner.training.run as train_mod
from captioner import recipe
from captioner.cli import app
from captioner.cli.train import NOT_OPTIONS
from captioner.demo import run_demo
from captioner.models.config import ModelConfig
from captioner.training.config import TrainConfig
from captioner.training.exit import resume_command


class Stop(Exception):
    """Raised by a stubbed train() once it has seen what it would train with."""


def train_options() -> dict[str, click.Parameter]:
    return {p.name: p for p in typer.main.get_command(app).commands["train"].params}


def set_default(monkeypatch, cls: type, name: str, value) -> None:
    """Change a field's default as editing its line would: the field, the class attribute and ``__init__``'s."""
    with_default = [f.name for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING]
    index = with_default.index(name)
    old = cls.__init__.__defaults__
    monkeypatch.setattr(cls.__dataclass_fields__[name], "default", value)
    monkeypatch.setattr(cls, name, value)
    monkeypatch.setattr(cls.__init__, "__defaults__", old[:index] + (value,) + old[index + 1:])


def test_every_train_option_is_a_field_with_its_default() -> None:
    options = train_options()
    settings = {f.name: f for cls in (ModelConfig, TrainConfig) for f in fields(cls) if f.name not in NOT_OPTIONS}
    assert set(options) == set(settings) | {"seed"}  # seed: TrainConfig's, which the run gives the model
    settings["seed"] = next(f for f in fields(TrainConfig) if f.name == "seed")
    for name, field in settings.items():
        default = None if field.default is MISSING else field.default  # --data: required
        assert options[name].default == default, name
        if field.metadata.get("help"):
            assert options[name].help == field.metadata["help"], name


def test_the_presets_change_only_fields() -> None:
    names = {f.name for cls in (ModelConfig, TrainConfig) for f in fields(cls)}
    for preset in recipe.PRESETS.values():
        changes = [preset.model, preset.train, preset.scst, *(c for f in preset.family.values() for c in f.values())]
        assert {k for c in changes for k in c} <= names
        for family in preset.families:  # and make valid configs
            settings = recipe.xe(family, preset)
            ModelConfig(vocab_size=9, **settings["model"])
            TrainConfig(data="d", **settings["train"])
        TrainConfig(data="d", init="run", scst=True, **recipe.scst(preset))


@pytest.mark.parametrize(("cls", "name", "value", "model"), [(TrainConfig, "lr", 0.00123, False),
                                                             (TrainConfig, "val_images", 77, False),
                                                             (ModelConfig, "hidden_size", 384, True)])
def test_changing_a_field_default_changes_the_cli_the_demo_and_the_resume_command(
        monkeypatch, tiny_synth: Path, tmp_path: Path, cls: type, name: str, value, model: bool) -> None:
    old = getattr(cls, name)
    set_default(monkeypatch, cls, name, value)
    flag = "--" + name.replace("_", "-")

    help_text = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200", "TERM": "dumb"}).output
    line = next(line for line in help_text.splitlines() if line.strip().startswith(flag + " "))
    assert f"[default: {value}]" in line, line

    seen = []

    def stub(cfg: TrainConfig, model_kwargs=None, defaults=None):
        seen.append((asdict(cfg) | asdict(ModelConfig(vocab_size=9, **(model_kwargs or {}))), defaults))
        raise Stop

    monkeypatch.setattr(train_mod, "train", stub)
    assert CliRunner().invoke(app, ["train", "--data", "d.txt"]).exit_code == 1  # Stop: the stub saw the run
    settings, cli_defaults = seen.pop()
    assert settings[name] == value and cli_defaults[name] == value
    with pytest.raises(Stop):
        run_demo("photos", tiny_synth, out=tmp_path / "demo", progress=False)
    settings, _ = seen.pop()
    assert settings[name] == value

    def command(setting) -> str:
        if model:
            return resume_command(TrainConfig(data="d.txt"), {name: setting})
        return resume_command(TrainConfig(data="d.txt", **{name: setting}), {})

    assert flag not in command(value).split()
    assert f"{flag} {old}" in command(old)
