"""The main job (`captioner demo --data`) end to end on the photos preset, on a tiny Flickr-layout set without a test
list; the served-model rule."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from captioner import recipe
from captioner.data.datasets import open_split
from captioner.demo import run_demo, scored_split, served_run

TINY_MODEL = dict(backbone="resnet18", encoder_weights="none", image_size=64, grid=2, embed_size=16, hidden_size=32,
                  attention_size=16, context_size=16)


@pytest.fixture
def flickr_layout(tiny_synth: Path, tmp_path: Path) -> Path:
    """The tiny synthetic set's train and val images as a Flickr token file with train/dev lists (no test list)."""
    lines, lists = [], {}
    for split in ("train", "val"):
        records, _ = open_split(tiny_synth, split)
        lists[split] = [r.path.name for r in records]
        lines += [f"{r.path.name}#{k}\t{c}" for r in records for k, c in enumerate(r.captions)]
        for r in records:
            (tmp_path / "images").mkdir(exist_ok=True)
            (tmp_path / "images" / r.path.name).write_bytes(r.path.read_bytes())
    (tmp_path / "captions.token.txt").write_text("\n".join(lines))
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("\n".join(lists["train"]))
    (tmp_path / "Flickr_8k.devImages.txt").write_text("\n".join(lists["val"]))
    return tmp_path / "captions.token.txt"


@pytest.mark.slow
def test_photo_demo_scores_val_when_there_is_no_test_split(flickr_layout: Path, tmp_path: Path) -> None:
    tiny = replace(recipe.PRESETS["photos"], families=("show-tell", "attention"), model=TINY_MODEL,
                   train=dict(epochs=1, batch_size=16, threshold=1, ema=0.0))
    images = flickr_layout.parent / "images"
    assert scored_split(flickr_layout, images) == "val"
    out = tmp_path / "out"
    summary = run_demo(tiny, flickr_layout, images, out, progress=False)
    assert summary["split"] == "val" and summary["served"] in ("show-tell", "attention", "show-tell + SCST",
                                                              "attention + SCST")
    labels = set(summary["metrics"])
    assert {"show-tell, greedy", "attention, beam 3", "blind (same input for every image)"} <= labels
    assert set(summary["diagnostics"]) == labels and all("distinct" in d for d in summary["diagnostics"].values())
    for name in ("grid_val.png", "attention_val.png", "demo_summary.json", "model/metrics_val.json",
                 "model/model.safetensors"):
        assert (out / name).is_file(), name
    val_names = {line for line in (flickr_layout.parent / "Flickr_8k.devImages.txt").read_text().split()}
    trained = json.loads((out / "show-tell" / "train_config.json").read_text())
    assert trained["val_split"] == "none"  # the scored split never validated the runs: a hold-out of train did
    assert len(val_names) == 8 and summary["phases_s"]["total"] > 0


def fake_run(folder: Path, rows: list[tuple[float, float]]) -> Path:
    """A run folder whose metrics.csv has one (val_cider, val_distinct) row an epoch."""
    folder.mkdir()
    lines = ["epoch,val_cider,val_distinct"] + [f"{i},{c},{d}" for i, (c, d) in enumerate(rows)]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_the_served_model_is_the_best_by_val_cider_among_those_with_varied_captions(tmp_path: Path, capsys) -> None:
    xe = fake_run(tmp_path / "xe", [(30.0, 70.0), (35.0, 62.0), (34.0, 30.0)])  # its best epoch: 35.0, 62%
    scst = fake_run(tmp_path / "scst", [(37.0, 47.0)])  # better CIDEr, the same few captions for more photos
    assert served_run({"show-tell": xe, "show-tell + SCST": scst}) == "show-tell"
    assert "serving show-tell, not show-tell + SCST: show-tell + SCST's val captions are 47% distinct" in \
        capsys.readouterr().out
    varied = fake_run(tmp_path / "varied", [(36.0, 56.0)])  # 90% of 62: varied enough
    assert served_run({"show-tell": xe, "show-tell + SCST": varied}) == "show-tell + SCST"
    assert capsys.readouterr().out == ""
    old = fake_run(tmp_path / "old", [(36.0, 0.0)])
    (old / "metrics.csv").write_text("epoch,val_cider\n0,36.0\n")  # from before val_distinct: not held back
    assert served_run({"show-tell": xe, "old": old}) == "old"
    assert served_run({"show-tell": xe, "show-tell + SCST": scst, "old": old}) == "old"
