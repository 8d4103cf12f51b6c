"""Training end to end on a tiny synthetic set: artifact, per-epoch CSV, cache reuse, resume after SIGKILL."""
from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from captioner import load
from captioner.data.captions import CachedCaptions
from captioner.data.images import eval_transform, load_rgb
from captioner.data.vocab import START, Vocabulary
from captioner.io import read_csv
from captioner.models.backbones import build_trunk
from captioner.models.captioner import CaptionModel, ModelConfig, save_artifact
from captioner.training import module as train_module
from captioner.training.data import CaptionData, caption_collate
from captioner.training.module import CaptionModule
from captioner.training.rewards import CiderD, reference_ids
from captioner.training.run import TrainConfig, cider_document_frequencies, load_records, train

TINY = dict(decoder="show-tell", dropout=0.0, backbone="resnet18", encoder_weights="none", image_size=64, grid=2,
            embed_size=16, hidden_size=32)


def tiny_run(**settings) -> TrainConfig:
    """A tiny run's config: a high rate, no moving average and no early stop, so that a few steps learn (the
    defaults are the photo recipe's)."""
    return TrainConfig(**(dict(lr=0.01, min_lr=0.001, ema=0.0, early_stop=0) | settings))


CLI_TINY = ["--backbone", "resnet18", "--encoder-weights", "none", "--image-size", "64", "--grid", "2",
            "--embed-size", "16", "--hidden-size", "32"]


def rows(run: Path) -> list[dict[str, str]]:
    return read_csv(run / "metrics.csv")


def test_train_writes_artifact_curves_epoch_lines_and_reuses_cache(tiny_synth, tmp_path, capsys, recwarn) -> None:
    """Also: progress bars are on by default, but captured output (a log file, CI) is no terminal: it gets one line
    per epoch, no carriage-return updates, and no "module(s) in eval mode" warning for the frozen encoder."""
    cfg = dict(data=str(tiny_synth), epochs=2, batch_size=16, threshold=1, cache_dir=str(tmp_path / "cache"),
               val_images=8)
    run = train(tiny_run(out=str(tmp_path / "run"), **cfg), TINY)
    out = capsys.readouterr()
    assert "\r" not in out.out + out.err and "encoded 24 images" in out.out
    assert [line.split()[1] for line in out.out.splitlines() if line.startswith("epoch ")] == ["0", "1"]
    assert not [w for w in recwarn if "eval mode" in str(w.message)]
    for name in ("model.safetensors", "config.json", "vocab.json", "metrics.csv", "loss.png", "train_config.json",
                 "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (run / name).is_file(), name
    table = rows(run)
    assert [int(r["epoch"]) for r in table] == [0, 1]
    for r in table:
        assert float(r["lr"]) > 0 and float(r["train_loss"]) > 0 and float(r["val_ppl"]) > 1
        assert 0 <= float(r["val_cider"]) and 0 <= float(r["val_bleu4"]) <= 100  # the 0-100 scale, as printed
        assert 0 < float(r["val_distinct"]) <= 100  # % of the val images with a caption of their own
    assert float(table[0]["lr"]) > float(table[1]["lr"])  # the scheduler lowers it
    model = load(run)
    assert model.config.backbone == "resnet18" and len(model.vocab) == model.config.vocab_size
    train(tiny_run(out=str(tmp_path / "run2"), **cfg), TINY)
    assert "feature cache hit" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_run(out=str(tmp_path / "run"), **cfg), TINY)


def test_padded_batches_train_too(tiny_synth, tmp_path) -> None:
    run = train(tiny_run(data=str(tiny_synth), out=str(tmp_path / "run"), epochs=1, batch_size=16, threshold=1,
                            batching="pad", cache_views=2, cache_dir=str(tmp_path / "cache"), progress=False), TINY)
    assert len(rows(run)) == 1


