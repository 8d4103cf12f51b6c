"""Distributed runs on the CPU (gloo): 2-process DDP training against a 1-process run with the same global batch,
and a 2-process feature extraction killed with SIGKILL midway, then completed.

Every launch runs in its own session and is killed as a group when it overruns, so nothing can hang the suite.
This file doubles as the extraction worker: ``python tests/test_distributed.py extract ...``.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from captioner.io import read_csv

TINY = ["--backbone", "resnet18", "--encoder-weights", "none", "--image-size", "64", "--embed-size", "16",
        "--hidden-size", "32"]
EPOCHS = 6
GLOBAL_BATCH = 16
# Largest relative gap allowed between the 1- and 2-process per-epoch losses (train and val), against what was
# measured on the tiny set below (6 epochs, 120 captions, seeded): with padded batches both runs take the same
# 8 steps of 16 captions per epoch and differ in BatchNorm statistics (per rank, over 8 captions) and in token
# weighting across ranks: the 2-process curve sits up to 1.4-2.4 % above (the range is from 2 vs 1 threads in
# the 1-process run). Length buckets are split differently (14 steps of up to 16 captions vs 11 steps of up to
# 8 + 8 per epoch), so that curve lags: measured up to 3.6 % while every epoch repeated epoch 0's batches, and
# 7.7 % since the sampler reshuffles each epoch (the 2-process run takes 11 updates an epoch to the other's 14).
TOLERANCE = {"pad": 0.04, "bucket": 0.09}
TIMEOUT = 240  # seconds for any one launch


def _env() -> dict[str, str]:
    # one thread per process: two ranks on a 2-core machine, and the same arithmetic in every run
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def launch(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start ``cmd`` in a new session (so its children can be killed with it), output to ``log``."""
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything it started (its session's process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def finish(procs: list[subprocess.Popen], logs: list[Path], timeout: float = TIMEOUT) -> str:
    """Wait for all of ``procs`` (killing them all on overrun); assert success; return their joined output."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        overran = [p.poll() is None for p in procs]
        for p in procs:
            kill(p)  # also ends any child a finished launcher left behind
    out = "\n".join(log.read_text(errors="replace") for log in logs)
    assert not any(overran), f"killed after {timeout} s:\n{out[-3000:]}"
    assert all(p.returncode == 0 for p in procs), f"exit codes {[p.returncode for p in procs]}:\n{out[-3000:]}"
    return out


def two_ranks(mode: str, tmp_path: Path) -> list[dict]:
    """Run this file's ``mode`` as a gloo group of 2 processes; each writes rank<r>.json, returned in rank order."""
    port = str(_free_port())
    logs = [tmp_path / f"{mode}-rank{r}.log" for r in range(2)]
    finish([launch([sys.executable, __file__, mode, str(tmp_path), str(r), port], log) for r, log in enumerate(logs)],
           logs)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def rows(run: Path) -> list[dict[str, str]]:
    return read_csv(run / "metrics.csv")


def global_step(run: Path) -> int:
    import torch

    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]


