"""Training with Lightning: data (feature cache or images) -> captioning model -> run folder with the artifact.

Reads top to bottom: configuration, data module, Lightning module, validation scores, callbacks, records,
then ``train`` wiring it up.
"""
from __future__ import annotations

import csv
import logging
import math
import shlex
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar, WeightAveraging
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from captioner.data.batching import LengthBucketSampler, pad_collate
from captioner.data.captions import CachedCaptions, CachedImages, CaptionIds, ImageCaptions
from captioner.data.datasets import ImageRecord, SkipReport, describe, has_splits, open_split
from captioner.data.vocab import PAD, Vocabulary
from captioner.decode import greedy, sample
from captioner.evaluate import score_any
from captioner.features import ImageViews, encode_images
from captioner.io import atomic_write, read_csv, read_json, write_json
from captioner.models.attention import attention_penalty
from captioner.models.captioner import CaptionModel, ModelConfig, load_state, read_artifact, save_artifact
from captioner.models.decoder import caption_loss
from captioner.rewards import CiderD, padded, reference_ids, reference_key

SAFE_ON_RESUME = ("epochs", "min_lr", "eval_every", "early_stop", "val_images")  # --force may change these
NOT_COMPARED = ("out", "resume", "force", "progress", "num_workers", "cache_dir", "encode_batch_size", "accelerator")


