"""Run the benchmarks and print one markdown table: ``python -m benchmarks [--quick] [--only NAME ...]``.

Sections: train (feature cache vs encoder per batch), latency (greedy/beam vs encoder), extract (DataLoader
workers), vocab (162k real captions; needs $CAPTIONER_SHARED), rewards (CIDEr-D reward vs pycocoevalcap;
needs $CAPTIONER_SHARED), serve (micro-batching on/off, benchmarks/serve_bench), scale (COCO-2014 size simulated:
cache sizes, training RSS, epoch times, loader vs step rate, FLOPs; needs $CAPTIONER_SHARED and ~30 GB of temp
disk, all deleted after), gpu (COCO-shaped training steps with the cache in GPU memory; skipped without CUDA),
onnx (ONNX Runtime vs PyTorch greedy captions), serve_load (good, malformed-EXIF, thin and huge uploads at once
against `captioner serve`: every answer as it must be, no 500, server peak RSS under 2 GB; benchmarks/serve_load_bench),
precision (fp32 vs bf16 autocast side by side: the CNN alone, the encoder pass over real photos with the features'
cosine, training steps of both families), attention (training steps of Show-Tell and the attention decoder with
each score, fp32 and bf16: the attention / Show-Tell ratios), photos (the real-photo main job on Flickr8k from an
empty cache: phases and total vs 20 minutes; needs $CAPTIONER_SHARED, skipped with --quick).
Each comparison is measured side by side in the same run. Progress goes to stderr, the table to stdout.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import traceback
from pathlib import Path

import torch

from benchmarks.common import device, row, say

SECTIONS = ("train", "latency", "extract", "vocab", "rewards", "serve", "scale", "gpu", "onnx", "serve_load",
            "precision", "attention", "photos")
SERVE_CLIENTS = 8


def serve_rows(quick: bool) -> list[dict]:
    """Requests/s at 8 clients with micro-batching on and off, from benchmarks/serve_bench.run."""
    try:
        from benchmarks import serve_bench
    except ImportError as e:
        return [row("serve", "requests/s, micro-batching on vs off", None, "req/s", f"skipped: {e}")]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, setup = None, "untrained resnet50 at 128 px"
        if quick:
            from captioner.data.vocab import Vocabulary
            from captioner.inference import Captioner
            from captioner.models.captioner import ModelConfig

            v = Vocabulary.build(serve_bench.WORDS, threshold=1)
            model_dir = Captioner(ModelConfig(vocab_size=len(v), backbone="resnet18", encoder_weights="none",
                                              image_size=64), v).save(Path(tmp))
            setup = "untrained resnet18 at 64 px"
        results = serve_bench.run(model_dir, *((24, 2.0) if quick else (200, 15.0)))
    by = {(r["batching"], r["clients"]): r for r in results}
    on, off = by[True, SERVE_CLIENTS], by[False, SERVE_CLIENTS]
    note = f"{SERVE_CLIENTS} clients, one 640x480 JPEG per request, {setup}"
    return [row("serve", "requests/s, micro-batching on", on["rps"], "req/s",
                f"{note}; p50 {on['p50_ms']:.0f} ms, {on['requests']} requests"),
            row("serve", "requests/s, micro-batching off", off["rps"], "req/s",
                f"{note}; p50 {off['p50_ms']:.0f} ms, {off['requests']} requests"),
            row("serve", "throughput ratio on/off", on["rps"] / off["rps"], "x", note)]


def run_section(name: str, quick: bool) -> list[dict]:
    if name == "serve":
        return serve_rows(quick)
    return importlib.import_module(f"benchmarks.{name}_bench").run(quick)


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def table(rows: list[dict], quick: bool) -> str:
    dev = device()
    gpu = f", {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else ""
    head = (f"captioner benchmarks{' (--quick: tiny sizes, smoke test only)' if quick else ''} - "
            f"{os.cpu_count()} CPU cores (os.cpu_count()), {torch.get_num_threads()} torch threads, "
            f"device {dev.type}{gpu}, torch {torch.__version__}")
    lines = [f"**{head}**", "", "| section | figure | value | unit | notes |", "|---|---|---:|---|---|"]
    lines += [f"| {r['section']} | {r['figure']} | {fmt(r['value'])} | {r['unit']} | {r['note']} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test finishing in under a minute")
    parser.add_argument("--only", action="append", choices=SECTIONS, metavar="NAME",
                        help=f"run only this section (repeatable): {', '.join(SECTIONS)}")
    args = parser.parse_args(argv)
    rows, failed = [], False
    for name in args.only or SECTIONS:
        say(f"== {name}")
        try:
            rows += run_section(name, args.quick)
        except Exception as e:  # noqa: BLE001 - one broken section must not hide the others' figures
            traceback.print_exc()
            rows.append(row(name, "section failed", None, "", f"{type(e).__name__}: {e}"))
            failed = True
    print(table(rows, args.quick))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