def start_training(tiny_synth: Path, out: Path, cache: Path, devices: int, batching: str) -> tuple[subprocess.Popen,
                                                                                                   Path]:
    """Launch ``captioner train`` on ``devices`` processes (one thread each); ``finish`` waits for it."""
    cmd = [sys.executable, "-m", "captioner", "train", "--data", str(tiny_synth), "--out", str(out), "--epochs",
           str(EPOCHS), "--batch-size", str(GLOBAL_BATCH // devices), "--threshold", "1", "--batching", batching,
           "--early-stop", "0", "--cache-dir", str(cache), "--val-images", "8", "--accelerator", "cpu", "--devices",
           str(devices), "--no-progress", *TINY]
    log = out.parent / f"{out.name}.log"
    return launch(cmd, log), log


def steps_per_epoch(tiny_synth: Path, devices: int, batching: str) -> list[int]:
    """Optimizer steps per epoch that each of ``devices`` ranks should take (the same on every rank)."""
    from captioner.data.batching import LengthBucketSampler
    from captioner.data.captions import CaptionIds
    from captioner.data.datasets import open_split
    from captioner.data.vocab import Vocabulary

    records, _ = open_split(tiny_synth, "train")
    ids = CaptionIds(records, Vocabulary.build((c for r in records for c in r.captions), 1))
    batch = GLOBAL_BATCH // devices
    if batching == "pad":
        return [math.ceil(math.ceil(len(ids) / devices) / batch)] * devices
    return [len(LengthBucketSampler(ids.lengths, batch, rank=r, world_size=devices)) for r in range(devices)]


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["bucket", "pad"])
def test_two_process_ddp_matches_one_process(tiny_synth, tmp_path, batching) -> None:
    one, two = tmp_path / "one", tmp_path / "two"  # both at once: one thread per process, the same arithmetic
    one_proc, one_log = start_training(tiny_synth, one, tmp_path / "cache", 1, batching)
    two_proc, two_log = start_training(tiny_synth, two, tmp_path / "cache2", 2, batching)
    finish([one_proc, two_proc], [one_log, two_log])  # kills both if either overruns
    out = two_log.read_text(errors="replace")
    assert "MEMBER: 2/2" in out, out[-3000:]  # rank 1 really ran

    # one artifact, in --out, exported once (by rank 0); TensorBoard written once
    assert sorted(tmp_path.rglob("model.safetensors")) == sorted([one / "model.safetensors", two / "model.safetensors"])
    for name in ("config.json", "vocab.json", "train_config.json", "loss.png", "checkpoints/best.ckpt"):
        assert (two / name).is_file(), name
    assert out.count("exporting the best checkpoint") == 1 and out.count(f"model: {two / 'model.safetensors'}") == 1
    assert len(list((two / "tb").glob("events.out.tfevents.*"))) == 1
    assert not [p for p in two.rglob("*") if p.name.endswith(".tmp")]
    from captioner import load

    assert load(two).config.backbone == "resnet18"

    # each rank trained on its own share: DDP steps are the per-rank batch count, not the whole data set's
    steps = steps_per_epoch(tiny_synth, 2, batching)
    assert steps[0] == steps[1] and global_step(two) == EPOCHS * steps[0]
    assert global_step(one) == EPOCHS * steps_per_epoch(tiny_synth, 1, batching)[0]

    # every epoch exactly once, and the loss curve of the 1-process run with the same global batch
    a, b = rows(one), rows(two)
    assert [int(r["epoch"]) for r in b] == list(range(EPOCHS)) == [int(r["epoch"]) for r in a]
    curves = {k: [(float(x[k]), float(y[k])) for x, y in zip(a, b, strict=True)] for k in ("train_loss", "val_loss")}
    gap = max(abs(y - x) / x for pairs in curves.values() for x, y in pairs)
    print(f"{batching}: 1 vs 2 processes {curves}, largest relative gap {gap:.2%}")
    assert gap <= TOLERANCE[batching], curves
    assert b[-1]["train_loss"] < b[0]["train_loss"] and all(math.isfinite(float(r["val_cider"])) for r in b)
    assert [r["lr"] for r in a] == [r["lr"] for r in b]


# ---- distributed feature extraction, killed and rerun -------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def extract(images: Path, cache: Path, logs: Path, tag: str, world: int, slow: float = 0.0) -> tuple:
    """Launch ``world`` extraction processes (a gloo group of ``world``); returns (procs, logs)."""
    port = str(_free_port())
    procs, files = [], []
    for rank in range(world):
        log = logs / f"{tag}-rank{rank}.log"
        procs.append(launch([sys.executable, __file__, "extract", str(images), str(cache), str(rank), str(world),
                             port, str(slow)], log))
        files.append(log)
    return procs, files


EXTRACT_BATCH = 2  # 24 images -> 12 chunks, 6 per rank


