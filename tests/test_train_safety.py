"""Runs and models are never lost: the run folder's lock, a model folder refused, the printed resume command,
Ctrl-C, a full disk under the feature cache, non-finite steps, an error mid-run, runaway captions, progress lines."""
from __future__ import annotations

import errno
import json
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

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import captioner.training.run as train_mod
from captioner import load
from captioner.cli import _defaults, app
from captioner.data.datasets import open_split
from captioner.data.vocab import PAD, START, UNK, Vocabulary
from captioner.features import FeatureCache, encode_images, fingerprint
from captioner.io import read_csv, write_together
from captioner.models.captioner import CaptionModel, ModelConfig, save_artifact
from captioner.progress import ProgressLines
from captioner.search.decode import sample
from captioner.training.data import CaptionData
from captioner.training.exit import TrainingFailed, cli_defaults, resume_command
from captioner.training.module import CaptionModule
from captioner.training.run import TrainConfig, train

TINY = dict(decoder="show-tell", dropout=0.0, backbone="resnet18", encoder_weights="none", image_size=64, grid=2,
            embed_size=16, hidden_size=32)


def tiny_run(**settings) -> TrainConfig:
    """A tiny run's config: a high rate, no moving average and no early stop, so that a few steps learn (the
    defaults are the photo recipe's)."""
    return TrainConfig(**(dict(lr=0.01, min_lr=0.001, ema=0.0, early_stop=0) | settings))


CLI_TINY = ["--backbone", "resnet18", "--encoder-weights", "none", "--image-size", "64", "--grid", "2",
            "--embed-size", "16", "--hidden-size", "32"]


def cli(tiny_synth: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "captioner", "train", "--data", str(tiny_synth), "--out", str(out), "--batch-size",
            "4", "--threshold", "1", "--early-stop", "0", "--cache-dir", str(cache), "--no-progress", *CLI_TINY,
            *extra]


