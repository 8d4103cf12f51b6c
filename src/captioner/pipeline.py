"""Evaluate a model on a split, end to end: decode, score, write the results and the model card's table (the
main job, the demo, is demo.py)."""
from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captioner.data.datasets import open_split
from captioner.evaluation.diagnostics import diagnose
from captioner.evaluation.metrics import format_table, metric_note, score_captions, write_results
from captioner.inference import caption_features, load_ensemble, record_features
from captioner.io import write_json
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

