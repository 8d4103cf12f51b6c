"""The main job (``captioner demo``), one pipeline for every preset (recipe.PRESETS): the data (given, or the
synthetic scenes generated) -> one feature cache -> the preset's decoder families -> self-critical training of the
better one -> a table of metrics and diagnostics on the scored split, and pictures."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from captioner import recipe
from captioner.data.datasets import find_annotation, open_split
from captioner.data.records import ImageRecord
from captioner.evaluation.diagnostics import diagnose, format_diagnostics
from captioner.evaluation.metrics import format_table, metric_note, score_columns, write_results
from captioner.inference import caption_features, load, record_features
from captioner.io import read_csv, write_json
from captioner.search import Search


def best_val_row(run: Path) -> dict[str, str]:
    """The row of a run's metrics.csv with the best val CIDEr (the epoch its model was exported from)."""
    return max((r for r in read_csv(run / "metrics.csv") if r.get("val_cider")), key=lambda r: float(r["val_cider"]))


def best_val_cider(run: Path) -> float:
    """The best val CIDEr a run's metrics.csv records."""
    return float(best_val_row(run)["val_cider"])


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


def run_demo(preset: str | recipe.Preset = "synthetic", data: str | Path | None = None,
             images: str | Path | None = None, out: str | Path | None = None, cache_dir: str | Path | None = None,
             progress: bool = True, lang: str | None = None, tokenizer: str | None = None,
             precision: str = "auto") -> dict:
    """Train ``preset`` (a name in recipe.PRESETS, or one) on ``data`` (None: the preset's synthetic scenes, made in
    OUT/data) and score the test split (the val split when there is none: training then validates on a held-out
    share of the training images, so the scored split stays unseen); ``lang`` and ``tokenizer``: the captions'
    language (None: guessed) and its tokenizer; ``precision``: precision.py."""
    from captioner.training.run import TrainConfig, train

    p = recipe.PRESETS[preset] if isinstance(preset, str) else preset
    start, phases = time.perf_counter(), {}
    out = Path(out or p.out)
    if data is None:
        data = synthetic_data(p, out / "data", progress)
    cache = str(cache_dir or out / "cache")
    split = scored_split(data, images)
    val_split = "val" if split == "test" else "none"  # "none": hold out --val-fraction of the training images
    print(f"scoring the {split} split of {data}" + ("" if split == "test" else
          " (no test split: training validates on a held-out share of the training images)"), flush=True)
    common = dict(data=str(data), images=str(images) if images else None, cache_dir=cache, progress=progress,
                  val_split=val_split, precision=precision)
    runs = {}
    for family in p.families:
        run = out / family
        settings = recipe.xe(family, p)
        cfg = TrainConfig(out=str(run), resume=(run / "checkpoints" / "last.ckpt").is_file(), **settings["train"],
                          lang=lang, tokenizer=tokenizer, **common)
        print(f"\n== training the {family} decoder ({cfg.epochs} epochs) ==", flush=True)
        t = time.perf_counter()
        train(cfg, settings["model"])
        phases[family] = time.perf_counter() - t
        runs[family] = run
    scst = recipe.scst(p)
    if scst["epochs"]:
        base = max(runs, key=lambda d: best_val_cider(runs[d]))
        run = out / f"{base}-scst"
        print(f"\n== self-critical training of the {base} model on CIDEr-D ({scst['epochs']} epochs) ==", flush=True)
        t = time.perf_counter()
        train(TrainConfig(out=str(run), init=str(runs[base]), scst=True, **scst,
                          resume=(run / "checkpoints" / "last.ckpt").is_file(), **common))
        phases["scst"] = time.perf_counter() - t
        runs[f"{base} + SCST"] = run
    served = served_run(runs)

    t = time.perf_counter()
    records, report = open_split(data, split, images)
    print(report.summary())
    models = {d: load(run, precision=precision) for d, run in runs.items()}
    first = models[p.families[0]]
    features, ok = record_features(first, records, cache, progress=progress)
    rows = np.flatnonzero(ok)
    records = [records[i] for i in rows]
    refs = {r.image_id: list(r.captions) for r in records}
    texts = {}
    for name, model in models.items():
        for label, search in p.searches:
            caps = caption_features(model, features, rows, search, progress=False)
            texts[f"{name}, {label}"] = [c.text for c in caps]
    blind = np.zeros((1, *features.shape[1:]), dtype=np.float32)
    texts["blind (same input for every image)"] = [c.text for c in caption_features(
        first, blind, np.zeros(len(records), dtype=int), recipe.GREEDY, progress=False)]
    words = first.vocab.tokenizer
    columns = score_columns({label: dict(zip(refs, caps, strict=True)) for label, caps in texts.items()}, refs, print,
                            words)
    diagnostics = {label: diagnose(caps, refs.values(), words) for label, caps in texts.items()}
    shares = scene_shares(data, split, records, texts) if p.train_images else None
    phases["scoring"] = time.perf_counter() - t

    best = out / "model"
    models[served].save(best)
    shown = f"{served}, {p.shown}"
    write_results(best / f"results_{split}.json", dict(zip(refs, texts[shown], strict=True)))
    write_json(best / f"metrics_{split}.json", columns[shown] | diagnostics[shown])
    pictures = draw(models, served, records, texts[shown], dict(p.searches)[p.shown], out, split, shown)
    phases["total"] = time.perf_counter() - start
    summary = {"split": split, "language": words.describe(), "metrics": columns, "diagnostics": diagnostics,
               "served": served, "phases_s": phases} | ({"shares": shares} if shares else {})
    write_json(out / "demo_summary.json", summary)
    print(f"\n{split} split of {data} ({len(records)} images)\n" + (demo_table(columns, shares) if shares else
                                                                   format_table(columns)))
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


