"""The main job on a real photo set (``captioner demo --data``): one feature cache -> the recipe's model families ->
self-critical training of the better one -> a table of metrics and diagnostics on the scored split, and pictures."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from captioner import recipe
from captioner.data.datasets import open_split
from captioner.diagnostics import diagnose, format_diagnostics
from captioner.evaluate import format_table, metric_note, score_columns, write_results
from captioner.inference import caption_features, load, record_features
from captioner.io import write_json
from captioner.pipeline import best_val_cider, best_val_row


def scored_split(data: str | Path, images: str | Path | None) -> str:
    """'test' when the data has a test split, else 'val' (Flickr8k as shipped here has no test list)."""
    try:
        records, _ = open_split(data, "test", images, check_images=False)
    except FileNotFoundError:
        return "val"
    return "test" if records else "val"


def served_run(runs: dict[str, Path]) -> str:
    """The run with the best val CIDEr among those whose greedy val captions (at that epoch) are at least
    ``recipe.MIN_DISTINCT`` of the most varied run's distinct share. Said in the log when it changes the choice."""
    rows = {d: best_val_row(run) for d, run in runs.items()}  # each metrics.csv read once
    distinct = {d: float(v) for d, row in rows.items() if (v := row.get("val_distinct"))}
    floor = recipe.MIN_DISTINCT * max(distinct.values(), default=0.0)  # runs logged before it are not held back
    cider = {d: float(row["val_cider"]) for d, row in rows.items()}
    best = max((d for d in runs if distinct.get(d, floor) >= floor), key=cider.__getitem__)
    top = max(runs, key=cider.__getitem__)
    if best != top:
        print(f"serving {best}, not {top}: {top}'s val captions are {distinct[top]:.0f}% distinct, below "
              f"{recipe.MIN_DISTINCT:.0%} of the most varied run's {max(distinct.values()):.0f}%", flush=True)
    return best


def run_photo_demo(data: str | Path, images: str | Path | None = None, out: str | Path = "runs/photos",
                   cache_dir: str | Path | None = None, families: tuple[str, ...] = recipe.DEMO_FAMILIES,
                   scst_epochs: int = recipe.SCST["epochs"], progress: bool = True, lang: str | None = None,
                   tokenizer: str | None = None, precision: str = "auto") -> dict:
    """Train the recipe on ``data`` and score the test split (the val split when there is none: training then
    validates on a held-out share of the training images, so the scored split stays unseen); ``lang`` and
    ``tokenizer``: the captions' language (None: guessed) and its tokenizer; ``precision``: precision.py."""
    from captioner.plots import attention_maps, caption_grid
    from captioner.train import TrainConfig, train

    start, phases = time.perf_counter(), {}
    out = Path(out)
    cache = str(cache_dir or out / "cache")
    split = scored_split(data, images)
    val_split = "val" if split == "test" else "none"  # "none": hold out --val-fraction of the training images
    print(f"scoring the {split} split of {data}" + ("" if split == "test" else
          " (no test split: training validates on a held-out share of the training images)"), flush=True)
    common = dict(data=str(data), images=str(images) if images else None, cache_dir=cache, progress=progress,
                  val_split=val_split, precision=precision)
    runs = {}
    for family in families:
        run = out / family
        print(f"\n== training the {family} decoder ==", flush=True)
        t = time.perf_counter()
        settings = recipe.xe(family)
        train(TrainConfig(out=str(run), resume=(run / "checkpoints" / "last.ckpt").is_file(), **settings["train"],
                          lang=lang, tokenizer=tokenizer, **common), settings["model"])
        phases[family] = time.perf_counter() - t
        runs[family] = run
    served = max(runs, key=lambda d: best_val_cider(runs[d]))
    if scst_epochs:
        run = out / f"{served}-scst"
        print(f"\n== self-critical training of the {served} model on CIDEr-D ({scst_epochs} epochs) ==", flush=True)
        t = time.perf_counter()
        train(TrainConfig(out=str(run), init=str(runs[served]), scst=True, **recipe.scst(scst_epochs),
                          resume=(run / "checkpoints" / "last.ckpt").is_file(), **common))
        phases["scst"] = time.perf_counter() - t
        runs[f"{served} + SCST"] = run
        served = served_run(runs)

    t = time.perf_counter()
    records, report = open_split(data, split, images)
    print(report.summary())
    models = {d: load(run, precision=precision) for d, run in runs.items()}
    features, ok = record_features(models[families[0]], records, cache, progress=progress)
    rows = np.flatnonzero(ok)
    records = [records[i] for i in rows]
    refs = {r.image_id: list(r.captions) for r in records}
    texts = {}
    for name, model in models.items():
        for label, search in (("greedy", recipe.GREEDY), ("beam 3", recipe.SEARCH)):
            caps = caption_features(model, features, rows, search, progress=False)
            texts[f"{name}, {label}"] = [c.text for c in caps]
    blind = np.zeros((1, *features.shape[1:]), dtype=np.float32)
    texts["blind (same input for every image)"] = [c.text for c in caption_features(
        models[families[0]], blind, np.zeros(len(records), dtype=int), recipe.GREEDY, progress=False)]
    words = models[families[0]].vocab.tokenizer
    columns = score_columns({label: dict(zip(refs, caps, strict=True)) for label, caps in texts.items()}, refs, print,
                            words)
    diagnostics = {label: diagnose(caps, refs.values(), words) for label, caps in texts.items()}
    phases["scoring"] = time.perf_counter() - t

    best = out / "model"
    models[served].save(best)
    shown = f"{served}, beam 3"
    write_results(best / f"results_{split}.json", dict(zip(refs, texts[shown], strict=True)))
    write_json(best / f"metrics_{split}.json", columns[shown] | diagnostics[shown])
    photos = records[:8]
    grid_png = caption_grid([r.path for r in photos], [(f"model: {c}", f"ref: {r.captions[0]}")
                                                      for r, c in zip(photos, texts[shown], strict=False)],
                            out / f"grid_{split}.png", title=f"{split} split: {shown} captions vs a reference")
    pictures = [grid_png]
    attention = next((d for d in models if d.startswith("attention")), None)
    if attention:
        from captioner.data.images import load_rgb

        sample = [load_rgb(r.path) for r in records[:6]]
        maps = models[attention].caption(sample, recipe.SEARCH)
        pictures.append(attention_maps(sample, [c[0] for c in maps], out / f"attention_{split}.png"))
    phases["total"] = time.perf_counter() - start
    summary = {"split": split, "language": words.describe(), "metrics": columns, "diagnostics": diagnostics,
               "served": served, "phases_s": phases}
    write_json(out / "demo_summary.json", summary)
    print(f"\n{split} split of {data} ({len(records)} images)\n" + format_table(columns))
    if note := metric_note(words):
        print(f"note: {note}")
    print("\n" + format_diagnostics(diagnostics))
    scores = " / ".join(f"{d} {best_val_cider(r):.1f}" for d, r in runs.items())
    print(f"\nserved model: {served} (best val CIDEr: {scores})")
    print("phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()))
    print(f"outputs:\n  runs         {', '.join(str(r) for r in runs.values())}\n  model        {best}\n  summary      "
          f"{out / 'demo_summary.json'}\n  pictures     {', '.join(map(str, pictures))}\n  try it       "
          f"captioner serve --model {best}")
    return summary
