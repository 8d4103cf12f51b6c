"""`captioner train`: flags -> TrainConfig and the model's settings -> captioner.train."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from captioner import recipe
from captioner.cli.common import (
    DEFAULT_DECODER,
    DataArg,
    Decoder,
    ImagesOpt,
    LangOpt,
    PrecisionOpt,
    TokenizerOpt,
    _fail,
    app,
)
from captioner.cli.help import TRAIN_SECTIONS, sectioned
from captioner.models.families import describe


@app.command(cls=sectioned(TRAIN_SECTIONS))
def train(ctx: typer.Context, data: DataArg,
          out: Annotated[Path, typer.Option(help="Run folder (model, metrics.csv, loss.png, checkpoints)")] = Path(
              "runs/default"),
          images: ImagesOpt = None,
          val_data: Annotated[Path | None, typer.Option(help="Validation source (folder, Karpathy JSON or COCO file); "
                                                       "default: the data's val split, else --val-fraction held out")]
          = None,
          val_image_dir: Annotated[Path | None, typer.Option(help="Image folder of a --val-data COCO file")] = None,
          val_fraction: Annotated[float, typer.Option(help="Share of training images held out (seeded) when the "
                                                      "data has no val split")] = 0.05,
          val_split: Annotated[str, typer.Option(help="The data's split to validate on; 'none': hold out "
                                                 "--val-fraction of train (to keep val unseen for scoring)")] = "val",
          decoder: Annotated[Decoder, typer.Option(help=f"Decoder family: {describe()}")]
          = DEFAULT_DECODER,
          backbone: Annotated[str, typer.Option(help="efficientnet_lite0/1/2 (ImageNet weights ship with the "
                                                "package: offline), resnet18/34/50/101/152, resnext50_32x4d, "
                                                "wide_resnet50_2, or timm:NAME (any timm model: CLIP, SigLIP, "
                                                "DINOv2 ViTs, ConvNeXt; docs/encoders.md)")]
          = recipe.MODEL["backbone"],
          encoder_weights: Annotated[str, typer.Option(help="imagenet (resnets: file in $TORCH_HOME/hub/checkpoints; "
                                                       "timm: the tag's pretrained weights), none (seeded random), "
                                                       "hub (timm: Hugging Face, the local cache first) or FILE "
                                                       "(timm: a .safetensors of the model's weights)")] = "imagenet",
          image_size: Annotated[int, typer.Option(help="Encoder input side in pixels (a timm: model's own unless "
                                                  "given)")] = recipe.MODEL["image_size"],
          grid: Annotated[int, typer.Option(help="Feature grid side G: the last feature map average-pooled to G x G "
                                            "cells (7 at 224 px is the map itself)")] = recipe.MODEL["grid"],
          output_stride: Annotated[int, typer.Option(help="32 (standard), 16 or 8 (dilated last stages: denser "
                                                     "features, slower; resnet50+)")] = 32,
          embed_size: int = recipe.MODEL["embed_size"], hidden_size: int = recipe.MODEL["hidden_size"],
          num_layers: Annotated[int, typer.Option(help="LSTM layers (show-tell)")] = 1,
          attention_size: Annotated[int, typer.Option(help="Attention MLP width (attention)")] = 256,
          context_size: Annotated[int, typer.Option(help="Width the grid is projected to (attention)")] = 256,
          attention_score: Annotated[str, typer.Option(help="additive (Bahdanau) or dot (Luong's general score "
                                                       "over the values: ~1.6x faster training steps; attention)")]
          = "additive",
          attention_penalty: Annotated[float, typer.Option(help="Weight of the doubly stochastic attention "
                                                         "regulariser (attention)")]
          = recipe.TRAIN["attention_penalty"],
          label_smoothing: Annotated[float, typer.Option(help="Cross-entropy label smoothing eps (0: off)")] = 0.0,
          scheduled_sampling: Annotated[str, typer.Option(help="P[:START:EVERY:MAX]: after epoch START the model is "
                                                          "fed its own sampled word with probability P x periods of "
                                                          "EVERY epochs, at most MAX (defaults 0:5:0.25; '': off)")]
          = "",
          word_dropout: Annotated[float, typer.Option(help="Share of input words replaced by <unk> in training")]
          = 0.0,
          train_max_len: Annotated[int | None, typer.Option(help="Cut training captions to this many words (0: "
                                                            "whole; default: the 99.9th percentile of their lengths)")]
          = None,
          dropout: Annotated[float, typer.Option(help="Dropout on the LSTM's output (and between its layers)")]
          = recipe.MODEL["dropout"],
          batch_norm: Annotated[bool, typer.Option(help="BatchNorm after the image embedding (show-tell)")] = True,
          fine_tune: Annotated[bool, typer.Option(help="Train the encoder's last stage (no feature cache)")] = False,
          max_len: Annotated[int, typer.Option(min=1, help="Longest caption generated, in tokens")] = 20,
          epochs: int = recipe.TRAIN["epochs"], batch_size: int = recipe.TRAIN["batch_size"],
          lr: Annotated[float, typer.Option(help="Initial learning rate (Adam)")] = recipe.TRAIN["lr"],
          min_lr: Annotated[float, typer.Option(help="Lowest learning rate the scheduler reaches")]
          = recipe.TRAIN["min_lr"],
          scheduler: Annotated[str, typer.Option(help="cosine, plateau (on val loss) or none")] = "cosine",
          weight_decay: float = 0.0, clip: Annotated[float, typer.Option(help="Gradient norm clip")] = 5.0,
          ema: Annotated[float, typer.Option(help="Decay of an exponential moving average of the weights, which is "
                                             "validated and saved (e.g. 0.99; 0: none)")] = recipe.TRAIN["ema"],
          threshold: Annotated[int, typer.Option(help="Vocabulary frequency threshold")] = recipe.TRAIN["threshold"],
          lang: LangOpt = None, tokenizer: TokenizerOpt = None,
          word_vectors: Annotated[Path | None, typer.Option(help="GloVe / fastText / word2vec text file (UTF-8, any "
                                                            "language, .gz too) initialising the word embedding; its "
                                                            "dimension must be --embed-size")] = None,
          freeze_word_vectors: Annotated[bool, typer.Option(help="Keep the embedding at --word-vectors")] = False,
          batching: Annotated[str, typer.Option(help="bucket (one caption length per batch) or pad (packed)")]
          = "bucket",
          cache_views: Annotated[int, typer.Option(help="Cached views per image: 1 plain, 2 +mirrored, more +crops")]
          = 1,
          cache_dir: Annotated[Path | None, typer.Option(help="Feature cache folder (default ~/.cache/captioner)")]
          = None,
          eval_every: Annotated[int, typer.Option(help="Val BLEU-4/CIDEr every N epochs")] = 1,
          val_images: Annotated[int, typer.Option(help="Val images decoded for CIDEr")] = recipe.TRAIN["val_images"],
          early_stop: Annotated[int, typer.Option(help="Stop after N evaluations without better CIDEr (0: off)")]
          = recipe.TRAIN["early_stop"],
          seed: int = 0, accelerator: str = "auto", precision: PrecisionOpt = "auto",
          devices: Annotated[int, typer.Option(help="Processes/GPUs per node (DDP when > 1)")] = 1,
          num_nodes: int = 1,
          num_workers: Annotated[int, typer.Option(help="DataLoader workers decoding images")] = 0,
          scst: Annotated[bool, typer.Option(help="Self-critical training on CIDEr-D after cross-entropy: start "
                                             "from --init RUN (use a low --lr, e.g. 5e-5)")] = False,
          init: Annotated[Path | None, typer.Option(help="Start from this run's model (its settings, vocabulary "
                                                    "and weights)")] = None,
          scst_samples: Annotated[int, typer.Option(help="Captions sampled per image (SCST)")] = 5,
          scst_baseline: Annotated[str, typer.Option(help="mean (of the other samples) or greedy (SCST)")] = "mean",
          resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint (same "
                                               "flags as the run)")] = False,
          force: Annotated[bool, typer.Option(help="With --resume: accept new --epochs, --min-lr, --eval-every, "
                                              "--early-stop, --val-images; without: train into a folder that holds "
                                              "a model (replaced at export)")] = False,
          progress: bool = True) -> None:
    """Train a captioner (frozen encoder via the feature cache) and export it to the run folder."""
    from captioner.models.backbones import WeightsUnavailableError
    from captioner.train import TrainConfig
    from captioner.train import train as run
    from captioner.train_exit import TrainingFailed

    try:
        cfg = TrainConfig(data=str(data), out=str(out), images=str(images) if images else None,
                          val_data=str(val_data) if val_data else None,
                          val_image_dir=str(val_image_dir) if val_image_dir else None, val_fraction=val_fraction,
                          val_split=val_split, label_smoothing=label_smoothing,
                          scheduled_sampling=scheduled_sampling, word_dropout=word_dropout,
                          train_max_len=train_max_len,
                          epochs=epochs, batch_size=batch_size, lr=lr, min_lr=min_lr, scheduler=scheduler,
                          weight_decay=weight_decay, clip=clip, ema=ema, attention_penalty=attention_penalty,
                          threshold=threshold, word_vectors=str(word_vectors) if word_vectors else None,
                          freeze_word_vectors=freeze_word_vectors, lang=lang, tokenizer=tokenizer, batching=batching,
                          cache_views=cache_views,
                          cache_dir=str(cache_dir) if cache_dir else None, eval_every=eval_every,
                          val_images=val_images, early_stop=early_stop, seed=seed, accelerator=accelerator,
                          devices=devices, num_nodes=num_nodes, num_workers=num_workers, scst=scst, precision=precision,
                          init=str(init) if init else None, scst_samples=scst_samples, scst_baseline=scst_baseline,
                          resume=resume, force=force,
                          progress=progress)
        if backbone.startswith("timm:") and ctx and ctx.get_parameter_source("image_size").name == "DEFAULT":
            image_size = None  # the model's own (train resolves it)
        run(cfg, dict(decoder=decoder.value, backbone=backbone, encoder_weights=encoder_weights, image_size=image_size,
                      grid=grid, embed_size=embed_size, hidden_size=hidden_size, num_layers=num_layers,
                      attention_size=attention_size, context_size=context_size,
                      attention_score=attention_score, dropout=dropout, batch_norm=batch_norm, fine_tune=fine_tune,
                      max_len=max_len, output_stride=output_stride),
            _defaults(ctx))
    except (OSError, ValueError, WeightsUnavailableError) as e:
        raise _fail(e) from None
    except TrainingFailed as e:  # the best model so far is exported: not a usage error
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None


def _defaults(ctx: typer.Context) -> dict[str, Any]:
    """The command's default value of each parameter, as the config holds it (paths as strings)."""
    return {p.name: str(p.default) if isinstance(p.default, Path) else p.default for p in ctx.command.params}