def synthetic_data(p: recipe.Preset, folder: Path, progress: bool) -> Path:
    """The preset's synthetic scenes in ``folder``, generated unless there from an earlier run."""
    from captioner.data.synth import generate

    if not p.train_images:
        raise ValueError("this preset trains on given data: pass --data")
    if not (folder / "annotations" / "captions_test.json").is_file():
        generate(folder, n_train=p.train_images, progress=progress)
    return folder


def draw(models: dict, served: str, records: list[ImageRecord], captions: list[str], search: Search, out: Path,
         split: str, shown: str) -> list[Path]:
    """The served captions over the first photos beside a reference, and an attending model's word maps (the served
    one's when it attends, else the last attention run's)."""
    from captioner.data.images import load_rgb
    from captioner.plots import attention_maps, caption_grid

    photos = records[:8]
    pictures = [caption_grid([r.path for r in photos], [(f"model: {c}", f"ref: {r.captions[0]}")
                                                        for r, c in zip(photos, captions, strict=False)],
                             out / f"grid_{split}.png", title=f"{split} split: {shown} captions vs a reference")]
    attending = [d for d in models if d.startswith("attention")]
    if attending:
        name = served if served in attending else attending[-1]
        sample = [load_rgb(r.path) for r in records[:6]]
        maps = models[name].caption(sample, search)
        pictures.append(attention_maps(sample, [c[0] for c in maps], out / f"attention_{split}.png"))
    return pictures


def scene_shares(data: str | Path, split: str, records: list[ImageRecord],
                 texts: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Per caption set, the shares (0-100) of synthetic scenes whose caption names every object's colour and shape,
    and of lone objects whose position it names right."""
    from captioner.data.synth import names_all_objects, position_right

    images = {im["id"]: im for im in json.loads(find_annotation(data, split).read_text())["images"]}
    shares = {}
    for label, caps in texts.items():
        scenes = [images[r.image_id] for r in records]
        named = [names_all_objects(c, s["objects"]) for c, s in zip(caps, scenes, strict=True)]
        placed = [position_right(c, s["objects"], s["width"]) for c, s in zip(caps, scenes, strict=True)]
        placed = [q for q in placed if q is not None]
        shares[label] = {"names_every_object": 100 * float(np.mean(named)),
                         "position_right": 100 * float(np.mean(placed)) if placed else float("nan"),
                         "names_a_position": 100 * len(placed) / len(caps)}
    return shares


def demo_table(columns: dict[str, dict[str, float]], shares: dict[str, dict[str, float]]) -> str:
    """The synthetic demo's markdown table: one row per model and search, metrics and naming shares (0-100)."""
    head = ("| test split | BLEU-4 | METEOR | CIDEr | names every object's colour and shape | "
            "names a lone object's position right |\n|---|---:|---:|---:|---:|---:|")
    lines = [head]
    for label, m in columns.items():
        s = shares[label]
        cells = [f"{m[k]:.1f}" if k in m else "-" for k in ("Bleu_4", "METEOR", "CIDEr")]
        placed = "-" if np.isnan(s["position_right"]) else f"{s['position_right']:.1f}%"
        lines.append(f"| {label} | {' | '.join(cells)} | {s['names_every_object']:.1f}% | "
                     f"{placed} (of {s['names_a_position']:.0f}% naming one) |")
    return "\n".join(lines)
