"""The model card (README.md) of a run folder and of its ONNX export: Hugging Face layout, metrics and commands."""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from captioner.cli import app
from captioner.model_card import licence_note

runner = CliRunner()


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_a_run_folder_and_its_onnx_export_carry_a_model_card(tiny_synth: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = invoke("train", "--data", tiny_synth, "--out", run, "--backbone", "resnet18", "--encoder-weights", "none",
                    "--image-size", 32, "--grid", 2, "--embed-size", 8, "--hidden-size", 16, "--epochs", 1,
                    "--batch-size", 16, "--val-images", 4, "--threshold", 1, "--early-stop", 0,
                    "--cache-dir", tmp_path / "cache", "--no-progress")
    assert result.exit_code == 0, result.output
    text = (run / "README.md").read_text()
    meta = front_matter(text)
    assert meta["language"] == ["en"] and meta["pipeline_tag"] == "image-to-text"
    assert "image-captioning" in meta["tags"] and meta["datasets"] == ["synthetic"]
    assert "no third-party rights" in meta["license_note"]
    for section in ("## Encoder", "## Data", "## Training", "## Metrics", "## Captions", "## Licence"):
        assert section in text
    assert "backbone: `resnet18`, weights: `none`" in text and "input 32 px" in text and "2 x 2 grid" in text
    assert f"captioner train --data {tiny_synth}" in text and "--backbone resnet18" in text
    cider = max(float(r.split(",")[7]) for r in (run / "metrics.csv").read_text().splitlines()[1:])
    assert "| val (epoch 1, greedy) |" in text and f" {cider:.1f} |" in text
    assert "| test |" not in text

    result = invoke("evaluate", "--model", run, "--data", tiny_synth, "--split", "test", "--no-java", "--beam", 2,
                    "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    text = (run / "README.md").read_text()
    bleu = json.loads((run / "metrics_test.json").read_text())["Bleu_4"]
    assert f"| test | {bleu:.1f} |" in text
    assert f"captioner evaluate --model {run} --data {tiny_synth} --split test --beam 2" in text

    result = invoke("export", "--model", run, "--onnx", tmp_path / "onnx")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "onnx" / "README.md").read_text() == text  # the evaluate command is kept


def test_the_licence_note_names_known_data_and_asks_for_the_rest() -> None:
    assert "research use only" in licence_note("/data/flickr8k/Flickr8k.token.txt")
    assert "CC BY 4.0" in licence_note("annotations/captions_train2017.json (COCO 2017)")
    assert "state the data's licence" in licence_note("/data/my_captions.csv")
