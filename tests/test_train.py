"""Training end to end on a tiny synthetic set: artifact, per-epoch CSV, cache reuse, resume after SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from captioner import load
from captioner.data.vocab import Vocabulary
from captioner.io import read_csv
from captioner.models.captioner import ModelConfig
from captioner.models.encoder import build_backbone
from captioner.train import CaptionModule, TrainConfig, train

TINY = dict(backbone="resnet18", encoder_weights="none", image_size=64, embed_size=16, hidden_size=32)


def rows(run: Path) -> list[dict[str, str]]:
    return read_csv(run / "metrics.csv")


def test_train_writes_artifact_curves_and_reuses_cache(tiny_synth, tmp_path, capsys) -> None:
    cfg = dict(data=str(tiny_synth), epochs=2, batch_size=16, threshold=1, cache_dir=str(tmp_path / "cache"),
               progress=False, val_images=8)
    run = train(TrainConfig(out=str(tmp_path / "run"), **cfg), TINY)
    for name in ("model.safetensors", "config.json", "vocab.json", "metrics.csv", "loss.png", "train_config.json",
                 "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (run / name).is_file(), name
    table = rows(run)
    assert [int(r["epoch"]) for r in table] == [0, 1]
    for r in table:
        assert float(r["lr"]) > 0 and float(r["train_loss"]) > 0 and float(r["val_ppl"]) > 1
        assert 0 <= float(r["val_cider"]) and 0 <= float(r["val_bleu4"]) <= 1
    assert float(table[0]["lr"]) > float(table[1]["lr"])  # the scheduler lowers it
    assert "encoded 24 images" in capsys.readouterr().out
    model = load(run)
    assert model.config.backbone == "resnet18" and len(model.vocab) == model.config.vocab_size
    train(TrainConfig(out=str(tmp_path / "run2"), **cfg), TINY)
    assert "feature cache hit" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="--resume"):
        train(TrainConfig(out=str(tmp_path / "run"), **cfg), TINY)


def test_padded_batches_train_too(tiny_synth, tmp_path) -> None:
    run = train(TrainConfig(data=str(tiny_synth), out=str(tmp_path / "run"), epochs=1, batch_size=16, threshold=1,
                            batching="pad", cache_views=2, cache_dir=str(tmp_path / "cache"), progress=False), TINY)
    assert len(rows(run)) == 1


def test_sigkill_then_resume_records_every_epoch_once(tiny_synth, tmp_path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "captioner", "train", "--data", str(tiny_synth), "--out", str(run), "--epochs", "6",
           "--batch-size", "4", "--threshold", "1", "--cache-dir", str(tmp_path / "cache"), "--no-progress",
           "--backbone", "resnet18", "--encoder-weights", "none", "--image-size", "64", "--embed-size", "16",
           "--hidden-size", "32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ((run / "metrics.csv").is_file() and len(rows(run)) >= 2):
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(rows(run))
    assert killed_at < 6
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [int(r["epoch"]) for r in rows(run)] == list(range(6))
    assert (run / "model.safetensors").is_file()


def test_fine_tuning_trains_the_last_stage_from_images(tiny_synth, tmp_path) -> None:
    run = train(TrainConfig(data=str(tiny_synth), out=str(tmp_path / "run"), epochs=1, batch_size=32, threshold=1,
                            progress=False), TINY | {"fine_tune": True})
    tuned, fresh_trunk = load(run), build_backbone("resnet18", "none", 0)[0]
    assert torch.equal(tuned.encoder.backbone.conv1.weight, fresh_trunk.conv1.weight)  # frozen stem
    assert not torch.equal(tuned.encoder.backbone.layer4[0].conv1.weight, fresh_trunk.layer4[0].conv1.weight)
    assert tuned.config.fine_tune and len(rows(run)) == 1


def test_a_batch_whose_images_all_failed_is_skipped() -> None:
    vocab = Vocabulary.build(["a cat"], threshold=1)
    config = ModelConfig(vocab_size=len(vocab), fine_tune=True, **TINY)
    module = CaptionModule(asdict(config), vocab.itos, asdict(TrainConfig(data="unused")))
    assert module.training_step(None, 0) is None  # pad_collate's empty batch: no loss, no step
    assert module.validation_step(None, 0) is None