def test_sigkill_then_resume_records_every_epoch_once(tiny_synth, tmp_path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "captioner", "train", "--data", str(tiny_synth), "--out", str(run), "--epochs", "6",
           "--batch-size", "4", "--threshold", "1", "--early-stop", "0", "--cache-dir", str(tmp_path / "cache"),
           "--no-progress", *CLI_TINY]
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
    run = train(tiny_run(data=str(tiny_synth), out=str(tmp_path / "run"), epochs=1, batch_size=32, threshold=1,
                            progress=False), TINY | {"fine_tune": True})
    tuned, fresh_trunk = load(run), build_trunk("resnet18", "none", 0)[0]
    assert torch.equal(tuned.encoder.backbone.conv1.weight, fresh_trunk.conv1.weight)  # frozen stem
    assert not torch.equal(tuned.encoder.backbone.layer4[0].conv1.weight, fresh_trunk.layer4[0].conv1.weight)
    assert tuned.config.fine_tune and len(rows(run)) == 1


@pytest.mark.parametrize("batching", ["bucket", "pad"])
def test_batches_reshuffle_every_epoch_and_cover_every_caption(tiny_synth, tmp_path, monkeypatch, batching) -> None:
    seen: list[list[int]] = []
    fetch = CachedCaptions.__getitems__

    def record(self: CachedCaptions, indices):
        if self.random_view:  # the training set (validation reads in a fixed order)
            seen.append(list(indices))
        return fetch(self, indices)

    monkeypatch.setattr(CachedCaptions, "__getitems__", record)
    train(tiny_run(data=str(tiny_synth), out=str(tmp_path / "run"), epochs=2, batch_size=16, threshold=1,
                      batching=batching, eval_every=10, cache_dir=str(tmp_path / "cache"), progress=False), TINY)
    half = len(seen) // 2
    first, second = seen[:half], seen[half:]
    for epoch in (first, second):
        assert sorted(i for batch in epoch for i in batch) == list(range(24 * 5))  # every caption once
    assert first != second  # a new order (and new batches) each epoch


def test_early_stopping_counts_evaluations_only(tiny_synth, tmp_path) -> None:
    run = train(tiny_run(data=str(tiny_synth), out=str(tmp_path / "run"), epochs=4, batch_size=16, threshold=1,
                            eval_every=2, early_stop=1, val_images=8, cache_dir=str(tmp_path / "cache"),
                            progress=False), TINY)
    table = rows(run)
    assert [r["epoch"] for r in table if r["val_cider"]] == [r["epoch"] for r in table if int(r["epoch"]) % 2]
    assert (run / "model.safetensors").is_file()


def test_validation_never_uses_training_images(tiny_synth, tmp_path) -> None:
    one_file = dict(data=str(tiny_synth / "annotations" / "captions_train.json"), images=str(tiny_synth / "train"))
    messages: list[str] = []
    train_records, val = load_records(tiny_run(**one_file, val_fraction=0.25), messages.append)
    assert len(val) == 6 and len(train_records) == 18 and "holding out 6 of 24" in " ".join(messages)
    assert not {r.path for r in train_records} & {r.path for r in val}
    again, _ = load_records(tiny_run(**one_file, val_fraction=0.25), messages.append)
    assert again == train_records  # seeded: the same split every time
    _, val = load_records(tiny_run(**one_file, val_data=str(tiny_synth), val_split="val"), messages.append)
    assert len(val) == 8
    with pytest.raises(ValueError, match="also training images"):
        load_records(tiny_run(**one_file, val_data=one_file["data"], val_image_dir=one_file["images"]))
    _, val = load_records(tiny_run(data=str(tiny_synth)), messages.append)  # a folder: its own val split
    assert len(val) == 8 and all(r.split == "val" for r in val)


def test_resume_refuses_changed_flags_unless_safe_and_forced(tiny_synth, tmp_path) -> None:
    cfg = dict(data=str(tiny_synth), out=str(tmp_path / "run"), epochs=1, batch_size=16, threshold=1,
               eval_every=10, cache_dir=str(tmp_path / "cache"), progress=False)
    train(tiny_run(**cfg), TINY)
    with pytest.raises(ValueError, match="--hidden-size was 32, now 64"):
        train(tiny_run(**cfg | {"resume": True}), TINY | {"hidden_size": 64})
    with pytest.raises(ValueError, match="--threshold was 1, now 2"):
        train(tiny_run(**cfg | {"resume": True, "threshold": 2, "force": True}), TINY)
    with pytest.raises(ValueError, match="--force"):
        train(tiny_run(**cfg | {"resume": True, "epochs": 2}), TINY)
    run = train(tiny_run(**cfg | {"resume": True, "epochs": 2, "force": True}), TINY)
    assert [int(r["epoch"]) for r in rows(run)] == [0, 1]


