"""A training run's settings (train_config.json): what ``--resume`` compares and what ``--force`` may change."""
from __future__ import annotations

import sys
from dataclasses import MISSING, dataclass

from captioner.precision import PRECISIONS
from captioner.settings import setting
from captioner.training.schedule import parse_schedule

SAFE_ON_RESUME = ("epochs", "min_lr", "eval_every", "early_stop", "val_images")  # --force may change these
NOT_COMPARED = ("out", "resume", "force", "progress", "num_workers", "cache_dir", "encode_batch_size", "accelerator",
                "precision")


@dataclass
class TrainConfig:
    """Everything about a training run except the architecture; saved as train_config.json. The defaults are the
    real-photo recipe, each chosen by a Flickr8k dev figure (README, "Real photos"); recipe.PRESETS change them."""

    data: str = setting(MISSING, path=True)
    out: str = setting("runs/default", "Run folder (model, metrics.csv, loss.png, checkpoints)", path=True)
    images: str | None = setting(None, path=True)
    val_data: str | None = setting(None, "Validation source (folder, Karpathy JSON or COCO file); default: the data's "
                                   "val split, else --val-fraction held out", path=True)
    val_image_dir: str | None = setting(None, "Image folder of a --val-data COCO file", path=True)
    val_split: str = setting("val", "The data's split to validate on; 'none': hold out --val-fraction of train (to "
                             "keep val unseen for scoring)")
    val_fraction: float = setting(0.05, "Share of training images held out (seeded) when the data has no val split")
    # Flickr8k (issue 27, "probe B"): batch 32 at lr 4e-4 -> 4e-5 over the soft-attention decoder, kept at its best
    # val epoch; test BLEU-4 15.9 -> 21.5, CIDEr 37.5 -> 53.7 against Show-Tell at batch 128, lr 5e-3 (docs/results.md)
    epochs: int = setting(10)
    batch_size: int = setting(32)
    lr: float = setting(4e-4, "Initial learning rate (Adam)")
    min_lr: float = setting(4e-5, "Lowest learning rate the scheduler reaches")
    scheduler: str = setting("cosine", "cosine, plateau (on val loss) or none")
    weight_decay: float = setting(0.0)
    clip: float = setting(5.0, "Gradient norm clip")
    ema: float = setting(0.99, "Decay of an exponential moving average of the weights, which is validated and saved "
                         "(e.g. 0.99; 0: none)")
    attention_penalty: float = setting(1.0, "Weight of the doubly stochastic attention regulariser (attention)")
    label_smoothing: float = setting(0.0, "Cross-entropy label smoothing eps (0: off)")
    scheduled_sampling: str = setting("", "P[:START:EVERY:MAX]: after epoch START the model is fed its own sampled "
                                      "word with probability P x periods of EVERY epochs, at most MAX (defaults "
                                      "0:5:0.25; '': off)")
    word_dropout: float = setting(0.0, "Share of input words replaced by <unk> in training")
    train_max_len: int | None = setting(None, "Cut training captions to this many words (0: whole; default: the "
                                        "99.9th percentile of their lengths)")
    threshold: int = setting(5, "Vocabulary frequency threshold")
    word_vectors: str | None = setting(None, "GloVe / fastText / word2vec text file (UTF-8, any language, .gz too) "
                                       "initialising the word embedding; its dimension must be --embed-size",
                                       path=True)
    freeze_word_vectors: bool = setting(False, "Keep the embedding at --word-vectors")
    lang: str | None = setting(None)  # caption language (data/tokenizers.py); None: guessed from the captions
    tokenizer: str | None = setting(None)  # the language's tokenizer (zh: jieba or char); None: its default
    batching: str = setting("bucket", "bucket (one caption length per batch) or pad (packed)")
    cache_views: int = setting(1, "Cached views per image: 1 plain, 2 +mirrored, more +crops")
    cache_dir: str | None = setting(None, "Feature cache folder (default ~/.cache/captioner)", path=True)
    eval_every: int = setting(1, "Val BLEU-4/CIDEr every N epochs")
    val_images: int = setting(500, "Val images decoded for CIDEr")
    early_stop: int = setting(3, "Stop after N evaluations without better CIDEr (0: off)")
    seed: int = setting(0)
    accelerator: str = setting("auto")
    precision: str = setting("auto")  # auto (bf16 where the processor has bf16 units), fp32 or bf16: precision.py
    devices: int = setting(1, "Processes/GPUs per node (DDP when > 1)")
    num_nodes: int = setting(1)
    num_workers: int = setting(0, "DataLoader workers decoding images")
    encode_batch_size: int = setting(32, "Images per batch of the encoder pass that fills the feature cache")
    scst: bool = setting(False, "Self-critical training on CIDEr-D after cross-entropy: start from --init RUN (use a "
                         "low --lr, e.g. 5e-5)")
    init: str | None = setting(None, "Start from this run's model (its settings, vocabulary and weights)", path=True)
    scst_samples: int = setting(5, "Captions sampled per image (SCST)")
    scst_baseline: str = setting("mean", "mean (of the other samples) or greedy (SCST)")
    resume: bool = setting(False, "Continue the run in --out from its last checkpoint (same flags as the run)")
    force: bool = setting(False, "With --resume: accept new --epochs, --min-lr, --eval-every, --early-stop, "
                          "--val-images; without: train into a folder that holds a model (replaced at export)")
    progress: bool = setting(True)  # bars when both stdout and stderr are terminals, else one line per epoch

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
