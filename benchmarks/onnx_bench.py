"""ONNX Runtime vs PyTorch: greedy captions of photo-sized images, end to end (preprocessing, encoder, search),
per decoder family at batch 1 and 16, the same exported model on both, timed in interleaved rounds.

Random weights with <end> held off (output bias -1e4) and max_len 11: every caption takes 11 decoder steps, a
10-word caption and its <end>. onnxruntime gets as many intra-op threads as torch.
"""
from __future__ import annotations

import tempfile
from functools import partial
from io import BytesIO
from pathlib import Path

import torch
from PIL import Image

from benchmarks.common import row, say, timed_together
from benchmarks.serve_bench import photo_jpeg

SECTION = "onnx"
FULL = dict(backbone="resnet50", size=224, vocab=10_000, batches=(1, 16), repeat=5)
QUICK = dict(backbone="resnet18", size=64, vocab=1_000, batches=(1, 4), repeat=2)
FAMILIES = ("show-tell", "attention")
STEPS = 11


def run(quick: bool) -> list[dict]:
    from captioner.data.vocab import END, SPECIALS, Vocabulary
    from captioner.export.onnx import export_onnx
    from captioner.export.runner import load_onnx
    from captioner.inference import Captioner
    from captioner.models.captioner import ModelConfig
    from captioner.search import Search

    s = QUICK if quick else FULL
    vocab = Vocabulary(list(SPECIALS) + [f"word{i}" for i in range(s["vocab"] - len(SPECIALS))])
    photo = Image.open(BytesIO(photo_jpeg())).convert("RGB")
    note = (f"{s['backbone']} at {s['size']} px, random weights, {s['vocab']}-word vocabulary, {STEPS} decoder steps, "
            f"640x480 photos, CPU, {torch.get_num_threads()} threads; median of {s['repeat']} interleaved rounds")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runtimes = {}
        for family in FAMILIES:
            say(f"onnx: exporting {family}")
            config = ModelConfig(vocab_size=len(vocab), decoder=family, backbone=s["backbone"],
                                 encoder_weights="none", image_size=s["size"])
            model = Captioner(config, vocab).eval()
            with torch.no_grad():
                model.decoder.out.bias[END] = -1e4
            model.save(Path(tmp) / family)
            runtimes[family, "PyTorch"] = model
            runtimes[family, "ONNX Runtime"] = load_onnx(export_onnx(Path(tmp) / family, Path(tmp) / f"{family}-onnx"),
                                                         threads=torch.get_num_threads())
        for b in s["batches"]:
            say(f"onnx: batch {b}")
            fns = {key: partial(m.caption, [photo] * b, Search(max_len=STEPS)) for key, m in runtimes.items()}
            times = timed_together(fns, "cpu", s["repeat"])
            for family in FAMILIES:
                torch_s, onnx_s = times[family, "PyTorch"], times[family, "ONNX Runtime"]
                rows += [row(SECTION, f"batch {b}: {family} greedy, PyTorch", 1000 * torch_s / b, "ms/image", note),
                         row(SECTION, f"batch {b}: {family} greedy, ONNX Runtime", 1000 * onnx_s / b, "ms/image"),
                         row(SECTION, f"batch {b}: {family} greedy, ONNX Runtime / PyTorch", onnx_s / torch_s, "x")]
    return rows
