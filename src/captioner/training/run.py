"""Training with Lightning, wired up: records -> vocabulary and model -> data module, Lightning module and callbacks
(``data``, ``module``, ``callbacks``) -> trainer -> run folder with the artifact; then the checks of
``--resume``; a run holds its folder's lock throughout, and one stopped by SIGTERM, Ctrl-C or an error says what it
left (``exit``).
"""
from __future__ import annotations

import logging
import signal
import sys
import traceback
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from captioner.data.datasets import ImageRecord, SkipReport, describe, has_splits, open_split
from captioner.data.tokenizers import choose_tokenizer
from captioner.data.vocab import Vocabulary
from captioner.data.word_vectors import apply_word_vectors
from captioner.io import read_json, write_json
from captioner.model_card import write_card
from captioner.models.captioner import ModelConfig, load_state, read_artifact, save_artifact
from captioner.models.timm_backbones import own_image_size
from captioner.precision import resolve, summary
from captioner.training.callbacks import (
    AtomicCheckpointIO,
    BestCheckpoint,
    BFloat16Mixed,
    EpochCSV,
    EpochProgressLines,
    EvalEarlyStopping,
    moving_average,
)
from captioner.training.config import NOT_COMPARED, SAFE_ON_RESUME, TrainConfig, bars
from captioner.training.data import CaptionData
from captioner.training.exit import TrainingFailed, stopped_message
from captioner.training.folder import RUN_CONFIG, RUN_VOCAB, check_new_run, hold, run_file
from captioner.training.module import CaptionModule
from captioner.training.rewards import CiderD, reference_ids, reference_key


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
    # a setting the run's config lacks (saved before it existed) has its default there
    saved_model = {f.name: f.default for f in fields(ModelConfig)} | read_json(run_file(out, RUN_CONFIG),
                                                                               "model config of the run")
    if cfg.train_max_len is None and "train_max_len" in saved:  # the default: whatever the run used
        cfg.train_max_len = saved["train_max_len"]
    diffs = [(k, saved[k], v) for k, v in asdict(cfg).items() if k not in NOT_COMPARED and k in saved and saved[k] != v]
    if not cfg.init:  # an --init run's model comes from there, whatever the model flags say
        diffs += [(k, saved_model.get(k), v) for k, v in model_kwargs.items() if saved_model.get(k) != v]
    unsafe = [d for d in diffs if d[0] not in SAFE_ON_RESUME]
    if unsafe or (diffs and not cfg.force):
        listing = "; ".join(f"--{k.replace('_', '-')} was {old!r}, now {new!r}" for k, old, new in (unsafe or diffs))
        raise ValueError(f"--resume: these settings differ from the run in {out}: {listing}. Resume with the run's "
                         f"own flags (see {out / 'train_config.json'}, {run_file(out, RUN_CONFIG)}); --force accepts "
                         f"changes to {', '.join('--' + k.replace('_', '-') for k in SAFE_ON_RESUME)} only")
    if diffs:
        print("--force: resuming with " + "; ".join(f"{k} {old!r} -> {new!r}" for k, old, new in diffs), flush=True)
        write_json(out / "train_config.json", asdict(cfg))
    return {k for k, _, _ in diffs}


def train(cfg: TrainConfig, model_kwargs: dict[str, Any] | None = None,
          defaults: dict[str, Any] | None = None) -> Path:
    """Train (or resume) a run in ``cfg.out``, holding the folder's lock; returns the run folder holding the exported
    model. ``defaults``: the CLI's defaults by parameter name, so that a printed command leaves them out."""
    out, model_kwargs = Path(cfg.out), model_kwargs or {}
    if "image_size" in model_kwargs and model_kwargs["image_size"] is None:  # a timm: model's own input size
        model_kwargs = {**model_kwargs, "image_size": own_image_size(model_kwargs["backbone"])}
    with hold(out):
        try:
            return _train(cfg, model_kwargs, defaults)
        except KeyboardInterrupt:  # before fit (inside it, Lightning turns Ctrl-C into exit status 1)
            print(stopped_message(cfg, model_kwargs, None, "Ctrl-C", defaults), file=sys.stderr, flush=True)
            raise SystemExit(128 + signal.SIGINT) from None


