"""The `captioner` command: thin wrappers that parse flags and call the modules (no logic here)."""
from __future__ import annotations

import time
from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from captioner import recipe
from captioner.cli_help import CAPTION_SECTIONS, EVALUATE_SECTIONS, TRAIN_SECTIONS, sectioned
from captioner.models.families import DECODERS, FAMILIES, describe, family
from captioner.search_options import SearchOptions

# rich_markup_mode=None: click's plain help, which wraps text but never cuts an option's name (rich's tables did)
app = typer.Typer(help="Train, evaluate and serve CNN->LSTM image-captioning models (Show and Tell).",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None)

DataArg = Annotated[Path, typer.Option("--data", help="Data set: a folder with annotations/captions_<split>*.json "
                                       "(synthetic, COCO 2014/2017 layout), a Karpathy JSON, a COCO annotation file, "
                                       "a Flickr8k/30k token file (splits from the Flickr_8k.*Images.txt lists beside "
                                       "it) or an image,caption CSV (captions.txt); the format is read from the file")]
ImagesOpt = Annotated[Path | None, typer.Option(help="Image folder (COCO file, Flickr token file or CSV; found "
                                                "beside a Flickr file by its usual name) or image root (Karpathy)")]

LangOpt = Annotated[str | None, typer.Option("--lang", help="Caption language: en, zh, de, fr, es, it, nl (stored in "
                                             "vocab.json; default: guessed from the captions, said in the log)")]
Decoder = Enum("Decoder", {name: name for name in DECODERS}, type=str)  # --decoder's choices: the registry
DEFAULT_DECODER = Decoder(recipe.DECODER)
TokenizerOpt = Annotated[str | None, typer.Option(help="The language's tokenizer: zh jieba (words, default) or char; "
                                                  "en treebank; others unicode")]


def _fail(e: Exception) -> typer.Exit:
    typer.secho(f"error: {e}", fg="red", err=True)
    return typer.Exit(2)


@app.command()
def synth(out: Annotated[Path, typer.Option(help="Folder to write the data set to")] = Path("data/synth"),
          train: Annotated[int, typer.Option(help="Training images")] = 2000,
          val: Annotated[int, typer.Option(help="Validation images")] = 250,
          test: Annotated[int, typer.Option(help="Test images")] = 250,
          size: Annotated[int, typer.Option(help="Image side in pixels")] = 128,
          seed: Annotated[int, typer.Option(help="Random seed (same seed, same files)")] = 0) -> None:
    """Write the synthetic captioned-scenes data set (COCO format, 5 captions per image)."""
    from captioner.synth import generate

    try:
        paths = generate(out, train, val, test, size, seed)
    except ValueError as e:
        raise _fail(e) from None
    for split, path in paths.items():
        typer.echo(f"{split}: {path}")


@app.command()
def inspect(data: Annotated[Path | None, typer.Option(help="Data set folder, Karpathy JSON, COCO file, Flickr token "
                                                     "file or captions CSV")] = None,
            coco: Annotated[Path | None, typer.Option(help="A COCO caption annotation file")] = None,
            karpathy: Annotated[Path | None, typer.Option(help="A Karpathy split JSON")] = None,
            images: ImagesOpt = None,
            split: Annotated[str, typer.Option(help="Split to read (train/val/test)")] = "train",
            grid: Annotated[Path | None, typer.Option(help="Write a PNG of sample images with captions")] = None,
            n: Annotated[int, typer.Option(help="Images in the grid")] = 8, lang: LangOpt = None,
            tokenizer: TokenizerOpt = None) -> None:
    """Report a data set: images and captions per split, caption lengths, skipped images with reasons."""
    from captioner.data.datasets import has_splits, open_split
    from captioner.data.tokenizers import choose_tokenizer

    source = data or coco or karpathy
    if source is None:
        raise _fail(ValueError("give --data, --coco or --karpathy"))
    try:
        records, report = open_split(source, split, images)
        splits = {}
        for other in ("train", "val", "test") if has_splits(source) else ():
            try:
                found = records if other == split else open_split(source, other, images, check_images=False)[0]
                splits[other] = f"{len(found)} images, {sum(len(r.captions) for r in found)} captions"
            except (FileNotFoundError, ValueError) as e:  # a broken split list: said on its line
                splits[other] = f"none ({e})"
        words = choose_tokenizer(lang, tokenizer, [c for r in records[:200] for c in r.captions], typer.echo)
    except (OSError, ValueError) as e:
        raise _fail(e) from None
    lengths = Counter(len(words.split(c)) for r in records for c in r.captions)
    for name, line in splits.items():
        typer.echo(f"{name}: {line}")
    typer.echo(f"source: {source} (split {split})")
    typer.echo(f"usable images: {len(records)}")
    typer.echo(f"captions: {sum(lengths.values())}")
    typer.echo(f"duplicate captions (repeated within their image): "
               f"{sum(len(r.captions) - len(set(r.captions)) for r in records)}")
    typer.echo(f"skipped images: {len(report.skipped)}")
    for reason, count in report.reasons().most_common():
        typer.echo(f"  {count} {reason}")
    for note in report.notes:
        typer.echo(f"note: {note}")
    if lengths:
        top = max(lengths.values())
        typer.echo(f"caption length ({words.describe()}): count")
        for length in sorted(lengths):
            typer.echo(f"  {length:3d}: {lengths[length]:7d} {'#' * max(1, round(40 * lengths[length] / top))}")
    if grid and records:
        from captioner.plots import caption_grid

        sample = records[:n]
        caption_grid([r.path for r in sample], [r.captions[0] for r in sample], grid)
        typer.echo(f"grid: {grid}")


