"""Serving throughput with micro-batching on and off: requests/s and p50/p95 latency at 1 and 8 clients.

Run: python benchmarks/serve_bench.py [--model DIR] [--requests N] [--seconds S]
Without --model it times an untrained resnet50 at 128 px (a realistic encoder cost, nothing downloaded).
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import threading
import time
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from captioner.data.vocab import Vocabulary
from captioner.inference import Captioner
from captioner.models.captioner import ModelConfig
from captioner.serve.app import create_app, running

CLIENTS = (1, 8)
WORDS = ["a man riding a wave on top of a surfboard", "a plate of food with broccoli and rice",
         "two dogs playing with a frisbee in the park", "a red bus parked on the side of a street"]


def untrained_model(folder: Path, backbone: str = "resnet50", image_size: int = 128) -> Path:
    """Save an untrained captioner (by default resnet50 at 128 px) in ``folder``."""
    v = Vocabulary.build(WORDS, threshold=1)
    config = ModelConfig(vocab_size=len(v), backbone=backbone, encoder_weights="none", image_size=image_size)
    return Captioner(config, v).save(folder)


def photo_jpeg(width: int = 640, height: int = 480) -> bytes:
    """A photo-sized JPEG (smooth gradients plus grain), about the size of a COCO image."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = np.stack([x, y, 1 - x * y], -1) * 200 + np.random.default_rng(0).normal(0, 12, (height, width, 3))
    buf = BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def load_test(url: str, data: bytes, clients: int, requests: int, seconds: float) -> dict:
    """``clients`` threads post ``data`` until ``requests`` are done or ``seconds`` pass; rate and latency."""
    latencies: list[float] = []
    issued, deadline = itertools.count(), time.perf_counter() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.perf_counter() < deadline and next(issued) < requests:
                start = time.perf_counter()
                http.post("/v1/captions", files={"files": ("photo.jpg", data, "image/jpeg")}).raise_for_status()
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    done = sorted(x * 1000 for x in latencies)
    return {"clients": clients, "requests": len(done), "rps": len(done) / elapsed,
            "p50_ms": statistics.median(done), "p95_ms": done[min(len(done) - 1, int(0.95 * len(done)))]}


def run(model_dir: str | Path | None = None, requests: int = 200, seconds: float = 15.0) -> list[dict]:
    """Rows of (batching, clients, requests, rps, p50_ms, p95_ms) for batching on and off."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = model_dir or untrained_model(Path(tmp) / "resnet50-128")
        data, rows = photo_jpeg(), []
        for batching in (True, False):
            with running(create_app(model_dir, batching=batching)) as url:
                load_test(url, data, 2, 6, seconds)  # warm up
                rows += [{"batching": batching, **load_test(url, data, c, requests, seconds)} for c in CLIENTS]
        return rows


def table(rows: list[dict]) -> str:
    """Markdown table, batching on and off side by side, and the on/off throughput ratio at the most clients."""
    by = {(r["batching"], r["clients"]): r for r in rows}
    lines = ["| clients | req/s on | req/s off | p50 ms on | p50 ms off | p95 ms on | p95 ms off | requests on/off |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in sorted({r["clients"] for r in rows}):
        on, off = by[True, c], by[False, c]
        lines.append(f"| {c} | {on['rps']:.1f} | {off['rps']:.1f} | {on['p50_ms']:.0f} | {off['p50_ms']:.0f} | "
                     f"{on['p95_ms']:.0f} | {off['p95_ms']:.0f} | {on['requests']}/{off['requests']} |")
    most = max(r["clients"] for r in rows)
    lines.append(f"\nthroughput ratio on/off at {most} clients: {by[True, most]['rps'] / by[False, most]['rps']:.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: an untrained resnet50 at 128 px)")
    parser.add_argument("--requests", type=int, default=200, help="most requests per measurement")
    parser.add_argument("--seconds", type=float, default=15.0, help="most seconds per measurement")
    args = parser.parse_args()
    print(table(run(args.model, args.requests, args.seconds)))


if __name__ == "__main__":
    main()
