"""`captioner caption`, `evaluate` and `score`: captions from a model and their metrics."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from captioner import recipe
from captioner.cli.common import (
    DataArg,
    ImagesOpt,
    ModelsOpt,
    PrecisionOpt,
    RuntimeOpt,
    TokenizerOpt,
    _fail,
    app,
    searching,
)
from captioner.cli.help import CAPTION_SECTIONS, EVALUATE_SECTIONS, sectioned
from captioner.models.families import FAMILIES, family
from captioner.search import Search


@app.command(cls=sectioned(CAPTION_SECTIONS))
@searching
def caption(model: ModelsOpt,
            images: Annotated[list[Path], typer.Argument(help="Image files, or folders: their images (not recursive)")],
            search: Search = recipe.SEARCH,
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
    from captioner.inference import caption_files, load_ensemble

    try:
        if n_best > search.kept:
            raise ValueError(f"--n-best {n_best}: the search keeps {search.kept} caption(s) per image; raise "
                             f"{'--n' if search.sample else '--beam'} to at least {n_best}")
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
        for path, image, hyps in caption_files(m, _image_files(images), search, word_scores=json):
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
@searching
def evaluate(model: ModelsOpt, data: DataArg, images: ImagesOpt = None,
             split: str = "test", search: Search = recipe.SEARCH,
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
    from captioner.evaluation.metrics import JavaMissingError
    from captioner.pipeline import evaluate_split

    try:
        if runtime not in ("torch", "int8"):
            raise ValueError(f"evaluate runs with --runtime torch or int8, not {runtime!r}")
        evaluate_split(model, data, split, images, search, out, java, spice, cache_dir, int8=runtime == "int8",
                       precision=precision)
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
    from captioner.evaluation.metrics import JavaMissingError, format_table, metric_note, score_files

    try:
        words = get_tokenizer(lang, tokenizer)
        metrics = score_files(results, annotations, java, spice, words)
    except (OSError, ValueError, JavaMissingError) as e:
        raise _fail(e) from None
    typer.echo(format_table({results.name: metrics}))
    if note := metric_note(words):
        typer.echo(f"note: {note}")