@app.command()
def vocab(data: DataArg, images: ImagesOpt = None,
          split: Annotated[str, typer.Option(help="Split whose captions build it")] = "train",
          threshold: Annotated[int, typer.Option(help="Keep words seen at least this often")] = 5,
          out: Annotated[Path | None, typer.Option(help="Save the vocabulary JSON here")] = None,
          lang: LangOpt = None, tokenizer: TokenizerOpt = None) -> None:
    """Build a vocabulary from a split's captions and print its size (and save it as JSON)."""
    from captioner.data.datasets import open_split
    from captioner.data.tokenizers import choose_tokenizer
    from captioner.data.vocab import Vocabulary

    start = time.perf_counter()
    try:
        records, _ = open_split(data, split, images, check_images=False)
        words = choose_tokenizer(lang, tokenizer, [c for r in records[:200] for c in r.captions], typer.echo)
        v = Vocabulary.build((c for r in records for c in r.captions), threshold, progress=True, tokenizer=words)
    except (OSError, ValueError) as e:
        raise _fail(e) from None
    n = sum(len(r.captions) for r in records)
    typer.echo(f"vocabulary: {len(v)} words (threshold {threshold}; {words.describe()}) from {n} captions of "
               f"{len(records)} images in {time.perf_counter() - start:.1f} s")
    if out:
        typer.echo(f"saved: {v.save(out)}")


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


MaxLenOpt = Annotated[int | None, typer.Option(min=1, help="Longest caption, in tokens (default: the model's "
                                                "max_len)")]
BeamOpt = Annotated[int | None, typer.Option(help=f"Beam width (1: greedy; default {recipe.SEARCH['beam']}, 1 with "
                                             "--sample)")]
PenaltyOpt = Annotated[float, typer.Option(help="Beam length penalty alpha (GNMT): 0 raw log-probability, "
                                           "larger favours longer captions")]
RuntimeOpt = Annotated[str, typer.Option(help="torch (--model is a model folder), int8 (the same on the CPU with "
                                         "the decoder's weights in int8: ~3x faster words) or onnx (--model is a "
                                         "folder from `captioner export --onnx`: onnxruntime, no torch)")]
BlockOpt = Annotated[int, typer.Option(help="Rule out a word that would complete an n-gram already in the caption "
                                       "(e.g. 3; 0: off)")]
BadEndingsOpt = Annotated[bool, typer.Option("--no-bad-endings/--allow-bad-endings", help="Rule out <end> after a "
                                             "function word (a, the, of, with, ...: captioner/data/bad_endings/)")]
SampleOpt = Annotated[bool, typer.Option("--sample", help="Draw captions from the model instead of searching")]
TemperatureOpt = Annotated[float, typer.Option(help="Sampling temperature (below 1 sharper, above 1 flatter)")]
TopKOpt = Annotated[int, typer.Option(help="Sample among the k likeliest words (0: all)")]
TopPOpt = Annotated[float, typer.Option(help="Sample among the likeliest words that hold this probability (nucleus)")]
NOpt = Annotated[int, typer.Option("--n", help="Captions sampled per image (the likeliest is the one used)")]
SeedOpt = Annotated[int | None, typer.Option(help="Sampling seed: the same seed, the same captions of an image")]
GroupsOpt = Annotated[int, typer.Option(help="Diverse beam search: the beams in G groups, each kept from the words "
                                        "earlier groups chose (G must divide --beam)")]
