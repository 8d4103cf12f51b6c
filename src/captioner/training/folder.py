"""A training run owns its folder: a lock held for the run's life, no training over a folder that holds a model, and
the files ``--resume`` reads kept apart from the model's, which are written only at export."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from captioner.models.captioner import ARTIFACT_FILES

LOCK = "train.lock"
HOLDER = "train.lock.pid"  # the pid of the process holding the lock, for the message of a second run
# the run's model settings and vocabulary while it trains; config.json and vocab.json appear with the model, at export
RUN_CONFIG, RUN_VOCAB = "checkpoint_config.json", "checkpoint_vocab.json"


class RunFolderInUse(OSError):
    """Another process trains in this folder."""


def _rank_zero() -> bool:
    """True outside a distributed run's other processes (Lightning's launcher sets these for each one)."""
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


@contextmanager
def hold(out: Path) -> Iterator[None]:
    """Lock ``out`` for the block (the first process of a run only): a second run there stops at once, naming the
    holder's pid."""
    if not _rank_zero():
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out / LOCK, preserve_lock_file=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            pid = (out / HOLDER).read_text().strip() or "?"
        except OSError:
            pid = "?"
        raise RunFolderInUse(f"run folder {out} is in use by pid {pid} (another `captioner train`, see {out / LOCK}): "
                             f"wait for it to end, or choose another --out") from None
    try:
        (out / HOLDER).write_text(f"{os.getpid()}\n")
        yield
    finally:
        (out / HOLDER).unlink(missing_ok=True)
        lock.release()


def check_new_run(out: Path, force: bool) -> None:
    """Refuse to start a run in a folder that holds a model and no run's checkpoints (a copied model folder, a demo's
    ``model/``): its files would be replaced. ``--force`` replaces them, at export."""
    found = [name for name in ARTIFACT_FILES if (out / name).exists()]
    if "model.safetensors" in found and not (out / "checkpoints").is_dir() and not force:
        raise FileExistsError(f"{out} holds a model ({', '.join(found)}) and no training run: training there would "
                              f"replace it. Choose another --out, or pass --force to replace it when the new model is "
                              f"exported")


def run_file(out: Path, name: str) -> Path:
    """The run's own copy of the model's settings or vocabulary (``RUN_CONFIG``, ``RUN_VOCAB``); a run from before
    they were kept apart has only the exported ``config.json`` / ``vocab.json``."""
    own = out / name
    return own if own.is_file() else out / {RUN_CONFIG: "config.json", RUN_VOCAB: "vocab.json"}[name]
