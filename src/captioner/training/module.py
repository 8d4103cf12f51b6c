"""The Lightning module: teacher-forced cross-entropy or self-critical CIDEr-D training, validation scores."""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.autograd.graph import increment_version

from captioner.data.datasets import ImageRecord
from captioner.data.vocab import END, PAD, START, UNK, Vocabulary
from captioner.evaluation.metrics import score_any
from captioner.models.attention import attention_penalty
from captioner.models.captioner import CaptionModel, ModelConfig
from captioner.models.decoder import caption_loss, unroll
from captioner.search.decode import greedy, sample
from captioner.training.config import TrainConfig
from captioner.training.rewards import CiderD, padded
from captioner.training.schedule import parse_schedule

MAX_SKIPPED_IN_A_ROW = 10  # steps with a non-finite loss or gradient in a row before training stops: it will not heal
FUSED_ADAM = ("cpu", "cuda")  # devices with PyTorch's fused Adam kernel


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
        self.schedule = parse_schedule(self.cfg.scheduled_sampling)
        self.own = 0.0  # this epoch's scheduled-sampling probability
        self.skipped = self.skipped_in_a_row = 0  # steps skipped for a non-finite loss or gradient: this epoch's

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy, training objective): the attention regulariser is added to the latter only. In training
        the cross-entropy is label-smoothed, inputs have word dropout and, when scheduled sampling's probability is
        above 0, some are the model's own words (step by step; teacher forcing's single pass otherwise)."""
        x, captions, lengths = batch
        train, cfg = self.training, self.cfg
        inputs = word_dropout(captions, cfg.word_dropout) if train and cfg.word_dropout else captions
        if train and self.own > 0:
            hidden, alphas = unroll(self.model.decoder, self.model.features(x), inputs, self.own)
        else:
            hidden, alphas = self.model(x, inputs, lengths)
        loss = caption_loss(self.model.decoder.out, hidden, captions,
                            label_smoothing=cfg.label_smoothing if train else 0.0)
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

    def on_train_epoch_start(self) -> None:
        self.skipped = 0
        if self.schedule is not None:
            self.own = self.schedule.prob(self.current_epoch)
            if self.trainer.is_global_zero:
                print(f"epoch {self.current_epoch + 1}: scheduled sampling feeds the model's own word with "
                      "probability "
                      f"{self.own:g}", flush=True)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        if not batch:  # every image of the batch failed to load (caption_collate): skip it
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                # DDP needs a backward from every rank: a zero loss on every trained weight adds nothing to the sum
                return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            return None
        if self.cfg.scst:
            loss = objective = self._self_critical(batch)
        else:
            loss, objective = self._loss(batch)
        if not bool(torch.isfinite(objective)):  # one bad batch must not make every weight NaN
            return self._skip(f"a non-finite loss ({float(objective.detach())})")
        if not self.cfg.scst:
            self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True,
                     batch_size=batch[1].size(0))
        return objective

    def _skip(self, why: str) -> torch.Tensor | None:
        """Skip this step (counted, said at the epoch's end); stop once ``MAX_SKIPPED_IN_A_ROW`` were in a row."""
        self.skipped, self.skipped_in_a_row = self.skipped + 1, self.skipped_in_a_row + 1
        if self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise FloatingPointError(f"{self.skipped_in_a_row} training steps in a row had {why}: the weights are "
                                     f"probably no longer finite; try a lower --lr (now {self.cfg.lr:g})")
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # every rank must step: add 0
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        return None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A non-finite gradient (a finite loss can have one) leaves the weights as they are: the step is skipped."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:  # Lightning calls this hook for a skipped step too: nothing to check, nothing done
            return
        if not bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))):
            optimizer.zero_grad(set_to_none=True)  # parameters without a gradient are not updated
            self._skip("a non-finite gradient")
        else:
            self.skipped_in_a_row = 0

    def on_train_epoch_end(self) -> None:
        if self.skipped and self.trainer.is_global_zero:
            print(f"epoch {self.current_epoch + 1}: skipped {self.skipped} of {self.trainer.num_training_batches} "
                  f"training steps for a non-finite loss or gradient (their batches left the weights unchanged)",
                  flush=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        if not batch:
            return
        self.log("val_loss", self._loss(batch)[0], on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=batch[1].size(0))

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer's step, then the trained weights' version counters bumped: copies of the weights laid out
        for decoding (decoder.Affines, a fine-tuned trunk's folded copy) are remade when a counter moves, and fused
        Adam moves none. (The moving average swaps its weights in through .data, unseen too, but only ever after a
        step, whose bump already invalidated the copies.)"""
        super().optimizer_step(*args, **kwargs)
        increment_version([p for p in self.parameters() if p.requires_grad])

    def on_validation_epoch_start(self) -> None:
        """Every ``eval_every`` epochs, greedy captions of the eval images scored (BLEU-4, CIDEr): at the start, so
        with ``--ema`` they score the averaged weights, which the callback swaps in before and out before the end."""
        if self.trainer.sanity_checking or (self.current_epoch + 1) % self.cfg.eval_every:
            return
        data = self.trainer.datamodule  # train_data.CaptionData
        if not getattr(data, "eval_records", None):
            return
        scores = generation_scores(self.model, self.vocab, data.eval_inputs, data.eval_records,
                                   self.trainer.global_rank, self.trainer.world_size)
        self.log("val_bleu4", scores["Bleu_4"], prog_bar=False)  # the same value on every rank (broadcast)
        self.log("val_cider", scores["CIDEr"], prog_bar=True)
        self.log("val_distinct", scores["distinct"], prog_bar=False)  # % of the images with a caption of their own

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        # fused: one pass over the weights for the whole update, not ~10 (a training step at batch 32 ~15% faster)
        optimizer = torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                     fused=params[0].device.type in FUSED_ADAM)
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


def word_dropout(captions: torch.Tensor, p: float) -> torch.Tensor:
    """``captions`` with each word (not <start>, <end> or <pad>) replaced by <unk> with probability ``p``."""
    words = (captions != START) & (captions != END) & (captions != PAD)
    return captions.masked_fill(words & (torch.rand(captions.shape, device=captions.device) < p), UNK)


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
    scorer = scorer or partial(score_any, metrics=("Bleu", "CIDEr"), tokenizer=vocab.tokenizer)
    scores = scorer(results, refs) if rank == 0 else {}
    if rank == 0:
        scores["distinct"] = 100 * len(set(results.values())) / max(1, len(results))
    if world_size > 1:
        box = [scores]
        torch.distributed.broadcast_object_list(box, src=0)
        scores = box[0]
    return scores