@dataclass
class TrainConfig:
    """Everything about a training run except the architecture; saved as train_config.json."""

    data: str
    out: str = "runs/default"
    images: str | None = None
    val_data: str | None = None
    val_image_dir: str | None = None
    val_split: str = "val"
    val_fraction: float = 0.05
    epochs: int = 20
    batch_size: int = 512
    lr: float = 0.01
    min_lr: float = 0.001
    scheduler: str = "cosine"
    weight_decay: float = 0.0
    clip: float = 5.0
    ema: float = 0.0  # decay of the weights' moving average, which is validated and saved (0: none)
    attention_penalty: float = 1.0
    threshold: int = 5
    batching: str = "bucket"
    cache_views: int = 1
    cache_dir: str | None = None
    eval_every: int = 1
    val_images: int = 500
    early_stop: int = 0
    seed: int = 0
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    num_workers: int = 0
    encode_batch_size: int = 32
    scst: bool = False
    init: str | None = None
    scst_samples: int = 5
    scst_baseline: str = "mean"
    resume: bool = False
    force: bool = False
    progress: bool = True  # bars when both stdout and stderr are terminals, else one line per epoch

    def __post_init__(self) -> None:
        choices = {"scheduler": ("cosine", "plateau", "none"), "batching": ("bucket", "pad"),
                   "scst_baseline": ("mean", "greedy")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "cache_views", "eval_every", "devices", "num_nodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"need 0 < --min-lr <= --lr, got {self.min_lr} and {self.lr}")
        if self.scst and not (self.init or self.resume):
            raise ValueError("--scst starts from a cross-entropy model: give --init RUN_FOLDER")
        if self.scst and self.scst_samples < 2:
            raise ValueError(f"--scst-samples must be >= 2 (the others are the baseline), got {self.scst_samples}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")


class CaptionData(L.LightningDataModule):
    """Train/val pairs; with a frozen encoder they come from the feature cache (each rank encodes its share)."""

    def __init__(self, cfg: TrainConfig, model: ModelConfig, train: list[ImageRecord], val: list[ImageRecord],
                 vocab: Vocabulary) -> None:
        super().__init__()
        self.cfg, self.model_cfg, self.train_records, self.val_records, self.vocab = cfg, model, train, val, vocab
        self.eval_records = val[:cfg.val_images]

    def _features(self, records: list[ImageRecord], views: int) -> tuple[np.ndarray, np.ndarray]:
        trainer, m = self.trainer, self.model_cfg
        return encode_images([r.path for r in records], m.backbone, m.encoder_weights, m.seed, m.image_size, views,
                             self.cfg.cache_dir, self.cfg.encode_batch_size, self.cfg.num_workers,
                             trainer.strategy.root_device, trainer.global_rank, trainer.world_size,
                             trainer.strategy.barrier, log=_say(trainer), progress=bars(self.cfg),
                             output_stride=m.output_stride, grid=m.grid,
                             encoder=trainer.lightning_module.model.encoder)

    def setup(self, stage: str) -> None:
        if self.model_cfg.fine_tune:
            spec = self.trainer.lightning_module.model.encoder.spec
            if self.cfg.scst:  # self-critical from pixels: each training image once, as it is captioned
                self.train_set = SampledImages(ImageViews([r.path for r in self.train_records],
                                                          self.model_cfg.image_size, 1, spec.mean, spec.std))
            else:
                self.train_set = ImageCaptions(self.train_records, CaptionIds(self.train_records, self.vocab),
                                               self.model_cfg.image_size, mean=spec.mean, std=spec.std)
            self.val_set = ImageCaptions(self.val_records, CaptionIds(self.val_records, self.vocab),
                                         self.model_cfg.image_size, augment=False, mean=spec.mean, std=spec.std)
            views = ImageViews([r.path for r in self.eval_records], self.model_cfg.image_size, 1, spec.mean, spec.std)
            loaded = [(record, *views[i]) for i, record in enumerate(self.eval_records)]
            self.eval_inputs = torch.stack([image[0] for _, image, good in loaded if good])
            self.eval_records = [record for record, _, good in loaded if good]
            return
        train_feats, ok = self._features(self.train_records, self.cfg.cache_views)
        if self.cfg.scst:  # self-critical: batches of images, each sampled n times and scored against its refs
            self.train_set = CachedImages(train_feats, ok)
        else:
            self.train_set = CachedCaptions(train_feats, CaptionIds(self.train_records, self.vocab, ok),
                                            self.cfg.seed)
        val_feats, val_ok = self._features(self.val_records, 1)
        self.val_set = CachedCaptions(val_feats, CaptionIds(self.val_records, self.vocab, val_ok), random_view=False)
        n = len(self.eval_records)
        self.eval_inputs = torch.from_numpy(np.asarray(val_feats[:n, 0], dtype=np.float32))[val_ok[:n]]
        self.eval_records = [r for r, good in zip(self.eval_records, val_ok[:n], strict=True) if good]

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        cached, epoch = isinstance(dataset, CachedCaptions | CachedImages), self.trainer.current_epoch
        collate = (lambda batch: batch) if cached else image_collate if isinstance(dataset, SampledImages) \
            else caption_collate
        common = dict(collate_fn=collate, pin_memory=torch.cuda.is_available(),
                      num_workers=0 if cached else self.cfg.num_workers)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if shuffle else (0, 1)
        if hasattr(dataset, "captions") and (self.cfg.batching == "bucket" or not shuffle):
            sampler = LengthBucketSampler(dataset.captions.lengths, self.cfg.batch_size, shuffle, self.cfg.seed,
                                          rank, world)
            sampler.set_epoch(epoch)  # loaders are rebuilt every epoch: each epoch its own shuffle
            return DataLoader(dataset, batch_sampler=sampler, **common)
        sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=self.cfg.seed)  # padded, or images
        sampler.set_epoch(epoch)
        return DataLoader(dataset, batch_size=self.cfg.batch_size, sampler=sampler, **common)

    def train_dataloader(self) -> DataLoader:
        if isinstance(self.train_set, CachedCaptions):
            self.train_set.set_epoch(self.trainer.current_epoch)
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


class SampledImages(Dataset):
    """(image, record index) of each readable training image, the eval transform: self-critical fine-tuning."""

    def __init__(self, views: ImageViews) -> None:
        self.views = views

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        image, ok = self.views[index]
        return (image[0], index) if ok else None