def test_resume_takes_a_model_setting_missing_from_an_older_run_as_its_default(tiny_synth, tmp_path) -> None:
    import json

    cfg = dict(data=str(tiny_synth), out=str(tmp_path / "run"), epochs=1, batch_size=16, threshold=1,
               eval_every=10, cache_dir=str(tmp_path / "cache"), progress=False)
    model = TINY | {"decoder": "attention", "attention_size": 8, "context_size": 8}
    run = train(tiny_run(**cfg), model)
    saved = json.loads((run / "config.json").read_text())
    del saved["attention_score"]  # as a run from before the setting wrote it
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="--attention-score was 'additive', now 'dot'"):
        train(tiny_run(**cfg | {"resume": True}), model | {"attention_score": "dot"})
    train(tiny_run(**cfg | {"resume": True, "epochs": 2, "force": True}), model | {"attention_score": "additive"})
    assert [int(r["epoch"]) for r in rows(run)] == [0, 1]


def test_cli_flags_reach_their_fields_and_epoch_lines_read_well(tiny_synth, tmp_path) -> None:
    import json

    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "captioner", "train", "--data", str(tiny_synth), "--out", str(run),
                           "--epochs", "1", "--batch-size", "8", "--lr", "0.02", "--min-lr", "0.003",
                           "--clip", "2.5", "--threshold", "1", "--eval-every", "3", "--val-images", "5",
                           "--seed", "4", "--cache-dir", str(tmp_path / "cache"), "--no-progress", *CLI_TINY,
                           "--label-smoothing", "0.1", "--scheduled-sampling", "0.05:0:5", "--word-dropout", "0.1",
                           "--train-max-len", "30", "--val-split", "none"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((run / "train_config.json").read_text())
    assert {k: saved[k] for k in ("epochs", "batch_size", "lr", "min_lr", "clip", "threshold", "eval_every",
                                  "val_images", "seed", "label_smoothing", "scheduled_sampling", "word_dropout",
                                  "train_max_len", "val_split")} == dict(
        epochs=1, batch_size=8, lr=0.02, min_lr=0.003, clip=2.5, threshold=1, eval_every=3, val_images=5, seed=4,
        label_smoothing=0.1, scheduled_sampling="0.05:0:5", word_dropout=0.1, train_max_len=30, val_split="none")
    assert "no 'none' split" in done.stdout  # validated on a held-out share of train
    assert any(line.startswith("epoch 0  lr 0.02") for line in done.stdout.splitlines()), done.stdout


def test_a_batch_whose_images_all_failed_is_skipped() -> None:
    vocab = Vocabulary.build(["a cat"], threshold=1)
    config = ModelConfig(vocab_size=len(vocab), fine_tune=True, **TINY)
    module = CaptionModule(asdict(config), vocab.itos, asdict(tiny_run(data="unused")))
    assert caption_collate([None, None]) == ()  # not None, which Lightning would drop before the step (DDP hangs)
    assert module.training_step((), 0) is None  # one process: no loss, no step
    assert module.validation_step((), 0) is None


@pytest.mark.parametrize("baseline", ["mean"])  # "greedy" raises it too (+24 % here) at twice the test time
def test_self_critical_training_raises_the_reward(tiny_synth, tmp_path, baseline) -> None:
    cache = str(tmp_path / "cache")
    xe = train(tiny_run(data=str(tiny_synth), out=str(tmp_path / "xe"), epochs=3, batch_size=16, threshold=1,
                           eval_every=10, cache_dir=cache, progress=False), TINY)
    run = train(tiny_run(data=str(tiny_synth), out=str(tmp_path / "scst"), epochs=12, batch_size=4, threshold=1,
                            eval_every=12, val_images=8, cache_dir=cache, progress=False, scst=True, init=str(xe),
                            lr=3e-3, min_lr=3e-3, scheduler="none", scst_baseline=baseline))
    table = rows(run)
    rewards = [float(r["train_reward"]) for r in table]
    # +34-41% after 12 epochs (lr 1e-2 rose +30% or not at all, by the last digits of the features); 6 are within the
    # draws' noise
    assert sum(rewards[-2:]) > 1.15 * sum(rewards[:2]), rewards
    assert all(0 < float(r["sample_len"]) <= 20 for r in table) and table[-1]["val_cider"]
    assert (run / "cider_df.npz").is_file() and load(run).config == load(xe).config


