"""float32 against bfloat16 autocast (``--precision``), side by side in one process: the frozen CNN alone on ready
tensors, the encoder pass over real photos (decode + transform + CNN, as the feature cache runs it) with the bf16
features' cosine to the fp32 ones, and Flickr8k-shaped training steps of both decoder families."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import optimizer_of, row, say, shared_file, timed_together

SECTION = "precision"
FULL = dict(backbone="efficientnet_lite2", size=260, batch=32, photos=200, repeat=5, steps=10)
QUICK = dict(backbone="efficientnet_lite0", size=128, batch=8, photos=16, repeat=2, steps=2)
# a Flickr8k training batch of the recipe: 7x7 cells of 1280 (Lite2), ~14 tokens, 2,474 words, batch 32
STEP = dict(cells=49, dim=1280, tokens=14, vocab=2474, batch=32)
PHOTOS = "data/flickr8k/Flickr_8k.devImages.txt"


def run(quick: bool) -> list[dict]:
    from captioner.precision import autocast, cpu_flags, resolve

    s = QUICK if quick else FULL
    native = resolve("auto", "cpu") == "bf16"
    flags = " + ".join(f for f in ("amx_bf16", "avx512_bf16") if f in cpu_flags()) or "no bf16 units: emulated"
    setup = f"CPU {flags}, {torch.get_num_threads()} threads"
    rows = cnn_rows(s, autocast, setup) + encode_rows(s, setup)
    value = {r["figure"]: r["value"] for r in rows}
    encoded = value.get("encoder pass over photos, bf16 autocast")
    before = value["CNN alone, BatchNorms not folded, fp32"]
    if encoded is not None:
        rows.append(row(SECTION, "encoder pass bf16 / the fp32 CNN alone as it ran before folding", encoded / before,
                        "x", "at least 1.5 meets the speed issue's encoding target"))
    rows += step_rows(s, autocast, setup)
    if not native:
        rows.append(row(SECTION, "note", None, "", f"{setup}: --precision auto keeps fp32 on this CPU"))
    return rows


def cnn_rows(s: dict, autocast, setup: str) -> list[dict]:
    """The CNN alone on ready tensors, as the encoder runs it (BatchNorms folded, models/fold.py) and as it ran
    before (the trunk's own layers): the ceiling of the encoder pass in each precision."""
    import torch.nn.functional as F

    from captioner.models.encoder import Encoder

    encoder = Encoder(s["backbone"], "none", grid=7).eval()
    x = torch.randn(s["batch"], 3, s["size"], s["size"]).contiguous(memory_format=torch.channels_last)

    def forward(precision: str, folded: bool):
        def go() -> None:
            with torch.inference_mode(), autocast(precision):
                encoder(x) if folded else F.adaptive_avg_pool2d(encoder.backbone(x), 7)
        return go
    say(f"precision: {s['backbone']} alone, fp32 vs bf16, BatchNorms folded or not")
    runs = {(p, folded): forward(p, folded) for p in ("fp32", "bf16") for folded in (True, False)}
    t = {k: s["batch"] / v for k, v in timed_together(runs, repeat=s["repeat"]).items()}  # images/s
    note = f"{s['backbone']} at {s['size']} px, batch {s['batch']}, ready tensors; {setup}"
    return [row(SECTION, "CNN alone, fp32", t["fp32", True], "img/s", note),
            row(SECTION, "CNN alone, bf16 autocast", t["bf16", True], "img/s", note),
            row(SECTION, "CNN alone, bf16 / fp32", t["bf16", True] / t["fp32", True], "x", "throughput ratio"),
            row(SECTION, "CNN alone, BatchNorms not folded, fp32", t["fp32", False], "img/s", note),
            row(SECTION, "CNN alone, BatchNorms not folded, bf16 autocast", t["bf16", False], "img/s", note),
            row(SECTION, "CNN alone, bf16 folded / fp32 not folded", t["bf16", True] / t["fp32", False], "x",
                "the encoder's throughput against the float32 CNN as it ran before folding")]


def encode_rows(s: dict, setup: str) -> list[dict]:
    """encode_images over real photos in each precision: images/s and the bf16 features' cosine to fp32's."""
    from captioner.features import encode_images

    names, why = shared_file(PHOTOS)
    if names is None:
        return [row(SECTION, "encoder pass over photos, bf16 vs fp32", None, "img/s", why)]
    folder = names.parent / "Flicker8k_Dataset"
    paths = [folder / n for n in names.read_text().split()[: s["photos"]]]
    out, times = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16", "fp32", "bf16"):  # twice each, interleaved; the second of each is timed
            say(f"precision: encoding {len(paths)} photos, {precision}")
            start = time.perf_counter()
            feats, ok = encode_images(paths, s["backbone"], "imagenet", 0, s["size"], 1, Path(tmp) / precision,
                                      s["batch"], log=lambda _: None, progress=False, grid=7, precision=precision)
            times[precision] = time.perf_counter() - start
            out[precision] = np.asarray(feats[ok, 0], dtype=np.float32).reshape(int(ok.sum()), -1)
            for f in Path(tmp, precision).glob("*"):  # encode again next round, not a cache hit
                f.unlink()
    a, b = out["fp32"], out["bf16"]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    note = f"{len(paths)} Flickr8k dev photos, {s['backbone']} at {s['size']} px, decode + transform + CNN; {setup}"
    return [row(SECTION, "encoder pass over photos, fp32", len(paths) / times["fp32"], "img/s", note),
            row(SECTION, "encoder pass over photos, bf16 autocast", len(paths) / times["bf16"], "img/s", note),
            row(SECTION, "encoder pass, bf16 / fp32", times["fp32"] / times["bf16"], "x", "throughput ratio"),
            row(SECTION, "bf16 vs fp32 features, mean cosine", float(cos.mean()), "", f"min {cos.min():.4f}; "
                f"per photo, the flattened 7x7 grid; {len(paths)} photos")]


def step_rows(s: dict, autocast, setup: str) -> list[dict]:
    """One cross-entropy training step (forward, backward, clipping, Adam) per family and precision."""
    from dataclasses import asdict

    from captioner import recipe
    from captioner.models.config import ModelConfig
    from captioner.training.config import TrainConfig
    from captioner.training.module import CaptionModule

    torch.manual_seed(0)
    b, t = STEP["batch"], STEP["tokens"]
    feats = torch.randn(b, STEP["cells"], STEP["dim"])
    captions = torch.randint(4, STEP["vocab"], (b, t))
    batch = (feats, captions, torch.full((b,), t))
    vocab = ["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(STEP["vocab"] - 4)]
    steps = {}
    for family in ("show-tell", "attention"):
        settings = recipe.xe(family)
        model = asdict(ModelConfig(**settings["model"] | dict(vocab_size=STEP["vocab"], encoder_weights="none")))
        train = asdict(TrainConfig(data="-", **{k: v for k, v in settings["train"].items()}))
        module = CaptionModule(model, vocab, train).train()
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = optimizer_of(module)
        for precision in ("fp32", "bf16"):
            def step(module=module, params=params, optimizer=optimizer, precision=precision) -> None:
                for _ in range(s["steps"]):
                    with autocast(precision):
                        loss = module._loss(batch)[1]
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 5.0)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            steps[family, precision] = step
    say("precision: training steps, both families, fp32 vs bf16")
    ms = {k: 1000 * v / s["steps"] for k, v in timed_together(steps, repeat=s["repeat"]).items()}
    note = (f"batch {b} x {t} tokens, {STEP['cells']} cells x {STEP['dim']}, {STEP['vocab']} words, the recipe's "
            f"model; {setup}")
    rows = [row(SECTION, f"training step, {f}, {p}", ms[f, p], "ms", note) for f, p in steps]
    for f in ("show-tell", "attention"):
        rows.append(row(SECTION, f"training step, {f}, bf16 / fp32 time", ms[f, "bf16"] / ms[f, "fp32"], "x",
                        "below 0.6 meets the speed issue's Show-Tell target"))
    for p in ("fp32", "bf16"):
        rows.append(row(SECTION, f"training step, attention / show-tell time, {p}",
                        ms["attention", p] / ms["show-tell", p], "x", "target <= 1.5"))
    return rows
