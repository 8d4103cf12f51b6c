"""The model card: a README.md in Hugging Face's layout (YAML front matter, then the encoder and its weights, the
data and its split, the training settings, the metrics with the command that measured them, the caption language and
the data's licence), written beside the model so that a folder can be shared as it is. Reads only the folder's
files (config.json, vocab.json, train_config.json, metrics.csv, metrics_<split>.json)."""
from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path
from typing import Any

from captioner.io import atomic_write

CARD = "README.md"
COMMAND = re.compile(r"^<!-- captioner:measured (\w+): (.*) -->$", re.M)  # how a split's metrics were measured
METRICS = (("Bleu_4", "BLEU-4"), ("METEOR", "METEOR"), ("ROUGE_L", "ROUGE-L"), ("CIDEr", "CIDEr"),
           ("SPICE", "SPICE"), ("distinct", "distinct %"))
# what is known of the usual caption data's terms; anything else: the user's to state
LICENCES = (("flickr8k", "Flickr8k: images from Flickr under their owners' terms, distributed by the University of "
                         "Illinois for research use only; captions under the same research-only terms "
                         "(Hodosh et al., 2013). The model is a derivative for research use."),
            ("coco", "COCO: annotations CC BY 4.0; images from Flickr under their owners' licences (COCO terms of "
                     "use)."),
            ("synthetic", "captioner's synthetic shapes: generated, no third-party rights."))
TRAIN_KEYS = ("epochs", "batch_size", "lr", "min_lr", "scheduler", "ema", "threshold", "attention_penalty",
              "label_smoothing", "scst", "init", "precision", "seed")
MODEL_KEYS = ("decoder", "embed_size", "hidden_size", "attention_size", "context_size", "dropout", "max_len")


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def licence_note(data: str) -> str:
    """The licence note of training data described by ``data`` (its path or description)."""
    lower = data.lower()
    return next((note for key, note in LICENCES if key in lower),
                f"{data}: state the data's licence here before sharing the model; the weights derive from it.")


def dataset_name(data: str) -> str:
    """A short name of the training data: the known data set it is, else its file or folder name."""
    lower = data.lower()
    return next((key for key, _ in LICENCES if key in lower), Path(data).stem or data)


