"""A training run's settings (train_config.json): what ``--resume`` compares and what ``--force`` may change."""
from __future__ import annotations

import sys
from dataclasses import dataclass

from captioner.precision import PRECISIONS
from captioner.schedule import parse_schedule

SAFE_ON_RESUME = ("epochs", "min_lr", "eval_every", "early_stop", "val_images")  # --force may change these
NOT_COMPARED = ("out", "resume", "force", "progress", "num_workers", "cache_dir", "encode_batch_size", "accelerator",
                "precision")


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
    label_smoothing: float = 0.0  # cross-entropy's target: 1 - eps on the word, eps spread over the vocabulary
    scheduled_sampling: str = ""  # "P[:START:EVERY:MAX]" (schedule.py; "": teacher forcing only)
    word_dropout: float = 0.0  # share of the input words (never <start>) replaced by <unk> in teacher forcing
    # training captions cut to this many words (0: whole; None: the 99.9th percentile of their lengths, said in the log)
    train_max_len: int | None = None
    threshold: int = 5
    word_vectors: str | None = None  # GloVe / fastText / word2vec text file initialising the word embedding
    freeze_word_vectors: bool = False  # keep the embedding at the word vectors (no training)
    lang: str | None = None  # caption language (data/tokenizers.py); None: guessed from the training captions
    tokenizer: str | None = None  # the language's tokenizer (zh: jieba or char); None: its default
    batching: str = "bucket"
    cache_views: int = 1
    cache_dir: str | None = None
    eval_every: int = 1
    val_images: int = 500
    early_stop: int = 0
    seed: int = 0
    accelerator: str = "auto"
    precision: str = "auto"  # auto (bf16 where the processor has bf16 units), fp32 or bf16: precision.py
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
                   "scst_baseline": ("mean", "greedy"), "precision": PRECISIONS}
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
        if self.word_vectors and self.init:
            raise ValueError("--word-vectors initialises a new model; with --init the model comes from that run")
        if self.freeze_word_vectors and not self.word_vectors:
            raise ValueError("--freeze-word-vectors needs --word-vectors FILE (the vectors to keep)")
        if self.scst and self.scst_samples < 2:
            raise ValueError(f"--scst-samples must be >= 2 (the others are the baseline), got {self.scst_samples}")
        for name in ("label_smoothing", "word_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if self.train_max_len is not None and self.train_max_len < 0:
            raise ValueError(f"--train-max-len must be >= 0 (0: captions whole), got {self.train_max_len}")
        parse_schedule(self.scheduled_sampling)
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")


def bars(cfg: TrainConfig) -> bool:
    """Progress bars only on a terminal: redirected output (CI, nohup, a scheduler's log) gets one line per epoch
    instead of thousands of carriage-return updates."""
    return cfg.progress and sys.stdout.isatty() and sys.stderr.isatty()