def _train(cfg: TrainConfig, model_kwargs: dict[str, Any], defaults: dict[str, Any] | None) -> Path:
    out = Path(cfg.out)
    last = out / "checkpoints" / "last.ckpt"
    if cfg.resume and not last.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {last}; start the run without --resume")
    if not cfg.resume and last.is_file():
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it or choose another --out")
    if not cfg.resume:
        check_new_run(out, cfg.force)
    forget = cfg.resume and "val_images" in check_resume(out, cfg, model_kwargs)
    if forget:
        print("--val-images changed: the best val CIDEr so far was measured on other images, so it is forgotten "
              "(the next evaluation replaces best.ckpt)", flush=True)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
    # the frozen encoder is kept in eval mode on purpose (its BatchNorm statistics are the pretrained ones)
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r"`training_step` returned `None`")  # a skipped step: counted, said
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_records, val_records = load_records(cfg)
    init_state = None
    if cfg.resume:
        vocab, config_path = Vocabulary.load(run_file(out, RUN_VOCAB)), run_file(out, RUN_CONFIG)
        model_cfg = ModelConfig.from_dict(read_json(config_path, "model config"), str(config_path))
    elif cfg.init:  # SCST (or a warm start): the model, vocabulary and weights of an earlier run
        model_cfg, vocab, init_state = read_artifact(cfg.init)
        print(f"model settings and vocabulary come from --init {cfg.init} (its config.json)", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        vocab.save(out / RUN_VOCAB)
        write_json(out / "train_config.json", asdict(cfg))
        write_json(out / RUN_CONFIG, asdict(model_cfg))
    else:
        tokenizer = choose_tokenizer(cfg.lang, cfg.tokenizer, [c for r in train_records[:200] for c in r.captions],
                                     lambda line: print(line, flush=True))
        vocab = Vocabulary.build((c for r in train_records for c in r.captions), cfg.threshold, tokenizer=tokenizer)
        model_cfg = ModelConfig(vocab_size=len(vocab), seed=cfg.seed, trained_on=describe(cfg.data),
                                **model_kwargs)
        out.mkdir(parents=True, exist_ok=True)
        vocab.save(out / RUN_VOCAB)
        write_json(out / "train_config.json", asdict(cfg))
        write_json(out / RUN_CONFIG, asdict(model_cfg))
    if cfg.lang and cfg.lang != vocab.tokenizer.language:
        raise ValueError(f"--lang {cfg.lang}: the run's vocabulary is {vocab.tokenizer.describe()} (its vocab.json)")
    print(f"{len(train_records)} train / {len(val_records)} val images, vocabulary {len(vocab)} words "
          f"(threshold {vocab.threshold}; {vocab.tokenizer.describe()}), {model_cfg.decoder} decoder on "
          f"{model_cfg.backbone} "
          f"({model_cfg.encoder_weights} weights, {'fine-tuned' if model_cfg.fine_tune else 'frozen'}); "
          f"run folder {out}", flush=True)
    cuda = torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")
    precision = resolve(cfg.precision, "cuda" if cuda else "cpu")
    # self-critical sampling draws from bf16 log-probabilities only on a GPU: on the CPU it was not measured
    steps = "fp32" if cfg.scst and not cuda else precision
    print(summary(precision, "cuda" if cuda else "cpu") + ("" if steps == precision else
          "; the self-critical steps run in float32"), flush=True)
    data = CaptionData(cfg, model_cfg, train_records, val_records, vocab, precision)
    module = CaptionModule(asdict(model_cfg), vocab.itos, asdict(cfg))
    module.vocab = vocab  # with its threshold, for the artifact's vocab.json
    if cfg.word_vectors:  # a resumed run's checkpoint holds them; only the freezing is set again
        embed = module.model.decoder.embed
        if cfg.resume:
            embed.weight.requires_grad_(not cfg.freeze_word_vectors)
        else:
            print(apply_word_vectors(embed, cfg.word_vectors, vocab, cfg.freeze_word_vectors), flush=True)
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
        callbacks.append(moving_average(module, cfg.ema))
    if bars(cfg):  # tqdm: Lightning's default rich bar redraws from a thread and cost ~30% of an epoch on 2 cores
        callbacks.append(TQDMProgressBar())
    elif cfg.progress:  # a log file: a line every 30 s within an epoch, besides each epoch's line
        callbacks.append(EpochProgressLines())
    trainer = L.Trainer(max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=cfg.devices,
                        num_nodes=cfg.num_nodes, strategy="ddp" if cfg.devices * cfg.num_nodes > 1 else "auto",
                        gradient_clip_val=cfg.clip,
                        callbacks=callbacks, logger=TensorBoardLogger(out, name="tb", version=""),
                        use_distributed_sampler=False, num_sanity_val_steps=0,
                        enable_progress_bar=bars(cfg), enable_model_summary=False,
                        log_every_n_steps=1, reload_dataloaders_every_n_epochs=1,
                        plugins=[AtomicCheckpointIO()] + ([BFloat16Mixed("cuda" if cuda else "cpu")] if steps == "bf16"
                                                          else []))
    try:
        trainer.fit(module, datamodule=data, ckpt_path=last if cfg.resume else None)
    except SIGTERMException:  # Lightning ends fit with exit status 0: say what is left and fail
        if trainer.is_global_zero:
            print(stopped_message(cfg, model_kwargs, trainer.current_epoch, "SIGTERM", defaults), file=sys.stderr,
                  flush=True)
        raise SystemExit(128 + signal.SIGTERM) from None
    except SystemExit:
        if not trainer.interrupted:
            raise
        # Lightning turns Ctrl-C into exit status 1 without a word, and leaves Ctrl-C ignored (also by the processes
        # this one starts next): say what SIGTERM says, and give Ctrl-C back
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if trainer.is_global_zero:
            print(stopped_message(cfg, model_kwargs, trainer.current_epoch, "Ctrl-C", defaults), file=sys.stderr,
                  flush=True)
        raise SystemExit(128 + signal.SIGINT) from None
    except Exception as e:  # with a checkpoint saved, the run's best model so far is exported; else as it was
        saved = saved_checkpoint(best.best_model_path, out)
        if not trainer.is_global_zero or saved is None:
            raise
        raise TrainingFailed(export_after_error(module, saved, out, trainer.current_epoch, e)) from e
    if trainer.is_global_zero:
        export(module, best.best_model_path, out)
    return out


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
        what = "the best checkpoint by val CIDEr" if Path(best_ckpt).stem.startswith("best") else "the checkpoint"
        print(f"exporting {what}: {best_ckpt}", flush=True)
    save_artifact(module.model.cpu(), module.vocab, out)
    write_card(out)
    if (out / "metrics.csv").is_file():
        loss_plot(out / "metrics.csv", out / "loss.png")
    print(f"model: {out / 'model.safetensors'} (+ config.json, vocab.json, README.md: its card); curves: "
          f"{out / 'metrics.csv'}, {out / 'loss.png'}", flush=True)


def saved_checkpoint(best_ckpt: str, out: Path) -> str | None:
    """The checkpoint a run that stopped on an error exports: its best by val CIDEr, else its last, else none."""
    last = out / "checkpoints" / "last.ckpt"
    return best_ckpt if best_ckpt and Path(best_ckpt).is_file() else str(last) if last.is_file() else None


def export_after_error(module: CaptionModule, saved: str, out: Path, epoch: int, error: Exception) -> str:
    """Export checkpoint ``saved`` of a run that stopped on ``error``, keep the traceback in ``error.log``; returns
    the message that says so."""
    (out / "error.log").write_text("".join(traceback.format_exception(error)))
    export(module, saved, out)
    which = "best checkpoint so far" if Path(saved).stem.startswith("best") else "last checkpoint"
    return (f"training stopped on an error in epoch {epoch + 1} ({type(error).__name__}: {error}); the traceback is "
            f"in {out / 'error.log'}. Exported the {which} ({saved}) as the run's model: "
            f"{out / 'model.safetensors'}; --resume continues from {out / 'checkpoints' / 'last.ckpt'}")
