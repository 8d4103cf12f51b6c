"""Training callbacks: early stopping and the best checkpoint on val CIDEr, the per-epoch CSV, atomic checkpoints,
bfloat16 steps that clip a fused optimizer's gradients, the weights' moving average, progress lines within an
epoch."""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, WeightAveraging
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from torch.optim.swa_utils import get_ema_multi_avg_fn

from captioner.io import atomic_write, read_csv
from captioner.progress import ProgressLines


class EvalEarlyStopping(EarlyStopping):
    """Early stopping on val CIDEr whose patience counts evaluations: epochs without one are not checked.

    A resumed run keeps this patience (``--force --early-stop``); ``forget`` drops the restored best score."""

    def __init__(self, patience: int, eval_every: int, forget: bool = False) -> None:
        super().__init__("val_cider", patience=patience, mode="max", check_finite=False)
        self.eval_every, self.forget = eval_every, forget

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        if (trainer.current_epoch + 1) % self.eval_every == 0:
            super()._run_early_stopping_check(trainer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience
        if self.forget:
            self.wait_count, self.best_score = 0, torch.tensor(-math.inf)


class BestCheckpoint(ModelCheckpoint):
    """``best.ckpt``: the checkpoint of the best val CIDEr; ``forget`` drops the restored best score (measured on
    other val images), so the next evaluation replaces the file."""

    def __init__(self, dirpath: Path, eval_every: int, forget: bool = False) -> None:
        super().__init__(dirpath, "best", monitor="val_cider", mode="max", save_top_k=1, every_n_epochs=eval_every)
        self.forget = forget

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self.forget:  # the old file stays listed, at -inf: the next save overwrites it rather than adding best-v1
            floor = torch.tensor(-math.inf)
            self.best_k_models = dict.fromkeys(self.best_k_models, floor)
            self.best_model_score = self.kth_value = floor


class EpochCSV(Callback):
    """One row per completed epoch in metrics.csv (lr, losses, perplexities, val scores 0-100), written atomically."""

    COLUMNS = ("epoch", "lr", "train_loss", "train_ppl", "val_loss", "val_ppl", "val_bleu4", "val_cider",
               "val_distinct", "train_reward", "sample_len", "seconds")

    def __init__(self, path: Path, echo: bool = False) -> None:
        self.path, self.echo, self.lr, self.start = path, echo, math.nan, 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.lr, self.start = trainer.optimizers[0].param_groups[0]["lr"], time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row = {"epoch": trainer.current_epoch, "lr": self.lr, "seconds": round(time.perf_counter() - self.start, 2)}
        for split in ("train", "val"):
            if f"{split}_loss" in m:
                row[f"{split}_loss"] = m[f"{split}_loss"]
                row[f"{split}_ppl"] = math.exp(min(m[f"{split}_loss"], 50))
        if (trainer.current_epoch + 1) % module.cfg.eval_every == 0:
            row |= {k: m[k] for k in ("val_bleu4", "val_cider", "val_distinct") if k in m}
        row |= {k: m[k] for k in ("train_reward", "sample_len") if k in m}
        done = read_csv(self.path) if self.path.is_file() else []
        rows = [r for r in done if int(r["epoch"]) < trainer.current_epoch]
        rows.append(row)
        if self.echo:  # without a progress bar, one line per epoch
            print("  ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)

        def write(p: Path) -> None:
            with open(p, "w", newline="") as f:
                writer = csv.DictWriter(f, self.COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
        atomic_write(self.path, write)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temp file and renamed, so a kill never leaves a half-written one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        save = super().save_checkpoint
        atomic_write(path, lambda tmp: save(checkpoint, tmp, storage_options))


class BFloat16Mixed(MixedPrecision):
    """Lightning's "bf16-mixed" that clips the gradients of a fused optimizer (``torch.optim.Adam(fused=True)``):
    Lightning refuses the pair because a float16 loss scaler would leave them scaled, but bfloat16 has no scaler."""

    def __init__(self, device: str) -> None:
        super().__init__("bf16-mixed", device)

    def clip_gradients(self, optimizer: torch.optim.Optimizer, clip_val: float = 0.0, *args: Any) -> None:
        Precision.clip_gradients(self, optimizer, clip_val, *args)


def moving_average(module: L.LightningModule, decay: float) -> WeightAveraging:
    """Lightning's weight averaging with an exponential moving average of the tensors training changes: the frozen
    trunk's (``module._frozen_trunk()``) keep the copy made at the first step, as they never change; averaging them
    too took ~60% of the average's time (Lite2's 6M weights beside the decoder's 4M)."""
    ema, frozen = get_ema_multi_avg_fn(decay), []

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        if not frozen:  # here, not before: the model is on its device by the first step
            state = module.state_dict(keep_vars=True)
            frozen.append({state[k].data_ptr() for k in module._frozen_trunk()})
        keep = [i for i, t in enumerate(current) if t.data_ptr() not in frozen[0]]
        if keep:
            ema([averaged[i] for i in keep], [current[i] for i in keep], n)

    return WeightAveraging(multi_avg_fn=update)


class EpochProgressLines(Callback):
    """Without progress bars (output to a file), a line every few seconds within an epoch: batches done, time left."""

    def __init__(self, every: float | None = None) -> None:
        self.every, self.lines = every, None

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        total = trainer.num_training_batches
        self.lines = ProgressLines(int(total) if math.isfinite(total) else 0,
                                   f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}", "batches", self.every)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.is_global_zero and self.lines is not None:
            self.lines.update(1)