PrecisionOpt = Annotated[str, typer.Option(help="auto (bfloat16 where the processor multiplies it natively: a GPU, "
                                            "a CPU with AMX or AVX-512 BF16; float32 elsewhere), fp32 or bf16; "
                                            "the encoder pass (and training's steps); said in the log")]
DiversityOpt = Annotated[float, typer.Option(help="Diverse beam search: a group's penalty per earlier group's beam "
                                             "with the same word at that step")]


def _options(beam: int | None, *flags: Any) -> tuple[int, SearchOptions]:
    """The beam width (unset: the recipe's, 1 with --sample) and the search options from a command's flags (in
    SearchOptions' field order), checked together."""
    options = SearchOptions(*flags)
    beam = beam if beam is not None else 1 if options.sample else recipe.SEARCH["beam"]
    options.check(beam)
    return beam, options


ModelsOpt = Annotated[list[Path], typer.Option("--model", help="Model folder (model.safetensors, config.json, "
                                              "vocab.json); repeated: an ensemble of models sharing the vocabulary "
                                              "and encoder, their log-probabilities averaged at every step")]


@app.command(cls=sectioned(CAPTION_SECTIONS))
def caption(model: ModelsOpt,
            images: Annotated[list[Path], typer.Argument(help="Image files, or folders: their images (not recursive)")],
            beam: BeamOpt = None,
            max_len: MaxLenOpt = None, length_penalty: PenaltyOpt = recipe.SEARCH["length_penalty"],
            block_ngram: BlockOpt = recipe.SEARCH["block_ngram"],
            no_bad_endings: BadEndingsOpt = recipe.SEARCH["bad_endings"], sample: SampleOpt = False,
            temperature: TemperatureOpt = 1.0, top_k: TopKOpt = 0, top_p: TopPOpt = 1.0, n: NOpt = 1,
            seed: SeedOpt = None, groups: GroupsOpt = 1, diversity: DiversityOpt = 0.0,
            grid: Annotated[Path | None, typer.Option(help="Write a PNG grid of the images with captions")] = None,
            attention: Annotated[Path | None, typer.Option(help="Write a PNG of each word's attention map over its "
                                                       "image (attention models)")] = None,
            runtime: RuntimeOpt = "torch",
            json: Annotated[bool, typer.Option("--json", help="One JSON line per image: file, captions best first "
                                               "(text, score, log_prob, tokens, word_log_probs)")] = False,
            n_best: Annotated[int, typer.Option(min=1, help="Captions per image, best first: up to --beam (with "
                                                "--groups from different groups), or --n with --sample")] = 1,
            json_attention: Annotated[bool, typer.Option(help="With --json: each caption's attention maps "
                                                         "(attention models)")] = False,
            precision: PrecisionOpt = "auto") -> None:
    """Print the best caption of each image (--n-best: several; --json: with scores per word), and optionally draw
    them in a grid, or their attention maps."""
    from PIL import ImageOps

    from captioner import load
    from captioner.inference import load_ensemble
    from captioner.predict import caption_files

    try:
        beam, options = _options(beam, block_ngram, no_bad_endings, sample, temperature, top_k, top_p, n, seed, groups,
                                 diversity)
        kept = options.n if options.sample else beam
        if n_best > kept:
            raise ValueError(f"--n-best {n_best}: the search keeps {kept} caption(s) per image; raise "
                             f"{'--n' if options.sample else '--beam'} to at least {n_best}")
        if len(model) > 1 and runtime == "onnx":
            raise ValueError("an ensemble (--model given twice or more) runs with --runtime torch or int8")
        m = load(str(model[0]), runtime=runtime, precision=precision) if len(model) == 1 else load_ensemble(
            model, int8=runtime == "int8", precision=precision)
        if warning := m.config.synthetic_warning():
            typer.secho(f"warning: {warning}", fg="yellow", err=True)
        if attention and not family(m.config.decoder).attends:
            attending = ", ".join(name for name, f in FAMILIES.items() if f.attends)
            raise ValueError(f"--attention needs an attention model ({attending}); {model} is {m.config.decoder}")
        captioned, crops, skipped = [], [], 0  # crops: what --attention draws, 224 px (not the decoded photos)
        for path, image, hyps in caption_files(m, _image_files(images), beam, max_len=max_len,
                                               length_penalty=length_penalty, options=options, word_scores=json):
            if isinstance(hyps, OSError):
                typer.secho(f"skipped: {hyps}", fg="yellow", err=True)
                if json:  # one line per image, as the API's result of a skipped file
                    typer.echo(caption_line(path, [], error=str(hyps)))
                skipped += 1
                continue
            if json:
                typer.echo(caption_line(path, hyps[:n_best], json_attention))
            for rank, h in enumerate(hyps[:n_best] if not json else []):
                typer.echo(f"{path}\t{h.text}" if n_best == 1 else f"{path}\t{rank + 1}\t{h.score:.4f}\t{h.text}")
            captioned.append((path, hyps[0]))
            if attention:
                crops.append(ImageOps.fit(image, (224, 224)))
    except (OSError, ValueError, ImportError) as e:
        raise _fail(e) from None
    if grid and captioned:
        from captioner.plots import caption_grid

        caption_grid([p for p, _ in captioned], [h.text for _, h in captioned], grid)
        typer.echo(f"grid: {grid}")
    if attention and captioned:
        from captioner.plots import attention_maps

        attention_maps(crops, [h for _, h in captioned], attention)
        typer.echo(f"attention maps: {attention}")
    if skipped:
        raise typer.Exit(1)