def test_with_ema_the_average_is_validated_and_saved(tiny_synth, tmp_path, monkeypatch) -> None:
    """--ema: the captions scored for val CIDEr (which picks the saved checkpoint) come from the weights' moving
    average, and that average is what the artifact holds, not the last step's weights."""
    scored: list[torch.Tensor] = []
    score = train_module.generation_scores

    def spy(model, *args, **kwargs):
        scored.append(model.decoder.out.weight.detach().clone())
        return score(model, *args, **kwargs)

    monkeypatch.setattr(train_module, "generation_scores", spy)
    run = train(tiny_run(data=str(tiny_synth), out=str(tmp_path / "run"), epochs=2, batch_size=8, threshold=1,
                            eval_every=2, val_images=8, ema=0.9, cache_dir=str(tmp_path / "cache"), progress=False),
                TINY)
    saved = load(run).decoder.out.weight
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert len(scored) == 1 and torch.equal(scored[0], saved)
    assert not torch.allclose(last["current_model_state"]["model.decoder.out.weight"], saved)


def test_the_moving_average_is_the_plain_ema_and_leaves_the_frozen_trunk_alone(monkeypatch) -> None:
    """The average of every trained tensor (decoder weights and its BatchNorm statistics) is torch's EMA of it; the
    frozen trunk's tensors are copied once and never averaged again (they never change)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from captioner.training.callbacks import moving_average

    vocab = Vocabulary.build(["a cat on a mat"], threshold=1)
    module = CaptionModule(asdict(ModelConfig(vocab_size=len(vocab), **TINY)), vocab.itos, asdict(tiny_run(data="-")))
    ours = AveragedModel(module, multi_avg_fn=moving_average(module, 0.9)._kwargs["multi_avg_fn"], use_buffers=True)
    plain = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    trunk = {module.state_dict(keep_vars=True)[k].data_ptr() for k in module._frozen_trunk()}
    lerped, lerp = [], torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda a, b, w: lerped.extend(b) or lerp(a, b, w))
    g, averaged = torch.Generator().manual_seed(0), 0
    for _ in range(3):
        with torch.no_grad():
            for p in module.model.decoder.parameters():
                p.add_(torch.randn(p.shape, generator=g))
            module.model.decoder.standardize.running_mean.add_(1.0)
        lerped.clear()
        ours.update_parameters(module)
        assert trunk and not {t.data_ptr() for t in lerped} & trunk
        averaged += len(lerped)
        plain.update_parameters(module)
    assert averaged  # the first update copies; the next two average
    for (name, a), b in zip(ours.module.state_dict().items(), plain.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_resume_with_ema_gives_the_same_model_as_one_run_from_checkpoints_without_the_trunk(tiny_synth,
                                                                                              tmp_path) -> None:
    cfg = dict(data=str(tiny_synth), batch_size=8, threshold=1, scheduler="none", eval_every=2, val_images=8,
               ema=0.9, cache_dir=str(tmp_path / "cache"), progress=False)  # saved: the second epoch's average
    straight = train(tiny_run(out=str(tmp_path / "straight"), epochs=2, **cfg), TINY)
    for name in ("last", "best"):  # the frozen trunk is rebuilt from config: neither the average nor the weights
        saved = torch.load(straight / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=True)
        keys = [*saved["state_dict"], *saved["current_model_state"], *saved["averaging_state"]]
        assert "model.decoder.out.weight" in keys and not [k for k in keys if ".encoder.backbone." in k], name
    train(tiny_run(out=str(tmp_path / "resumed"), epochs=1, **cfg), TINY)
    resumed = train(tiny_run(out=str(tmp_path / "resumed"), epochs=2, resume=True, force=True, **cfg), TINY)
    assert (straight / "model.safetensors").read_bytes() == (resumed / "model.safetensors").read_bytes()


def test_sigterm_exits_non_zero_saying_what_was_saved_and_how_to_resume(tiny_synth, tmp_path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "captioner", "train", "--data", str(tiny_synth), "--out", str(run), "--epochs", "2",
           "--batch-size", "4", "--threshold", "1", "--early-stop", "0", "--cache-dir", str(tmp_path / "cache"),
           "--no-progress", *CLI_TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((run / "metrics.csv").is_file() and rows(run)):
        assert proc.poll() is None, "training ended before it could be stopped"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "no model was exported" in err and str(run / "checkpoints" / "last.ckpt") in err, err[-2000:]
    assert not (run / "model.safetensors").is_file()
    command = shlex.split(err.strip().splitlines()[-1])
    assert command[:2] == ["captioner", "train"] and command[-1] == "--resume", err[-2000:]
    done = subprocess.run([sys.executable, "-m", "captioner", *command[1:]], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [int(r["epoch"]) for r in rows(run)] == [0, 1] and (run / "model.safetensors").is_file()


def test_a_validation_source_without_usable_images_stops_instead_of_holding_out(tiny_synth, tmp_path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    for image in (data / "val").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match=r"'val' split of .*data has no usable images: 8 missing file"):
        load_records(tiny_run(data=str(data)))  # a folder's own val split
    one_file = dict(data=str(tiny_synth / "annotations" / "captions_train.json"), images=str(tiny_synth / "train"))
    with pytest.raises(ValueError, match=r"--val-data .*data has no usable images: 8 missing file"):
        load_records(tiny_run(**one_file, val_data=str(data)))


def test_forced_resume_applies_the_new_schedule_patience_and_val_subset(tiny_synth, tmp_path, monkeypatch,
                                                                        capsys) -> None:
    """--force --epochs follows the closed-form cosine of the new length; --force --early-stop takes the new
    patience; --force --val-images forgets the best CIDEr measured on the other subset (the scorer is stubbed:
    5.0 in the first run, 1.0 after, so the old best would stop the run and keep the old best.ckpt)."""
    cider = [5.0]
    monkeypatch.setattr(train_module, "generation_scores",
                        lambda *a, **k: {"Bleu_4": 1.0, "CIDEr": cider[0], "distinct": 50.0})
    cfg = dict(data=str(tiny_synth), out=str(tmp_path / "run"), batch_size=16, threshold=1, lr=0.01, min_lr=0.001,
               cache_dir=str(tmp_path / "cache"), progress=False)
    train(tiny_run(**cfg, epochs=1, early_stop=1, val_images=8), TINY)
    cider[0] = 1.0
    run = train(tiny_run(**cfg, epochs=3, early_stop=5, val_images=4, resume=True, force=True), TINY)
    table = rows(run)
    assert [int(r["epoch"]) for r in table] == [0, 1, 2]  # patience 5, not the run's 1
    closed = [0.001 + 0.009 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)]
    assert [float(r["lr"]) for r in table] == pytest.approx(closed, rel=1e-6)
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] == 1 and sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert "--val-images changed" in capsys.readouterr().out


def test_self_critical_fine_tunes_from_a_fine_tuned_run_and_resumes_with_its_own_flags(tiny_synth, tmp_path) -> None:
    """SCST from a --fine-tune run reads images (it crashed on caption batches), and its resume ignores the model
    flags as its first run did (the CLI passes them all: they were compared with the --init model's)."""
    cli_like = TINY | {"backbone": "resnet50", "hidden_size": 512}  # what the command line said: unused with --init
    records, _ = load_records(tiny_run(data=str(tiny_synth)), log=lambda _: None)
    vocab = Vocabulary.build((c for r in records for c in r.captions), threshold=1)
    torch.manual_seed(0)
    xe = save_artifact(CaptionModel(ModelConfig(vocab_size=len(vocab), fine_tune=True, **TINY)), vocab,
                       tmp_path / "xe")  # a fine-tuned run's artifact (its training is another test's)
    cfg = dict(data=str(tiny_synth), out=str(tmp_path / "scst"), batch_size=8, threshold=1, eval_every=10,
               progress=False, scst=True, init=str(xe), lr=1e-3, min_lr=1e-3, scheduler="none")
    train(tiny_run(**cfg, epochs=1), cli_like)
    run = train(tiny_run(**cfg, epochs=2, resume=True, force=True), cli_like)
    table = rows(run)
    assert [int(r["epoch"]) for r in table] == [0, 1] and all(float(r["sample_len"]) > 0 for r in table)
    tuned, start = load(run), load(xe)
    assert tuned.config == start.config and tuned.config.fine_tune
    assert not torch.equal(tuned.encoder.backbone.layer4[0].conv1.weight, start.encoder.backbone.layer4[0].conv1.weight)


def test_cider_frequencies_left_by_another_run_are_recomputed(tmp_path, capsys) -> None:
    """A cider_df.npz counted from other captions (a killed attempt's, another data set's) is not reused."""
    vocab = Vocabulary.build(["a red circle", "a blue square", "a green star"], threshold=1)
    old = [reference_ids(vocab, ["a red circle"]), reference_ids(vocab, ["a blue square"])]
    new = [reference_ids(vocab, ["a green star"]), reference_ids(vocab, ["a blue square"])]
    path = tmp_path / "cider_df.npz"
    CiderD.from_references(old).save(path)
    cider = cider_document_frequencies(path, new, vocab)
    expected = CiderD.from_references(new)
    np.testing.assert_array_equal(cider.document_frequency, expected.document_frequency)
    np.testing.assert_array_equal(CiderD.load(path).ngrams, expected.ngrams)
    assert "recomputing" in capsys.readouterr().out
    assert cider_document_frequencies(path, new, vocab).key == cider.key  # its own file: reused
    assert "recomputing" not in capsys.readouterr().out
    other = Vocabulary(vocab.itos[:4] + sorted(vocab.itos[4:], reverse=True))  # the same ids spell other words
    assert cider_document_frequencies(path, new, other).key != cider.key


def test_fine_tuning_validates_on_the_eval_transform(tiny_synth) -> None:
    """val_loss of a fine-tuned run reads each image as evaluation does, not a new random crop every time."""
    cfg = tiny_run(data=str(tiny_synth), threshold=1, val_images=2)
    train_records, val_records = load_records(cfg, log=lambda _: None)
    vocab = Vocabulary.build((c for r in train_records for c in r.captions), threshold=1)
    model_cfg = ModelConfig(vocab_size=len(vocab), fine_tune=True, **TINY)
    module = CaptionModule(asdict(model_cfg), vocab.itos, asdict(cfg))
    data = CaptionData(cfg, model_cfg, train_records, val_records, vocab)
    data.trainer = SimpleNamespace(lightning_module=module)
    data.setup("fit")
    spec = module.model.encoder.spec
    expected = eval_transform(64, spec.mean, spec.std)(load_rgb(val_records[0].path))
    assert all(torch.equal(data.val_set[0][0], expected) for _ in range(3))



def test_validation_decodes_each_epochs_weights_not_a_stale_copy(tiny_synth, tmp_path, monkeypatch) -> None:
    """Decoding keeps copies of the decoder's weights laid out for speed until a version counter says they changed;
    fused Adam and the moving average's swap write the weights without moving any: validation must still decode the
    weights of its epoch (a stale copy had val CIDEr fall from the first epoch on Flickr8k, and the demo serve it)."""
    gaps: list[float] = []
    score = train_module.generation_scores

    def spy(model, *args, **kwargs):
        decoder, features = model.decoder, torch.randn(3, 4, model.encoder.feature_size)
        tokens = torch.full((3,), START)
        with torch.no_grad():
            cached = decoder.step(tokens, decoder.start(features))[0]  # the laid-out copies
        with torch.enable_grad():
            live = decoder.step(tokens, decoder.start(features))[0].detach()  # the parameters themselves
        gaps.append(float((cached - live).abs().max()))
        return score(model, *args, **kwargs)

    monkeypatch.setattr(train_module, "generation_scores", spy)
    train(tiny_run(data=str(tiny_synth), out=str(tmp_path / "run"), epochs=3, batch_size=8, threshold=1,
                   eval_every=1, val_images=8, ema=0.9, cache_dir=str(tmp_path / "cache"), progress=False), TINY)
    assert len(gaps) == 3 and max(gaps) < 1e-4, gaps
