"""Cross-entropy training steps (forward, backward, clipping, Adam) of Show-Tell, the soft-attention decoder with
each score function and the other grid families, fp32 and bf16 autocast, interleaved in one process: their time
ratios to Show-Tell. The additive score runs both ways: models/grid.AdditiveScores (training's, in both precisions)
and autograd's plain ops (what it replaced)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict

import torch
from torch import nn

from benchmarks.common import optimizer_of, row, say, timed_together

SECTION = "attention"
# a Flickr8k training batch of the recipe: 7x7 cells of 1280 (Lite2), ~14 tokens, 2,474 words, batch 32
FULL = dict(cells=49, dim=1280, tokens=14, vocab=2474, batch=32, repeat=15, steps=2)
QUICK = dict(cells=4, dim=1280, tokens=6, vocab=50, batch=4, repeat=2, steps=1)
# (name, decoder family, attention score, the additive score by autograd's plain ops)
VARIANTS = (("show-tell", "show-tell", "additive", False),
            ("attention, additive score", "attention", "additive", False),
            ("attention, additive score, plain ops", "attention", "additive", True),
            ("attention, dot score", "attention", "dot", False),
            ("adaptive, additive score", "adaptive", "additive", False),
            ("topdown, additive score", "topdown", "additive", False))
PRECISIONS = ("fp32", "bf16")


def run(quick: bool) -> list[dict]:
    from captioner.precision import autocast, cpu_flags

    s = QUICK if quick else FULL
    flags = " + ".join(f for f in ("amx_bf16", "avx512_bf16") if f in cpu_flags()) or "no bf16 units: emulated"
    torch.manual_seed(0)
    b, t = s["batch"], s["tokens"]
    batch = (torch.randn(b, s["cells"], s["dim"]), torch.randint(4, s["vocab"], (b, t)), torch.full((b,), t))
    steps = {}
    for name, family, score, plain in VARIANTS:
        module, optimizer = _trained(family, score, s)
        for precision in PRECISIONS:
            steps[name, precision] = _stepper(module, optimizer, batch, precision, s["steps"], autocast, plain)
    say(f"attention: training steps of {len(VARIANTS)} decoders x {len(PRECISIONS)} precisions, interleaved")
    ms = {k: 1000 * v / s["steps"] for k, v in timed_together(steps, repeat=s["repeat"]).items()}
    note = (f"batch {b} x {t} tokens, {s['cells']} cells x {s['dim']}, {s['vocab']} words, the recipe's model; "
            f"median of {s['repeat']} interleaved rounds; CPU {flags}, {torch.get_num_threads()} threads")
    rows = [row(SECTION, f"training step, {name}, {p}", ms[name, p], "ms", note) for name, p in steps]
    for name, family, _, _ in VARIANTS:
        if family != "show-tell":
            rows += [row(SECTION, f"{name} / show-tell time, {p}", ms[name, p] / ms["show-tell", p], "x",
                         "target <= 1.5") for p in PRECISIONS]
    return rows


def _trained(family: str, score: str, s: dict) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The recipe's CaptionModule for ``family`` (with ``score``) at the benchmark's sizes, and its Adam."""
    from captioner import recipe
    from captioner.models.config import ModelConfig
    from captioner.training.config import TrainConfig
    from captioner.training.module import CaptionModule

    settings = recipe.xe(family)
    model = asdict(ModelConfig(**settings["model"] | dict(vocab_size=s["vocab"], encoder_weights="none",
                                                          grid=int(s["cells"] ** 0.5), attention_score=score)))
    train = asdict(TrainConfig(data="-", **settings["train"]))
    vocab = ["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(s["vocab"] - 4)]
    module = CaptionModule(model, vocab, train).train()
    return module, optimizer_of(module)


def _stepper(module, optimizer: torch.optim.Optimizer, batch: tuple, precision: str, steps: int, autocast,
             plain: bool = False):
    params = [p for g in optimizer.param_groups for p in g["params"]]

    def go() -> None:
        for _ in range(steps):
            with autocast(precision), _plain_scores(plain):
                loss = module._loss(batch)[1]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, module.cfg.clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return go


@contextmanager
def _plain_scores(plain: bool):
    """With ``plain``, the additive score by autograd's ops (w . tanh(key + query) as nn.Linear over torch.tanh)."""
    from captioner.models import grid

    fused = grid.additive_scores
    if plain:
        grid.additive_scores = _plain
    try:
        yield
    finally:
        grid.additive_scores = fused


def _plain(keys: torch.Tensor, query: torch.Tensor, score: nn.Linear) -> torch.Tensor:
    return score(torch.tanh(keys.unsqueeze(1) + query.unsqueeze(2))).squeeze(-1)