def caption_line(path: Path, captions: list[Any], attention: bool = False, error: str | None = None) -> str:
    """The JSON line of one image for ``caption --json``: the API's fields (serve/schemas.py's Result) and, per
    caption, its tokens and their log-probabilities."""
    import json

    return json.dumps({"file": str(path), "captions": [
        {"text": c.text, "score": c.score, "log_prob": c.log_prob, "tokens": c.tokens,
         "word_log_probs": c.word_log_probs} | (
            {"attention": None if c.attention is None else c.attention.tolist()} if attention else {})
        for c in captions], "error": error})


def _image_files(paths: list[Path]) -> list[Path]:
    """The paths, each folder replaced by its files with an image extension that Pillow knows, sorted."""
    from PIL import Image

    known, out = set(Image.registered_extensions()), []
    for path in paths:
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in known and p.is_file()) if path.is_dir() else []
        out += found or [path]  # a folder without images stays, to be reported
    return out


@app.command(cls=sectioned(EVALUATE_SECTIONS))
def evaluate(model: ModelsOpt, data: DataArg, images: ImagesOpt = None,
             split: str = "test", beam: BeamOpt = None, max_len: MaxLenOpt = None,
             length_penalty: PenaltyOpt = recipe.SEARCH["length_penalty"],
             block_ngram: BlockOpt = recipe.SEARCH["block_ngram"],
             no_bad_endings: BadEndingsOpt = recipe.SEARCH["bad_endings"], sample: SampleOpt = False,
             temperature: TemperatureOpt = 1.0, top_k: TopKOpt = 0, top_p: TopPOpt = 1.0, n: NOpt = 1,
             seed: SeedOpt = None, groups: GroupsOpt = 1, diversity: DiversityOpt = 0.0,
             out: Annotated[Path | None, typer.Option(help="Where results/metrics JSON go (default: the model "
                                                      "folder; an ensemble needs it)")]
             = None,
             java: Annotated[bool, typer.Option(help="Official PTB tokenizer + METEOR (needs java)")] = True,
             spice: Annotated[bool, typer.Option(help="Also SPICE (needs Stanford CoreNLP models)")] = False,
             cache_dir: Path | None = None,
             runtime: Annotated[str, typer.Option(help="torch, or int8 (the decoder's weights in int8 on the CPU, "
                                                  "as `caption --runtime int8`)")] = "torch",
             precision: PrecisionOpt = "auto") -> None:
    """Caption a split (generation), write results_<split>.json + metrics_<split>.json, print the metrics."""
    from captioner.evaluate import JavaMissingError
    from captioner.pipeline import evaluate_split

    try:
        if runtime not in ("torch", "int8"):
            raise ValueError(f"evaluate runs with --runtime torch or int8, not {runtime!r}")
        beam, options = _options(beam, block_ngram, no_bad_endings, sample, temperature, top_k, top_p, n, seed, groups,
                                 diversity)
        evaluate_split(model, data, split, images, beam, out, java, spice, cache_dir, max_len, length_penalty,
                       int8=runtime == "int8", options=options, precision=precision)
    except (OSError, ValueError, JavaMissingError) as e:
        raise _fail(e) from None


