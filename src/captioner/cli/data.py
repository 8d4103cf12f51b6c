"""`captioner synth`, `inspect` and `vocab`: the data commands."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from captioner.cli.common import (
    DataArg,
    ImagesOpt,
    LangOpt,
    TokenizerOpt,
    _fail,
    app,
)


@app.command()
def synth(out: Annotated[Path, typer.Option(help="Folder to write the data set to")] = Path("data/synth"),
          train: Annotated[int, typer.Option(help="Training images")] = 2000,
          val: Annotated[int, typer.Option(help="Validation images")] = 250,
          test: Annotated[int, typer.Option(help="Test images")] = 250,
          size: Annotated[int, typer.Option(help="Image side in pixels")] = 128,
          seed: Annotated[int, typer.Option(help="Random seed (same seed, same files)")] = 0) -> None:
    """Write the synthetic captioned-scenes data set (COCO format, 5 captions per image)."""
    from captioner.data.synth import generate

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

