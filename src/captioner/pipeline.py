"""End-to-end jobs built from the stages: evaluate a model on a split, and the offline demo (the main job)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from captioner.data.datasets import ImageRecord, find_annotation, open_split
from captioner.evaluate import JavaMissingError, format_table, score_captions, write_results
from captioner.io import write_json
from captioner.models.captioner import load
from captioner.predict import caption_embeddings, image_embeddings


def evaluate_split(model_dir: str | Path, data: str | Path, split: str = "test", images: str | Path | None = None,
                   beam: int = 1, out: str | Path | None = None, java: bool = True, spice: bool = False,
                   cache_dir: str | Path | None = None) -> dict[str, float]:
    """Decode a split, write results_<split>.json and metrics_<split>.json, print the table (0-100)."""
    model = load(model_dir)
    records, report = open_split(data, split, images)
    print(report.summary())
    if not records:
        raise ValueError(f"{data}: no usable images in split {split!r}")
    embeddings, ok = image_embeddings(model, records, cache_dir)
    records = [r for r, good in zip(records, ok, strict=True) if good]
    captions = caption_embeddings(model, embeddings[torch.from_numpy(ok)], beam)
    results = {r.image_id: c for r, c in zip(records, captions, strict=True)}
    metrics = score_captions(results, {r.image_id: list(r.captions) for r in records}, java, spice)
    out = Path(out or model_dir)
    write_results(out / f"results_{split}.json", results)
    write_json(out / f"metrics_{split}.json", metrics)
    print(format_table({f"{Path(model_dir).name} ({split}, beam {beam})": metrics}))
    print(f"results: {out / f'results_{split}.json'}\nmetrics: {out / f'metrics_{split}.json'}")
    return metrics


def naming_accuracy(captions: list[str], records: list[ImageRecord], objects: dict[int, list[dict]]) -> float:
    """Share of images whose caption names every object's colour and shape (synthetic scenes only)."""
    from captioner.synth import names_all_objects

    return float(np.mean([names_all_objects(c, objects[r.image_id]) for c, r in zip(captions, records, strict=True)]))


def _score(results: dict[int, str], refs: dict[int, list[str]]) -> dict[str, float]:
    try:
        return score_captions(results, refs)
    except JavaMissingError as e:
        print(f"{e}\nfalling back to the Python tokenizer: BLEU/ROUGE-L/CIDEr only, not comparable with papers")
        return score_captions(results, refs, java=False)


def run_demo(out: str | Path = "runs/demo", train_images: int = 2000, epochs: int = 40, image_size: int = 128,
             progress: bool = True) -> dict[str, dict[str, float]]:
    """Synthetic scenes -> feature cache -> train -> caption + score the test split, model vs blind baseline."""
    from captioner.plots import caption_grid
    from captioner.synth import generate
    from captioner.train import TrainConfig, train

    start = time.perf_counter()
    out = Path(out)
    data, run, cache = out / "data", out / "run", out / "cache"
    if not (data / "annotations" / "captions_test.json").is_file():
        generate(data, n_train=train_images, progress=progress)
    print("encoder: frozen ResNet-50 with random weights (--encoder-weights none) and output stride 8, so the demo "
          "runs offline; with ImageNet weights in $TORCH_HOME/hub/checkpoints use `captioner train "
          "--encoder-weights imagenet`")
    cfg = TrainConfig(data=str(data), out=str(run), epochs=epochs, threshold=1, cache_dir=str(cache),
                      progress=progress, resume=(run / "checkpoints" / "last.ckpt").is_file())
    train(cfg, dict(backbone="resnet50", encoder_weights="none", image_size=image_size, hidden_size=256, dropout=0.3,
                    output_stride=8))
    model = load(run)
    records, _ = open_split(data, "test")
    objects = {im["id"]: im["objects"]
               for im in json.loads(find_annotation(data, "test").read_text())["images"]}
    embeddings, _ = image_embeddings(model, records, cache, progress=progress)
    refs = {r.image_id: list(r.captions) for r in records}
    columns, accuracy, captions = {}, {}, {}
    for name, emb in (("model", embeddings), ("blind (zero image)", torch.zeros_like(embeddings))):
        for beam in (1, 3):
            label = f"{name}, beam {beam}"
            captions[label] = caption_embeddings(model, emb, beam, progress=False)
            columns[label] = _score(dict(zip(refs, captions[label], strict=True)), refs)
            accuracy[label] = naming_accuracy(captions[label], records, objects)
    write_results(run / "results_test.json", dict(zip(refs, captions["model, beam 1"], strict=True)))
    write_json(run / "metrics_test.json", columns["model, beam 1"])
    write_json(run / "demo_summary.json", {"metrics": columns, "names_every_object": accuracy})
    shown = list(zip(records[:12], captions["model, beam 1"], strict=False))
    grid = caption_grid([r.path for r, _ in shown], [(f"model: {c}", f"ref: {r.captions[0]}") for r, c in shown],
                        run / "grid_test.png", title="test split: greedy captions vs a reference")
    print(format_table(columns))
    print("share of test images whose caption names every object's colour and shape:")
    for label, value in accuracy.items():
        print(f"  {label:28s} {100 * value:5.1f}%")
    print(f"\ndone in {time.perf_counter() - start:.0f} s. Outputs:\n  data set     {data}\n  model        {run} "
          f"(model.safetensors, config.json, vocab.json)\n  metrics      {run / 'metrics_test.json'}, "
          f"{run / 'demo_summary.json'}\n  captions     {run / 'results_test.json'}\n  picture      {grid}\n"
          f"  curves       {run / 'metrics.csv'}, {run / 'loss.png'}\n  try it       captioner serve --model {run}")
    return {"metrics": columns, "accuracy": accuracy}