@app.command()
def score(results: Annotated[Path, typer.Option(help="COCO results JSON [{image_id, caption}]")],
          annotations: Annotated[Path, typer.Option(help="COCO caption annotation JSON (references)")],
          java: Annotated[bool, typer.Option(help="Official PTB tokenizer + METEOR (needs java)")] = True,
          spice: Annotated[bool, typer.Option(help="Also SPICE (needs Stanford CoreNLP models)")] = False,
          lang: Annotated[str, typer.Option("--lang", help="The captions' language (en, zh, de, ...)")] = "en",
          tokenizer: TokenizerOpt = None) -> None:
    """Score any results file against any COCO annotation file (BLEU-1..4, METEOR, ROUGE-L, CIDEr)."""
    from captioner.data.tokenizers import get_tokenizer
    from captioner.evaluate import JavaMissingError, format_table, metric_note, score_files

    try:
        words = get_tokenizer(lang, tokenizer)
        metrics = score_files(results, annotations, java, spice, words)
    except (OSError, ValueError, JavaMissingError) as e:
        raise _fail(e) from None
    typer.echo(format_table({results.name: metrics}))
    if note := metric_note(words):
        typer.echo(f"note: {note}")


@app.command()
def serve(model: Annotated[Path, typer.Option(help="Model folder")],
          host: Annotated[str, typer.Option(help="Address to bind (loopback by default)")] = "127.0.0.1",
          port: int = 8000, beam: BeamOpt = None, max_len: MaxLenOpt = None,
          length_penalty: PenaltyOpt = recipe.SEARCH["length_penalty"],
          block_ngram: BlockOpt = recipe.SEARCH["block_ngram"],
          no_bad_endings: BadEndingsOpt = recipe.SEARCH["bad_endings"], sample: SampleOpt = False,
          temperature: TemperatureOpt = 1.0, top_k: TopKOpt = 0, top_p: TopPOpt = 1.0, n: NOpt = 1,
          seed: SeedOpt = None, groups: GroupsOpt = 1, diversity: DiversityOpt = 0.0,
          max_batch: Annotated[int, typer.Option(help="Most images in one model batch")] = 16,
          max_wait_ms: Annotated[float, typer.Option(help="How long a batch waits to fill")] = 10.0,
          max_queue: Annotated[int, typer.Option(help="Most images held at once (decoding, queued or being "
                                                      "captioned); past it requests get 503 with Retry-After")] = 64,
          timeout: Annotated[float, typer.Option(help="Seconds a request may take after its upload; then 504")] = 30.0,
          max_request_pixels: Annotated[int, typer.Option(help="Most pixels decoded for one request (all its "
                                                               "images, after JPEG reduction); then 413")] = 50_000_000,
          allowed_hosts: Annotated[str | None, typer.Option(help="Host names (and addresses) the server answers for, "
                                                            "comma-separated, '*' any; others get 400 (a web page "
                                                            "reaching it by DNS rebinding). Default: --host and "
                                                            "localhost, 127.0.0.1, [::1]")] = None,
          runtime: RuntimeOpt = "torch", precision: PrecisionOpt = "auto") -> None:
    """Serve captions over HTTP: a web page at /, the API at /v1/captions, its documentation at /docs."""
    from captioner.serve.app import serve as run

    try:
        beam, options = _options(beam, block_ngram, no_bad_endings, sample, temperature, top_k, top_p, n, seed, groups,
                                 diversity)
        run(model, host=host, port=port, beam=beam, max_batch=max_batch, max_wait_ms=max_wait_ms,
            max_queue=max_queue, request_timeout_s=timeout, max_request_pixels=max_request_pixels, max_len=max_len,
            length_penalty=length_penalty, runtime=runtime, options=options, precision=precision,
            allowed_hosts=[h.strip() for h in allowed_hosts.split(",") if h.strip()] if allowed_hosts else None)
    except (OSError, ValueError, ImportError) as e:
        raise _fail(e) from None