@pytest.mark.slow
def test_killed_distributed_extraction_is_completed_to_the_same_bytes(tiny_synth, tmp_path) -> None:
    from captioner.features import FeatureCache, fingerprint

    images = tiny_synth / "train"
    paths = sorted(images.glob("*.png"))
    chunks = math.ceil(len(paths) / EXTRACT_BATCH)
    key = fingerprint("resnet18", "none", 0, 64, 1, paths)
    cache = FeatureCache(tmp_path / "cache", key)

    # 2 processes, each chunk slowed down; SIGKILL both once a few chunks are done
    procs, logs = extract(images, cache.folder, tmp_path, "killed", 2, slow=0.4)
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(list(cache.parts.glob("[!.]*"))) < 3:  # finished markers, not temp files
            assert all(p.poll() is None for p in procs), "extraction ended before it could be killed:\n" + "\n".join(
                log.read_text() for log in logs)
            assert time.monotonic() < deadline, "no chunk was finished in time"
            time.sleep(0.01)
    finally:
        for p in procs:
            kill(p)
    done = len(list(cache.parts.glob("[!.]*")))
    assert 3 <= done < chunks and not cache.complete() and cache.partial_path.is_file()

    # rerun with 2 processes: only the missing chunks are encoded
    procs, logs = extract(images, cache.folder, tmp_path, "rerun", 2)
    out = finish(procs, logs)
    encoded = sum(int(n) for n in re.findall(r"encoded (\d+) images", out))
    print(f"killed with {done} of {chunks} chunks done; the rerun encoded {encoded} of {len(paths)} images")
    assert encoded == len(paths) - done * EXTRACT_BATCH, out
    assert cache.complete() and not cache.parts.exists() and not cache.partial_path.exists()

    # a clean single-process build with the same batch size gives the same file, byte for byte
    clean = FeatureCache(tmp_path / "clean", key)
    procs, logs = extract(images, clean.folder, tmp_path, "clean", 1)
    assert f"encoded {len(paths)} images" in finish(procs, logs)
    assert cache.array_path.read_bytes() == clean.array_path.read_bytes()
    assert cache.meta_path.read_text() == clean.meta_path.read_text()


def _extract_main(images: str, cache: str, rank: str, world: str, port: str, slow: str) -> None:
    """One extraction process: join the gloo group, encode this rank's chunks (each ``slow`` s slower)."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    import captioner.models.encoder as encoder
    from captioner.features import encode_images

    torch.set_num_threads(1)
    rank_, world_, delay = int(rank), int(world), float(slow)
    if delay:
        build = encoder.build_trunk

        class Slow(torch.nn.Module):
            def __init__(self, trunk: torch.nn.Module) -> None:
                super().__init__()
                self.trunk = trunk

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                time.sleep(delay)
                return self.trunk(x)

        def slow_trunk(*args, **kwargs):
            trunk, spec = build(*args, **kwargs)
            return Slow(trunk), spec

        encoder.build_trunk = slow_trunk
    barrier = lambda: None  # noqa: E731
    if world_ > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank_, world_size=world_,
                                timeout=timedelta(seconds=TIMEOUT))
        barrier = dist.barrier
    paths = sorted(Path(images).glob("*.png"))
    feats, ok = encode_images(paths, "resnet18", "none", 0, 64, 1, cache, EXTRACT_BATCH, rank=rank_,
                              world_size=world_, barrier=barrier, log=lambda m: print(f"[rank {rank}] {m}"),
                              progress=False)
    assert feats.shape[0] == len(paths) and ok.all()
    if world_ > 1:
        dist.destroy_process_group()


def test_validation_is_decoded_in_shards_and_scored_once(tmp_path) -> None:
    ranks = two_ranks("score", tmp_path)
    assert [r["decoded"] for r in ranks] == [5, 5]  # each rank decodes its half of the 10 val images
    assert ranks[0]["scorer_calls"] == [10] and ranks[1]["scorer_calls"] == []  # java runs once, on rank 0
    scores = ranks[0]["scores"]
    assert ranks[1]["scores"] == scores and scores["Bleu_4"] == 1.0 and scores["CIDEr"] == 10.0  # broadcast
    assert 10 <= scores["distinct"] <= 100  # % of the 10 images with a caption of their own, over both shards


def _score_main(out: str, rank: str, port: str) -> None:
    """One validation process of a gloo group of 2: decode its shard, let rank 0 score, record what happened."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    import captioner.training.module as training
    from captioner.data.datasets import ImageRecord
    from captioner.data.vocab import Vocabulary
    from captioner.models.captioner import CaptionModel, ModelConfig

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=int(rank), world_size=2,
                            timeout=timedelta(seconds=TIMEOUT))
    vocab = Vocabulary.build(["a red circle", "a blue square"], threshold=1)
    torch.manual_seed(0)
    model = CaptionModel(ModelConfig(vocab_size=len(vocab), decoder="show-tell",
                                     backbone="resnet18", encoder_weights="none", grid=1,
                                     embed_size=8, hidden_size=8))
    records = [ImageRecord(i, Path(f"{i}.png"), ("a red circle",), "val") for i in range(10)]
    decoded, calls = [0], []
    greedy = training.greedy

    def counted(decoder, features, max_len):
        decoded[0] += len(features)
        return greedy(decoder, features, max_len)

    def scorer(results, refs):
        calls.append(len(results))
        return {"Bleu_4": 1.0, "CIDEr": float(len(results))}

    training.greedy = counted
    scores = training.generation_scores(model, vocab, torch.randn(10, 1, 512), records, int(rank), 2,
                                        batch_size=2, scorer=scorer)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"decoded": decoded[0], "scorer_calls": calls,
                                                         "scores": scores}))
    dist.destroy_process_group()


