"""Each search and training control on a real dev split, against the same model without it:
``python -m benchmarks.controls_bench --data Flickr8k.token.txt --runs /work/runs/ctl [--cache-dir DIR]``.

RUNS holds ``base`` (the recipe model, trained with ``--val-split none`` so that the scored ``val`` split stays
unseen) and optionally ``ls01`` (+ ``--label-smoothing 0.1``) and ``ss`` (+ ``--scheduled-sampling``), all at the
same epochs and seed (so the same held-out images and vocabulary: the ensemble rows join base with each). Prints one
markdown table (BLEU-4, METEOR, CIDEr, distinct %, repeated 3-grams %, bad endings %, mean words) and writes it with
every figure to RUNS/controls.json. Not part of ``python -m benchmarks``: it needs trained models (~15 min of CPU
each on one thread), then ~10 min.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from captioner.data.datasets import open_split
from captioner.evaluation.diagnostics import diagnose
from captioner.evaluation.metrics import score_columns
from captioner.inference import caption_features, load, load_ensemble, record_features
from captioner.search import Search

RULES = dict(block_ngram=3, bad_endings=True)
BEAM3 = dict(beam=3, length_penalty=1.0)
# (label, search) run on the base model; "recipe" is recipe.SEARCH
SEARCHES = [
    ("greedy", Search()),
    ("greedy + block 3-grams", Search(block_ngram=3)),
    ("greedy + no bad endings", Search(bad_endings=True)),
    ("greedy + both", Search(**RULES)),
    ("beam 3", Search(**BEAM3)),
    ("beam 3 + block 3-grams", Search(**BEAM3, block_ngram=3)),
    ("beam 3 + no bad endings", Search(**BEAM3, bad_endings=True)),
    ("beam 3 + both (recipe)", Search(**BEAM3, **RULES)),
    ("diverse beam 3, 3 groups, diversity 0.5, + both", Search(**BEAM3, **RULES, groups=3, diversity=0.5)),
    ("sampling, T 1, 1 caption, + both", Search(**RULES, sample=True, seed=0)),
    ("sampling, T 0.5, top-p 0.9, likeliest of 5, + both", Search(**RULES, sample=True, temperature=0.5, top_p=0.9,
                                                                   n=5, seed=0)),
]
GREEDY_AND_RECIPE = [SEARCHES[0], SEARCHES[7]]
TRAINED = {"ls01": "label smoothing 0.1", "ss": "scheduled sampling 0.1:0:1:0.25"}
METRICS = [("Bleu_4", "BLEU-4"), ("METEOR", "METEOR"), ("CIDEr", "CIDEr"), ("distinct", "distinct %"),
           ("repeated_3grams", "repeated 3-grams %"), ("bad_endings", "bad endings %"), ("mean_len", "words")]


def run(data: Path, runs: Path, cache_dir: Path | None, only: list[str] | None = None,
        split: str = "val") -> dict[str, dict[str, float]]:
    """The rows of ``only`` (default: every run there): "base" (every search), a trained control's name (greedy and
    the recipe's search, alone and in an ensemble with base)."""
    records, _ = open_split(data, split)
    base = load(runs / "base")
    features, ok = record_features(base, records, cache_dir, progress=False)
    rows = np.flatnonzero(ok)
    records = [records[i] for i in rows]
    refs = {r.image_id: list(r.captions) for r in records}
    only = only or ["base", *(name for name in TRAINED if (runs / name).is_dir())]
    models = [("base", base, SEARCHES)] if "base" in only else []
    trained = [name for name in TRAINED if name in only]
    models += [(TRAINED[name], load(runs / name), GREEDY_AND_RECIPE) for name in trained]
    models += [(f"ensemble base + {TRAINED[name]}", load_ensemble([runs / "base", runs / name]), GREEDY_AND_RECIPE)
               for name in trained]
    texts, seconds = {}, {}
    for name, model, searches in models:
        for label, search in searches:
            start = time.perf_counter()
            caps = caption_features(model, features, rows, search, progress=False)
            seconds[f"{name}, {label}"] = time.perf_counter() - start
            texts[f"{name}, {label}"] = [c.text for c in caps]
            print(f"{name}, {label}: {seconds[f'{name}, {label}']:.0f} s", flush=True)
    columns = score_columns({k: dict(zip(refs, v, strict=True)) for k, v in texts.items()}, refs)
    return {k: columns[k] | diagnose(v, refs.values()) | {"decode_s": seconds[k]} for k, v in texts.items()}


def table(figures: dict[str, dict[str, float]]) -> str:
    head = "| dev (Flickr8k val, 1,000 photos) | " + " | ".join(n for _, n in METRICS) + " |"
    lines = [head, "|---|" + "---:|" * len(METRICS)]
    lines += [f"| {k} | " + " | ".join(f"{v[m]:.1f}" for m, _ in METRICS) + " |" for k, v in figures.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--only", action="append", choices=["base", *TRAINED],
                        help="these rows only, merged into RUNS/controls.json (repeatable)")
    args = parser.parse_args()
    saved = args.runs / "controls.json"
    figures = json.loads(saved.read_text())["figures"] if args.only and saved.is_file() else {}
    figures |= run(args.data, args.runs, args.cache_dir, args.only)
    text = table(figures)
    saved.write_text(json.dumps({"figures": figures, "table": text}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