def image_collate(batch: list[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, ...]:
    """Stacked images and their record indices; unreadable ones dropped, () when none is left (see
    ``caption_collate``)."""
    kept = [item for item in batch if item is not None]
    return (torch.stack([x for x, _ in kept]), torch.tensor([i for _, i in kept])) if kept else ()


def caption_collate(batch: list[tuple[torch.Tensor, torch.Tensor] | None]) -> tuple[torch.Tensor, ...]:
    """``pad_collate``, but a batch whose images all failed is () rather than None: Lightning drops a None batch
    before ``training_step``, so under DDP that rank would skip a step the others take, and all would hang."""
    return pad_collate(batch) or ()


class CaptionModule(L.LightningModule):
    """Teacher-forced cross-entropy training of a captioning model, with generation metrics on validation."""

    def __init__(self, model_config: dict[str, Any], vocab: list[str], train_config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = TrainConfig(**train_config)
        self.vocab = Vocabulary(vocab)
        self.model = CaptionModel(ModelConfig(**model_config))
        self.cider: CiderD | None = None  # SCST reward, set by ``train``
        self.references: list[list[list[int]]] = []  # SCST: each training image's reference word ids

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy, training objective): the attention regulariser is added to the latter only."""
        x, captions, lengths = batch
        hidden, alphas = self.model(x, captions, lengths)
        loss = caption_loss(self.model.decoder.out, hidden, captions)
        if alphas is None or not self.cfg.attention_penalty:
            return loss, loss
        return loss, loss + self.cfg.attention_penalty * attention_penalty(alphas, captions)

    def _self_critical(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """-(reward - baseline) * log p(sample), summed over words, averaged over samples (Rennie et al. 2017)."""
        features, images = batch
        n, features = self.cfg.scst_samples, self.model.features(features)
        ids, log_probs = sample(self.model.decoder, features, n, self.model.config.max_len)
        refs, owner = [self.references[i] for i in images.tolist()], np.repeat(np.arange(len(images)), n)
        reward = torch.as_tensor(self.cider.scores(ids.cpu().numpy(), refs, owner), dtype=torch.float32,
                                 device=features.device).view(-1, n)
        if self.cfg.scst_baseline == "greedy":
            max_len = self.model.config.max_len  # a greedy caption of max_len words was cut: no <end>, as a sample
            greedy_ids = padded([h.ids for h in greedy(self.model.decoder, features, max_len)], max_len)
            base = torch.as_tensor(self.cider.scores(greedy_ids, refs), dtype=torch.float32,
                                   device=features.device).unsqueeze(1)
        else:  # "new self-critical": the mean reward of the image's other samples
            base = (reward.sum(1, keepdim=True) - reward) / (n - 1)
        size = len(images)
        self.log("train_reward", reward.mean(), on_step=False, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=size)
        self.log("sample_len", (ids != PAD).sum(1).float().mean(), on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=size)
        return -((reward - base).view(-1) * log_probs).mean()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        if not batch:  # every image of the batch failed to load (caption_collate): skip it
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                # DDP needs a backward from every rank: a zero loss on every trained weight adds nothing to the sum
                return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            return None
        if self.cfg.scst:
            return self._self_critical(batch)
        loss, objective = self._loss(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=batch[1].size(0))
        return objective

    def validation_step(self, batch, batch_idx: int) -> None:
        if not batch:
            return
        self.log("val_loss", self._loss(batch)[0], on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=batch[1].size(0))

    def on_validation_epoch_start(self) -> None:
        """Every ``eval_every`` epochs, greedy captions of the eval images scored (BLEU-4, CIDEr): at the start, so
        with ``--ema`` they score the averaged weights, which the callback swaps in before and out before the end."""
        if self.trainer.sanity_checking or (self.current_epoch + 1) % self.cfg.eval_every:
            return
        data: CaptionData = self.trainer.datamodule
        if not getattr(data, "eval_records", None):
            return
        scores = generation_scores(self.model, self.vocab, data.eval_inputs, data.eval_records,
                                   self.trainer.global_rank, self.trainer.world_size)
        self.log("val_bleu4", scores["Bleu_4"], prog_bar=False)  # the same value on every rank (broadcast)
        self.log("val_cider", scores["CIDEr"], prog_bar=True)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        if self.cfg.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.cfg.epochs, self.cfg.min_lr)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if self.cfg.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.3, patience=1,
                                                               min_lr=self.cfg.min_lr)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}
        return optimizer

    def _frozen_trunk(self) -> list[str]:
        if self.model.config.fine_tune:
            return []
        return [k for k in self.state_dict() if k.startswith("model.encoder.backbone.")]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave the frozen trunk out (it is rebuilt from config), also from the weights that ``--ema``'s average
        displaces (``current_model_state``), and keep the RNG state for an exact resume."""
        for states in _weight_states(checkpoint):
            for key in self._frozen_trunk():
                states.pop(key, None)
        checkpoint["torch_rng"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the trunk and RNG; a resumed run's (forced) epochs and lr floor reach the scheduler."""
        state = self.state_dict()
        for states in _weight_states(checkpoint):
            for key in self._frozen_trunk():
                states.setdefault(key, state[key])
        if "torch_rng" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng"])
        for sched, opt in zip(checkpoint.get("lr_schedulers", []), checkpoint.get("optimizer_states", []),
                              strict=False):
            if "min_lrs" in sched:  # plateau
                sched["min_lrs"] = [self.cfg.min_lr] * len(sched["min_lrs"])
            if "T_max" in sched:  # cosine, set from its closed form: the recursive one only continues a schedule
                sched.update(T_max=self.cfg.epochs, eta_min=self.cfg.min_lr)
                sched["_last_lr"] = [cosine_lr(base, self.cfg.min_lr, sched["last_epoch"], self.cfg.epochs)
                                     for base in sched["base_lrs"]]
                for group, lr in zip(opt["param_groups"], sched["_last_lr"], strict=True):
                    group["lr"] = lr


def _weight_states(checkpoint: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    """The model weights a checkpoint holds: ``state_dict`` and, with ``--ema``, the training weights too."""
    return [checkpoint[k] for k in ("state_dict", "current_model_state") if k in checkpoint]


def cosine_lr(base: float, floor: float, epoch: int, epochs: int) -> float:
    """The learning rate of ``epoch`` (0-based) on a cosine from ``base`` to ``floor`` over ``epochs``."""
    return floor + (base - floor) * (1 + math.cos(math.pi * min(epoch, epochs) / epochs)) / 2


def generation_scores(model: CaptionModel, vocab: Vocabulary, inputs: torch.Tensor, records: list[ImageRecord],
                      rank: int = 0, world_size: int = 1, batch_size: int = 64,
                      scorer: Callable[[dict[int, str], dict[int, list[str]]], dict[str, float]] | None = None,
                      ) -> dict[str, float]:
    """Greedy-decode this rank's share of the val images, gather the captions, score BLEU-4/CIDEr once on rank 0
    and broadcast the scores, so every rank returns the same numbers (0-100)."""
    was_training = model.training
    model.eval()
    mine = list(range(rank, len(records), world_size))
    device = next(model.parameters()).device
    local = {}
    for start in range(0, len(mine), batch_size):
        rows = mine[start:start + batch_size]
        features = model.features(inputs[rows].to(device))
        for i, hyp in zip(rows, greedy(model.decoder, features, model.config.max_len), strict=True):
            local[records[i].image_id] = vocab.decode(hyp.ids)
    model.train(was_training)
    results = local
    if world_size > 1:
        shares: list[dict[int, str]] = [{} for _ in range(world_size)]
        torch.distributed.all_gather_object(shares, local)
        results = {k: v for share in shares for k, v in share.items()}
    refs = {r.image_id: list(r.captions) for r in records}
    scores = (scorer or partial(score_any, metrics=("Bleu", "CIDEr")))(results, refs) if rank == 0 else {}
    if world_size > 1:
        box = [scores]
        torch.distributed.broadcast_object_list(box, src=0)
        scores = box[0]
    return scores


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
               "train_reward", "sample_len", "seconds")

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
            row |= {k: m[k] for k in ("val_bleu4", "val_cider") if k in m}
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


def bars(cfg: TrainConfig) -> bool:
    """Progress bars only on a terminal: redirected output (CI, nohup, a scheduler's log) gets one line per epoch
    instead of thousands of carriage-return updates."""
    return cfg.progress and sys.stdout.isatty() and sys.stderr.isatty()


def _say(trainer: L.Trainer | None):
    """print on rank 0 only."""
    return lambda msg: print(msg, flush=True) if trainer is None or trainer.is_global_zero else None


def load_records(cfg: TrainConfig, log=print) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Train and val records, never sharing an image: the val source (``--val-data``), else the data's own val
    split, else a seeded ``--val-fraction`` of the training images held out (and said so)."""
    train, report = open_split(cfg.data, "train", cfg.images)
    log(report.summary())
    val: list[ImageRecord] = []
    if cfg.val_data:
        val, report = open_split(cfg.val_data, cfg.val_split, cfg.val_image_dir)
        log(report.summary())
        _check_val(val, report, f"--val-data {cfg.val_data}", explicit=True)
    elif has_splits(cfg.data):
        try:
            val, report = open_split(cfg.data, cfg.val_split, cfg.images)
            log(report.summary())
            _check_val(val, report, f"the '{cfg.val_split}' split of {cfg.data}", explicit=False)
        except FileNotFoundError:
            pass
    if not val and train:
        order = np.random.default_rng(cfg.seed).permutation(len(train))
        held = set(order[:max(1, round(cfg.val_fraction * len(train)))].tolist())
        val = [r for i, r in enumerate(train) if i in held]
        train = [r for i, r in enumerate(train) if i not in held]
        log(f"no '{cfg.val_split}' split in {cfg.data}: holding out {len(val)} of {len(train) + len(val)} training "
            f"images for validation (--val-fraction {cfg.val_fraction}, seed {cfg.seed}); --val-data gives a "
            f"separate validation source")
    if not train or not val:
        raise ValueError(f"{cfg.data}: need training and validation images, found {len(train)} and {len(val)}")
    shared = {r.path.resolve() for r in train} & {r.path.resolve() for r in val}
    if shared:
        raise ValueError(f"{len(shared)} validation images are also training images (e.g. {next(iter(shared))}): "
                         f"give a separate --val-data or drop it to hold out --val-fraction of the training images")
    return train, val


def _check_val(val: list[ImageRecord], report: SkipReport, source: str, explicit: bool) -> None:
    """Stop when a validation source that was asked for (or that lists images) gives none: never swap it for a
    hold-out of training images."""
    if not val and (explicit or report.skipped):
        reasons = ", ".join(f"{n} {reason}" for reason, n in report.reasons().most_common())
        found = f"{reasons}, e.g. {report.skipped[0][0]}" if report.skipped else "it lists none"
        raise ValueError(f"{source} has no usable images: {found}; fix them or give another --val-data")


def check_resume(out: Path, cfg: TrainConfig, model_kwargs: dict[str, Any]) -> set[str]:
    """Stop a ``--resume`` whose flags differ from the run's saved ones; ``--force`` lets the safe ones change
    (returned)."""
    saved = read_json(out / "train_config.json", "training config of the run")
    saved_model = read_json(out / "config.json", "model config of the run")
    diffs = [(k, saved[k], v) for k, v in asdict(cfg).items() if k not in NOT_COMPARED and k in saved and saved[k] != v]
    if not cfg.init:  # an --init run's model comes from there, whatever the model flags say
        diffs += [(k, saved_model.get(k), v) for k, v in model_kwargs.items() if saved_model.get(k) != v]
    unsafe = [d for d in diffs if d[0] not in SAFE_ON_RESUME]
    if unsafe or (diffs and not cfg.force):
        listing = "; ".join(f"--{k.replace('_', '-')} was {old!r}, now {new!r}" for k, old, new in (unsafe or diffs))
        raise ValueError(f"--resume: these settings differ from the run in {out}: {listing}. Resume with the run's "
                         f"own flags (see {out / 'train_config.json'}, {out / 'config.json'}); --force accepts "
                         f"changes to {', '.join('--' + k.replace('_', '-') for k in SAFE_ON_RESUME)} only")
    if diffs:
        print("--force: resuming with " + "; ".join(f"{k} {old!r} -> {new!r}" for k, old, new in diffs), flush=True)
        write_json(out / "train_config.json", asdict(cfg))
    return {k for k, _, _ in diffs}


def train(cfg: TrainConfig, model_kwargs: dict[str, Any] | None = None) -> Path:
    """Train (or resume) a run in ``cfg.out``; returns the run folder holding the exported model."""
    out, model_kwargs = Path(cfg.out), model_kwargs or {}
    last = out / "checkpoints" / "last.ckpt"
    if cfg.resume and not last.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {last}; start the run without --resume")
    if not cfg.resume and last.is_file():
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it or choose another --out")
    forget = cfg.resume and "val_images" in check_resume(out, cfg, model_kwargs)
    if forget:
        print("--val-images changed: the best val CIDEr so far was measured on other images, so it is forgotten "
              "(the next evaluation replaces best.ckpt)", flush=True)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
    # the frozen encoder is kept in eval mode on purpose (its BatchNorm statistics are the pretrained ones)
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_records, val_records = load_records(cfg)
    init_state = None
    if cfg.resume:
        vocab = Vocabulary.load(out / "vocab.json")
        model_cfg = ModelConfig.from_dict(read_json(out / "config.json", "model config"), str(out / "config.json"))
    elif cfg.init:  # SCST (or a warm start): the model, vocabulary and weights of an earlier run
        model_cfg, vocab, init_state = read_artifact(cfg.init)
        print(f"model settings and vocabulary come from --init {cfg.init} (its config.json)", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        vocab.save(out / "vocab.json")
        write_json(out / "train_config.json", asdict(cfg))
        write_json(out / "config.json", asdict(model_cfg))
    else:
        vocab = Vocabulary.build((c for r in train_records for c in r.captions), cfg.threshold)
        model_cfg = ModelConfig(vocab_size=len(vocab), seed=cfg.seed, trained_on=describe(cfg.data),
                                **model_kwargs)
        out.mkdir(parents=True, exist_ok=True)
        vocab.save(out / "vocab.json")
        write_json(out / "train_config.json", asdict(cfg))
        write_json(out / "config.json", asdict(model_cfg))
    print(f"{len(train_records)} train / {len(val_records)} val images, vocabulary {len(vocab)} words "
          f"(threshold {vocab.threshold}), {model_cfg.decoder} decoder on {model_cfg.backbone} "
          f"({model_cfg.encoder_weights} weights, {'fine-tuned' if model_cfg.fine_tune else 'frozen'}); "
          f"run folder {out}", flush=True)
    data = CaptionData(cfg, model_cfg, train_records, val_records, vocab)
    module = CaptionModule(asdict(model_cfg), vocab.itos, asdict(cfg))
    module.vocab = vocab  # with its threshold, for the artifact's vocab.json
    if init_state is not None:
        load_state(module.model, init_state, f"{cfg.init}/model.safetensors")
        print(f"starting from {cfg.init}", flush=True)
    if cfg.scst:
        module.references = [reference_ids(vocab, r.captions) for r in train_records]
        module.cider = cider_document_frequencies(out / "cider_df.npz", module.references, vocab)
    best = BestCheckpoint(out / "checkpoints", cfg.eval_every, forget)
    # best first: last.ckpt then holds the epoch's best score and path (else a resumed run writes best-v1.ckpt)
    callbacks: list[Callback] = [best, ModelCheckpoint(out / "checkpoints", "last", save_top_k=1),
                                 EpochCSV(out / "metrics.csv", echo=not bars(cfg))]
    if cfg.early_stop:
        callbacks.append(EvalEarlyStopping(cfg.early_stop, cfg.eval_every, forget))
    if cfg.ema:  # validated, checkpointed and exported: the exponential moving average of the weights
        callbacks.append(WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(cfg.ema)))
    if bars(cfg):  # tqdm: Lightning's default rich bar redraws from a thread and cost ~30% of an epoch on 2 cores
        callbacks.append(TQDMProgressBar())
    cuda = torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")
    trainer = L.Trainer(max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=cfg.devices,
                        num_nodes=cfg.num_nodes, strategy="ddp" if cfg.devices * cfg.num_nodes > 1 else "auto",
                        precision="bf16-mixed" if cuda else "32-true", gradient_clip_val=cfg.clip,
                        callbacks=callbacks, logger=TensorBoardLogger(out, name="tb", version=""),
                        use_distributed_sampler=False, num_sanity_val_steps=0,
                        enable_progress_bar=bars(cfg), enable_model_summary=False,
                        log_every_n_steps=1, reload_dataloaders_every_n_epochs=1, plugins=[AtomicCheckpointIO()])
    try:
        trainer.fit(module, datamodule=data, ckpt_path=last if cfg.resume else None)
    except SIGTERMException:  # Lightning ends fit with exit status 0: say what is left and fail
        if trainer.is_global_zero:
            print(stopped_message(cfg, model_kwargs, trainer.current_epoch), file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGTERM) from None
    if trainer.is_global_zero:
        export(module, best.best_model_path, out)
    return out


def resume_command(cfg: TrainConfig, model_kwargs: dict[str, Any], resume: bool = True) -> str:
    """The ``captioner train`` command that continues this run: its data and folder, the flags that differ from the
    defaults, the model flags it was given (none with ``--init``: the model comes from there), then ``--resume``."""
    defaults, args = TrainConfig(data=cfg.data), ["captioner", "train"]
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in ("data", "out") or (f.name not in ("resume", "force") and value != getattr(defaults, f.name)):
            args += _flag(f.name, value)
    for name, value in ({} if cfg.init else model_kwargs).items():
        args += _flag(name, value)
    return shlex.join(args + (["--resume"] if resume else []))


def _flag(name: str, value: Any) -> list[str]:
    flag = name.replace("_", "-")
    return [f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)]


def stopped_message(cfg: TrainConfig, model_kwargs: dict[str, Any], epoch: int) -> str:
    """What a run stopped by SIGTERM in ``epoch`` (0-based) left behind, and the command that continues it."""
    out = Path(cfg.out)
    last = out / "checkpoints" / "last.ckpt"
    head = f"stopped by SIGTERM in epoch {epoch + 1} of {cfg.epochs}; no model was exported. "
    if not last.is_file():
        return head + f"No epoch was completed: start again with\n{resume_command(cfg, model_kwargs, resume=False)}"
    done = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["epoch"] + 1
    return head + (f"Saved: {last} ({done} of {cfg.epochs} epochs done), {out / 'metrics.csv'}. "
                   f"Continue with:\n{resume_command(cfg, model_kwargs)}")


def cider_document_frequencies(path: Path, references: list[list[list[int]]], vocab: Vocabulary) -> CiderD:
    """The training references' CIDEr-D document frequencies, computed once and kept in the run folder; a file
    counted from other references or another vocabulary (e.g. left by a killed attempt) is recomputed."""
    key = reference_key(references, vocab.itos)
    if path.is_file():
        cider = CiderD.load(path)
        if cider.key == key:
            return cider
        print(f"{path} was counted from other references or another vocabulary: recomputing it", flush=True)
    cider = CiderD.from_references(references, key=key)
    cider.save(path)
    return cider


def export(module: CaptionModule, best_ckpt: str, out: Path) -> None:
    """Write the artifact (best checkpoint by val CIDEr, else the last weights) and the loss plot."""
    from captioner.plots import loss_plot

    if best_ckpt and Path(best_ckpt).is_file():
        state = torch.load(best_ckpt, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state, strict=False)
        print(f"exporting the best checkpoint by val CIDEr: {best_ckpt}", flush=True)
    save_artifact(module.model.cpu(), module.vocab, out)
    if (out / "metrics.csv").is_file():
        loss_plot(out / "metrics.csv", out / "loss.png")
    print(f"model: {out / 'model.safetensors'} (+ config.json, vocab.json); curves: {out / 'metrics.csv'}, "
          f"{out / 'loss.png'}", flush=True)