def _best_val(folder: Path) -> dict[str, str] | None:
    """The metrics.csv row of the best val CIDEr (the exported weights), if any epoch was evaluated."""
    if not (folder / "metrics.csv").is_file():
        return None
    with open(folder / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_cider")]
    return max(rows, key=lambda r: float(r["val_cider"])) if rows else None


def train_command(model: dict[str, Any], train: dict[str, Any]) -> str:
    """The ``captioner train`` command of the run's main settings."""
    args = ["captioner", "train", "--data", str(train.get("data", "DATA"))]
    if train.get("images"):
        args += ["--images", str(train["images"])]
    for key in ("backbone", "encoder_weights", "image_size", "grid", "decoder"):
        args += [f"--{key.replace('_', '-')}", str(model[key])]
    for key in ("epochs", "batch_size", "lr", "val_images"):
        if key in train:
            args += [f"--{key.replace('_', '-')}", str(train[key])]
    return shlex.join(args + (["--scst", "--init", str(train["init"])] if train.get("scst") else []))


def card(folder: str | Path, measured: dict[str, str] | None = None) -> str:
    """The README.md text of the model in ``folder``; ``measured``: split -> the command that wrote its metrics
    (kept from the folder's earlier card otherwise)."""
    folder = Path(folder)
    model, train, vocab = _read(folder / "config.json"), _read(folder / "train_config.json"), _read(
        folder / "vocab.json")
    old = (folder / CARD).read_text() if (folder / CARD).is_file() else ""
    commands = dict(COMMAND.findall(old)) | (measured or {})
    language = vocab.get("language", "en")
    data = model.get("trained_on") or train.get("data", "unknown")
    backbone, weights = model.get("backbone", "?"), model.get("encoder_weights", "?")
    where = (f"the Hugging Face hub: timm's pretrained weights of `{backbone[5:]}`" if backbone.startswith("timm:")
             and weights in ("hub", "imagenet") else "the file named" if weights not in ("imagenet", "none")
             else "captioner's backbone registry")
    lines = ["---", f"language:\n- {language}", "license: other",
             f"license_name: training-data-terms\nlicense_note: {json.dumps(licence_note(str(data)))}",
             "library_name: captioner", "pipeline_tag: image-to-text",
             f"tags:\n- image-captioning\n- {model.get('decoder', 'captioner')}\n- {backbone.replace(':', '-')}",
             f"datasets:\n- {json.dumps(dataset_name(str(data)))}", "---", "",
             f"# captioner: {model.get('decoder', '?')} decoder on {backbone}", "",
             "A frozen image encoder and an LSTM caption decoder trained with captioner; load this "
             "folder with `captioner.load(folder)` or `captioner caption --model FOLDER IMAGE...`.", "",
             "## Encoder", "",
             f"- backbone: `{backbone}`, weights: `{weights}` (from {where}); frozen"
             f"{' (last stage fine-tuned)' if model.get('fine_tune') else ''}",
             f"- input {model.get('image_size')} px, features pooled to a {model.get('grid')} x {model.get('grid')} "
             f"grid (output stride {model.get('output_stride', 32)})", "",
             "## Data", "", f"- trained on: {data}" + (f" (images: {train['images']})" if train.get("images") else ""),
             f"- validation: {train.get('val_data') or 'split ' + repr(train.get('val_split', 'val'))}"
             + (f", {train['val_images']} images decoded for val CIDEr" if "val_images" in train else ""), "",
             "## Training", "", "| setting | value |", "|---|---|",
             *(f"| {k} | {model[k]} |" for k in MODEL_KEYS if k in model),
             *(f"| {k} | {train[k]} |" for k in TRAIN_KEYS if train.get(k) not in (None, "")), "",
             f"Command: `{train_command(model, train)}`", "", "## Metrics", ""]
    rows, notes = [], []
    for path in sorted(folder.glob("metrics_*.json")):
        split, values = path.stem.removeprefix("metrics_"), _read(path)
        rows.append(f"| {split} | " + " | ".join(_cell(values.get(k)) for k, _ in METRICS) + " |")
        notes.append(f"<!-- captioner:measured {split}: {commands.get(split, 'captioner evaluate')} -->\n"
                     f"- {split}: `{commands.get(split, f'captioner evaluate --model FOLDER --split {split}')}`")
    best = _best_val(folder)
    if best:
        rows.append(f"| val (epoch {int(best['epoch']) + 1}, greedy) | {_cell(best.get('val_bleu4'))} | - | - | "
                    f"{_cell(best.get('val_cider'))} | - | {_cell(best.get('val_distinct'))} |")
        notes.append("- val: measured while training (the exported epoch's row of metrics.csv), by the command above")
    lines += (["| split | " + " | ".join(n for _, n in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|", *rows, "",
               "Measured by:", "", *notes] if rows else ["Not evaluated yet: `captioner evaluate --model FOLDER "
                                                         "--data DATA --split test` adds the test metrics here."])
    lines += ["", "## Captions", "", f"Language: `{language}` (tokenizer {vocab.get('tokenizer', '?')}); "
              f"vocabulary of {len(vocab.get('itos', []))} words (frequency threshold {vocab.get('threshold', '?')}).",
              "", "## Licence", "", licence_note(str(data)),
              "The encoder's pretrained weights come with their own licence (see the encoder's model card).", ""]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    try:
        return f"{float(value):.1f}"
    except (TypeError, ValueError):
        return "-"


def write_card(folder: str | Path, measured: dict[str, str] | None = None, out: str | Path | None = None) -> Path:
    """Write the card of the model in ``folder`` to ``out`` (default: the folder itself) as README.md."""
    target = Path(out or folder) / CARD
    text = card(folder, measured)
    atomic_write(target, lambda p: Path(p).write_text(text))
    return target