def wait_for(proc: subprocess.Popen, ready, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert proc.poll() is None, f"training ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def model_folder(tiny_synth: Path, folder: Path) -> Path:
    """A copied model folder: model.safetensors, config.json, vocab.json and no run."""
    records, _ = open_split(tiny_synth, "train")
    vocab = Vocabulary.build((c for r in records for c in r.captions), 1)
    return save_artifact(CaptionModel(ModelConfig(vocab_size=len(vocab), **TINY)), vocab, folder)


def test_a_second_run_in_the_same_folder_stops_at_once_naming_the_holder(tiny_synth, tmp_path) -> None:
    run = tmp_path / "run"
    first = subprocess.Popen(cli(tiny_synth, run, tmp_path / "cache", "--epochs", "50"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(first, lambda: (run / "train.lock.pid").is_file(), "it locked its folder")
        start = time.monotonic()
        second = CliRunner().invoke(app, cli(tiny_synth, run, tmp_path / "cache", "--epochs", "1")[3:])
        assert second.exit_code == 2, second.output
        assert f"run folder {run} is in use by pid {first.pid}" in second.output, second.output
        assert time.monotonic() - start < 10  # at once: no data read, nothing written
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()
    assert not (run / "model.safetensors").exists()


def test_a_folder_holding_a_model_is_refused_unless_forced_and_survives_a_stop(tiny_synth, tmp_path, monkeypatch,
                                                                                capsys) -> None:
    """Also: Ctrl-C before the first epoch says what SIGTERM says and exits 130."""
    folder = model_folder(tiny_synth, tmp_path / "model")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    cfg = dict(data=str(tiny_synth), out=str(folder), epochs=1, batch_size=16, threshold=1,
               cache_dir=str(tmp_path / "cache"), progress=False)
    with pytest.raises(FileExistsError, match="holds a model .*--force"):
        train(tiny_run(**cfg), TINY)

    def interrupted(self, stage: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(CaptionData, "setup", interrupted)
    with pytest.raises(SystemExit) as stop:
        train(tiny_run(force=True, **cfg), TINY)
    assert stop.value.code == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again
    err = capsys.readouterr().err
    assert "stopped by Ctrl-C in epoch 1 of 1; no model was exported" in err and "start again with" in err, err
    assert {name: (folder / name).read_bytes() for name in before} == before
    load(folder)  # the model is whole


def test_training_over_a_model_with_force_replaces_it_at_export(tiny_synth, tmp_path) -> None:
    folder = model_folder(tiny_synth, tmp_path / "model")
    old = (folder / "model.safetensors").read_bytes()
    train(tiny_run(data=str(tiny_synth), out=str(folder), epochs=1, batch_size=16, threshold=1, force=True,
                      cache_dir=str(tmp_path / "cache"), progress=False), TINY | {"embed_size": 8})
    assert (folder / "model.safetensors").read_bytes() != old and load(folder).config.embed_size == 8


@pytest.mark.parametrize("flags", [
    ["--epochs", "20"],  # settings away from the defaults
    ["--batch-size", "512", "--lr", "0.01", "--min-lr", "0.001", "--ema", "0", "--early-stop", "0"],
    ["--decoder", "show-tell", "--no-batch-norm", "--train-max-len", "0", "--threshold", "1", "--val-split", "none"],
    ["--init", "runs/x", "--scst", "--epochs", "2", "--batch-size", "50", "--lr", "5e-5", "--scheduler", "none"],
])
def test_every_printed_command_resumes_its_own_run(monkeypatch, flags) -> None:
    seen = []
    monkeypatch.setattr(train_mod, "train", lambda cfg, kwargs, defaults=None: seen.append((cfg, kwargs, defaults)))
    runner = CliRunner()
    assert runner.invoke(app, ["train", "--data", "d.txt", "--out", "runs/y", *flags]).exit_code == 0
    cfg, kwargs, defaults = seen[-1]
    for given in (defaults, None):  # the CLI's own defaults, and the ones a library caller's command assumes
        command = shlex.split(resume_command(cfg, kwargs, defaults=given))
        assert command[:2] == ["captioner", "train"] and command[-1] == "--resume"
        assert runner.invoke(app, command[1:]).exit_code == 0, command
        again, again_kwargs, _ = seen[-1]
        assert asdict(again) == asdict(cfg) | {"resume": True}, command
        if not cfg.init:  # with --init the model comes from there
            assert again_kwargs == kwargs, command


def test_the_defaults_a_printed_command_assumes_are_the_clis() -> None:
    import click
    import typer.main

    real = _defaults(click.Context(typer.main.get_command(app).commands["train"]))
    assumed = cli_defaults()
    assert {k: (real[k], assumed[k]) for k in real.keys() & assumed.keys() if real[k] != assumed[k]} == {}


def test_ctrl_c_says_what_was_saved_and_the_printed_command_finishes_the_run(tiny_synth, tmp_path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(cli(tiny_synth, run, tmp_path / "cache", "--epochs", "20"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(proc, lambda: (run / "checkpoints" / "last.ckpt").is_file(), "an epoch was saved")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    # 130, or killed by SIGINT when CPython saw the KeyboardInterrupt as unhandled: a shell says 130 for both
    assert proc.returncode in (128 + signal.SIGINT, -signal.SIGINT), err[-2000:]
    assert "stopped by Ctrl-C" in err and str(run / "checkpoints" / "last.ckpt") in err, err[-2000:]
    command = shlex.split(err.strip().splitlines()[-1])
    assert command[:2] == ["captioner", "train"] and command[-1] == "--resume" and "--epochs" in command, err
    command[command.index("--epochs") + 1] = "3"  # finish sooner: --force accepts a new --epochs
    done = subprocess.run([sys.executable, "-m", "captioner", *command[1:], "--force"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [int(r["epoch"]) for r in read_csv(run / "metrics.csv")] == [0, 1, 2] and load(run)


def encode(tiny_synth: Path, cache: Path, log=print) -> tuple[np.ndarray, np.ndarray]:
    paths = sorted((tiny_synth / "train").glob("*.png"))
    assert paths
    return encode_images(paths, "resnet18", "none", 0, 64, cache_dir=cache, batch_size=8, progress=False, grid=2,
                         log=log)


def test_a_full_disk_stops_the_cache_before_encoding_and_a_rerun_completes_it(tiny_synth, tmp_path,
                                                                              monkeypatch) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    lines: list[str] = []
    with pytest.raises(OSError, match=r"no space left on .*: need 0\.\d+ GB in .*cache") as stop:
        encode(tiny_synth, tmp_path / "cache", lines.append)
    assert stop.value.errno == errno.ENOSPC and "--cache-dir" in str(stop.value)
    assert not [line for line in lines if line.startswith("encoded")]  # stopped before the encoder ran
    assert not list((tmp_path / "cache").glob("*.npy"))
    monkeypatch.undo()
    features, ok = encode(tiny_synth, tmp_path / "cache")
    assert features.shape[0] == len(ok) == 24 and ok.all() and np.isfinite(features).all()


def test_a_damaged_cache_file_is_rebuilt_saying_so(tiny_synth, tmp_path) -> None:
    first, _ = encode(tiny_synth, tmp_path / "cache")
    first = np.array(first)
    array = next(p for p in (tmp_path / "cache").glob("*.npy"))
    os.truncate(array, array.stat().st_size // 2)  # a copy cut short, a disk that filled up
    lines: list[str] = []
    again, _ = encode(tiny_synth, tmp_path / "cache", lines.append)
    assert any("damaged" in line and "rebuilding" in line for line in lines), lines
    assert np.array_equal(np.array(again), first)


def test_a_sparse_partial_array_left_by_an_older_build_gets_its_space_reserved(tiny_synth, tmp_path,
                                                                               monkeypatch) -> None:
    paths = sorted((tiny_synth / "train").glob("*.png"))
    cache = FeatureCache(tmp_path / "cache", fingerprint("resnet18", "none", 0, 64, 1, paths, grid=2))
    cache.folder.mkdir(parents=True)
    np.lib.format.open_memmap(cache.partial_path, mode="w+", dtype=np.float16, shape=(24, 1, 4, 512)).flush()
    reserved = []
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, offset, length: reserved.append(length))
    cache.prepare((24, 1, 4, 512))
    assert reserved == [cache.partial_path.stat().st_size]


@pytest.mark.parametrize("decoder", ["show-tell", "attention"])
def test_sampling_survives_a_model_sure_of_a_ruled_out_word(decoder) -> None:
    """The self-critical crash: all but a ruled-out word (<unk>) at log-probability < -104, whose exp is 0 in float32:
    `torch.multinomial` got a row of zeros ("invalid multinomial distribution (sum of probabilities <= 0)")."""
    torch.manual_seed(0)
    model = CaptionModel(ModelConfig(vocab_size=30, **TINY | {"decoder": decoder})).eval()
    with torch.no_grad():
        model.decoder.out.bias[UNK] = 1000.0
        features = model.features(torch.randn(3, 4, 512))
    ids, log_probs = sample(model.decoder, features, n=4, max_len=6)
    assert ids.shape == (12, 6) and not (ids == UNK).any()
    assert torch.isfinite(log_probs).all() and (log_probs <= 0).all()
    with torch.no_grad():
        model.decoder.out.weight.fill_(float("nan"))  # non-finite weights: a caption of <end>, not finite
    ids, log_probs = sample(model.decoder, features, n=2, max_len=6)
    assert not torch.isfinite(log_probs).any()


@pytest.mark.parametrize("decoder", ["show-tell", "attention"])
def test_a_self_critical_step_moves_no_mass_to_words_the_sampler_cannot_draw(decoder) -> None:
    """The German SCST collapse: the sampled captions' log-probabilities counted the ruled-out words (<unk>, <pad>,
    <start>) in their normaliser, so every step with a negative advantage pushed mass onto <unk>, which is never
    drawn and so never pushed back; after ~70 steps the samples' log-probability fell from -20 to -360 and val CIDEr
    from 45 to 3.5. Now they are normalised over the drawable words: no gradient reaches a ruled-out word, and a
    single word's probabilities over everything that can be drawn sum to 1."""
    torch.manual_seed(0)
    model = CaptionModel(ModelConfig(vocab_size=12, **TINY | {"decoder": decoder}))
    with torch.no_grad():
        model.decoder.out.bias[UNK] = 5.0  # the model gives <unk> most of the mass, as after rare German words
    features = model.features(torch.randn(2, 4, 512))
    ids, log_probs = sample(model.decoder, features, n=400, max_len=1)
    log_probs.sum().backward()
    bias = model.decoder.out.bias.grad
    assert bias[[UNK, START, PAD]].abs().max() < 1e-4 * bias.abs().max()  # 0 but for rounding
    # one-word captions of the first image: each drawable word's probability, found by sampling
    first = dict(zip(ids[:400, 0].tolist(), log_probs[:400].tolist(), strict=True))
    assert len(first) == 12 - 4  # every word but <pad>, <start>, <unk> and <end> (not a first word) was drawn
    assert sum(math.exp(lp) for lp in first.values()) == pytest.approx(1.0, abs=1e-5)


def test_non_finite_steps_are_skipped_and_counted_and_progress_lines_go_to_a_log(tiny_synth, tmp_path, monkeypatch,
                                                                                 capsys) -> None:
    """Also: with output to a file, a progress line every $CAPTIONER_PROGRESS_EVERY seconds, within the encoding
    and within each epoch."""
    loss, steps = CaptionModule._loss, []

    class NanGradient(torch.autograd.Function):  # a finite loss whose gradient is not
        @staticmethod
        def forward(ctx, x: torch.Tensor) -> torch.Tensor:
            return x.clone()

        @staticmethod
        def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
            return grad * float("nan")

    def sometimes_nan(self, batch):
        ce, objective = loss(self, batch)
        if self.training:
            steps.append(1)
            if len(steps) % 3 == 2:
                return ce, objective * float("nan")
            if len(steps) % 5 == 4:
                return ce, NanGradient.apply(objective)
        return ce, objective

    monkeypatch.setattr(CaptionModule, "_loss", sometimes_nan)
    monkeypatch.setenv("CAPTIONER_PROGRESS_EVERY", "0")
    run = train(tiny_run(data=str(tiny_synth), out=str(tmp_path / "run"), epochs=2, batch_size=16, threshold=1,
                            cache_dir=str(tmp_path / "cache"), encode_batch_size=8), TINY)
    out = capsys.readouterr()
    assert "epoch 1: skipped " in out.out and "for a non-finite loss or gradient" in out.out, out.out
    model = load(run)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(math.isfinite(float(r["train_loss"])) for r in read_csv(run / "metrics.csv"))
    assert "encoding images: " in out.err and " img (" in out.err, out.err
    assert "epoch 1/2: " in out.err and "batches" in out.err, out.err


def test_an_error_mid_run_exports_the_best_checkpoint_so_far_and_says_so(tiny_synth, tmp_path, monkeypatch) -> None:
    """Ten non-finite steps in a row (weights gone bad, say) stop the run: the best epoch so far is the model."""
    loss = CaptionModule._loss

    def broken_after_epoch_1(self, batch):
        ce, objective = loss(self, batch)
        return (ce, objective * float("nan")) if self.training and self.current_epoch >= 1 else (ce, objective)

    monkeypatch.setattr(CaptionModule, "_loss", broken_after_epoch_1)
    run = tmp_path / "run"
    with pytest.raises(TrainingFailed) as stop:
        train(tiny_run(data=str(tiny_synth), out=str(run), epochs=3, batch_size=4, threshold=1,
                          cache_dir=str(tmp_path / "cache"), progress=False), TINY)
    message = str(stop.value)
    assert "stopped on an error in epoch 2" in message and "10 training steps in a row" in message, message
    assert f"Exported the best checkpoint so far ({run / 'checkpoints' / 'best.ckpt'})" in message, message
    assert "FloatingPointError" in (run / "error.log").read_text()
    assert load(run).config.vocab_size == len(Vocabulary.load(run / "vocab.json"))
    assert [int(r["epoch"]) for r in read_csv(run / "metrics.csv")] == [0]


def test_a_runaway_caption_is_cut_by_default_saying_how_many(tiny_synth, tmp_path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    annotations = data / "annotations" / "captions_train.json"
    coco = json.loads(annotations.read_text())
    # 2,000 captions, as the percentile needs more than 1,000 to leave out the one longest
    coco["annotations"] = [dict(a, id=k) for k, a in enumerate(coco["annotations"] * 17)][:2000]
    runaway = coco["annotations"][0]["caption"] = " ".join(["red circle"] * 25_000)
    annotations.write_text(json.dumps(coco))
    records, _ = open_split(data, "train")
    vocab = Vocabulary.build((c for r in records for c in r.captions), 1)
    cfg = tiny_run(data=str(data), out=str(tmp_path / "run"))
    ids = CaptionData(cfg, ModelConfig(vocab_size=len(vocab), **TINY), records, [], vocab)._train_ids()
    longest = max(len(vocab.tokenizer.split(c)) for r in records for c in r.captions if c != runaway)
    said = capsys.readouterr().out
    assert "99.9th percentile" in said and f"1 of {len(ids)} training captions were longer" in said, said
    assert max(ids.lengths) <= longest + 2  # <start> and <end>: the runaway one is cut to the others' length


def test_write_together_replaces_no_file_when_one_fails(tmp_path) -> None:
    (tmp_path / "a.json").write_text("old a")

    def fails(path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_together(tmp_path, {"a.json": lambda p: p.write_text("new a"), "b.json": fails})
    assert (tmp_path / "a.json").read_text() == "old a" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_progress_lines_say_done_share_rate_and_time_left() -> None:
    lines: list[str] = []
    bar = ProgressLines(10, "encoding images", "img", every=0, write=lines.append)
    for _ in range(10):
        bar.update(1)
    assert len(lines) == 9 and lines[4].startswith("encoding images: 5/10 img (50%) in ") and "left" in lines[4]