@app.command()
def export(model: Annotated[Path, typer.Option(help="Model folder (model.safetensors, config.json, vocab.json)")],
           onnx: Annotated[Path, typer.Option(help="Folder to write the ONNX graphs (encoder, decoder start and step) "
                                              "and the config, vocabulary and preprocessing to")]) -> None:
    """Export a model as ONNX graphs for onnxruntime: then `caption` and `serve` with --runtime onnx."""
    from captioner.export import export_onnx

    try:
        typer.echo(f"onnx: {export_onnx(model, onnx)}")
    except (OSError, ValueError, ImportError) as e:
        raise _fail(e) from None


SYNTHETIC_ONLY = ("train_images", "epochs", "attention_epochs", "image_size", "grid", "backbone", "output_stride")
PHOTOS_ONLY = ("images", "families", "cache_dir", "lang", "tokenizer")


@app.command()
def demo(ctx: typer.Context,
         out: Annotated[Path | None, typer.Option(help="Folder for the data set, the runs and the served model "
                                                "(default runs/demo, with --data runs/photos)")] = None,
         data: Annotated[Path | None, typer.Option(help="A real photo set instead of the synthetic scenes: a "
                                                  "Flickr token file, captions CSV, Karpathy JSON or COCO folder")]
         = None,
         images: ImagesOpt = None,
         families: Annotated[str, typer.Option(help="With --data: decoder families to train, comma-separated")]
         = ",".join(recipe.DEMO_FAMILIES),
         cache_dir: Annotated[Path | None, typer.Option(help="With --data: feature cache folder (default OUT/cache)")]
         = None,
         lang: LangOpt = None, tokenizer: TokenizerOpt = None,
         train_images: Annotated[int, typer.Option(help="Synthetic training images")] = 4000,
         epochs: Annotated[int, typer.Option(help="Show-Tell epochs (synthetic)")] = 6,
         attention_epochs: Annotated[int, typer.Option(help="Attention epochs (synthetic)")] = 8,
         scst_epochs: Annotated[int | None, typer.Option(help="Self-critical epochs for the better family (0: none; "
                                                         f"default 2, with --data {recipe.SCST['epochs']})")] = None,
         image_size: Annotated[int, typer.Option(help="Encoder input side (synthetic)")] = 128,
         grid: Annotated[int, typer.Option(help="Feature grid side G, odd: a centre cell (synthetic)")] = 5,
         backbone: Annotated[str, typer.Option(help="Frozen encoder (efficientnet_lite0: pretrained, offline)")]
         = "efficientnet_lite0",
         output_stride: Annotated[int, typer.Option(help="Stride of the encoder's feature map (16: Lite0's "
                                                    "stride-16 stage, whose cells keep colour and place)")] = 16,
         precision: PrecisionOpt = "auto", progress: bool = True) -> None:
    """The main job, offline: synthetic scenes (or, with --data, a real photo set with the real-photo recipe) ->
    one feature cache -> Show-Tell and attention models -> self-critical training -> a table, pictures."""
    from captioner.models.backbones import WeightsUnavailableError

    try:
        given = [n for n in SYNTHETIC_ONLY if data is not None] + [n for n in PHOTOS_ONLY if data is None]
        given = [n for n in given if ctx.get_parameter_source(n).name == "COMMANDLINE"]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            which = "synthetic demo (without --data)" if data else "demo with --data"
            raise ValueError(f"{flags}: only for the {which}; the real-photo recipe's settings are in "
                             f"captioner/recipe.py")
        if data is not None:
            from captioner.photo_demo import run_photo_demo

            chosen = tuple(f.strip() for f in families.split(",") if f.strip())
            unknown = [f for f in chosen if f not in recipe.FAMILY]
            if unknown or not chosen:
                raise ValueError(f"--families: choose from {', '.join(recipe.FAMILY)}, got {families!r}")
            run_photo_demo(data, images, out or Path("runs/photos"), cache_dir, chosen,
                           recipe.SCST["epochs"] if scst_epochs is None else scst_epochs, progress, lang, tokenizer,
                           precision)
            return
        from captioner.pipeline import run_demo

        run_demo(out or Path("runs/demo"), train_images=train_images, epochs=epochs,
                 attention_epochs=attention_epochs, scst_epochs=2 if scst_epochs is None else scst_epochs,
                 image_size=image_size, grid=grid, backbone=backbone, output_stride=output_stride, progress=progress,
                 precision=precision)
    except (OSError, ValueError, WeightsUnavailableError) as e:
        raise _fail(e) from None

if __name__ == "__main__":
    app()