def test_a_batch_whose_images_all_failed_on_one_rank_is_skipped_under_ddp(tmp_path) -> None:
    """Lightning drops a None batch (and refuses a None step) in distributed training: rank 1's second batch,
    every image of it unreadable, becomes a zero loss, so both ranks take the same 3 steps and keep the same
    weights (it hung, then gloo aborted, as rank 1 skipped a step that rank 0 took)."""
    ranks = two_ranks("skip", tmp_path)
    assert [r["steps"] for r in ranks] == [3, 3] and ranks[0]["weights"] == ranks[1]["weights"]


def _skip_main(out: str, rank: str, port: str) -> None:
    """One DDP training process of a gloo group of 2 (Lightning, its processes started here): 3 batches of 2 items,
    where rank 1's second holds two Nones (images that failed to load), collated as training collates them."""
    from dataclasses import asdict

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", NODE_RANK="0", LOCAL_RANK=rank)
    import lightning as L
    import torch

    from captioner.data.vocab import Vocabulary
    from captioner.models.captioner import ModelConfig
    from captioner.training.config import TrainConfig
    from captioner.training.data import caption_collate
    from captioner.training.module import CaptionModule

    torch.set_num_threads(1)
    torch.manual_seed(0)
    vocab = Vocabulary.build(["a red circle", "a blue square"], threshold=1)
    config = ModelConfig(vocab_size=len(vocab), decoder="show-tell",
                         backbone="resnet18", encoder_weights="none", grid=1, embed_size=8,
                         hidden_size=8)
    module = CaptionModule(asdict(config), vocab.itos, asdict(TrainConfig(data="unused", epochs=1)))
    good = [(torch.randn(1, 512), torch.tensor(vocab.encode("a red circle"))) for _ in range(2)]
    batches = [good, [None, None] if rank == "1" else good, good]
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None,
                                                                      collate_fn=caption_collate))
    weights = sum(float(p.double().sum()) for p in module.model.decoder.parameters())
    Path(out, f"rank{rank}.json").write_text(json.dumps({"steps": trainer.global_step, "weights": weights}))
    # Lightning leaves its gloo group up; torn down at interpreter exit, a loaded machine once saw its threads abort
    # the process ("terminate called without an active exception", exit -6) after the run had finished
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__" and len(sys.argv) == 8 and sys.argv[1] == "extract":
    _extract_main(*sys.argv[2:])
if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "score":
    _score_main(*sys.argv[2:])
if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "skip":
    _skip_main(*sys.argv[2:])
