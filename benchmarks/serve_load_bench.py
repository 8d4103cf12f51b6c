"""Server load test: good uploads, the malformed-EXIF JPEG, thin, huge-pixel and 16-megapixel RGBA images, and
16-file requests, all at once from 200 clients, against `captioner serve` with its default limits in its own
process on loopback. Reports each kind's answers, the 500s (must be none), the server's peak RSS (must stay under
2 GB) and how often each request size is admitted (not 503) per attempt (at least a quarter as often as single files).

Run: python -m benchmarks.serve_load_bench [--quick] [--model DIR]   (or: python -m benchmarks --only serve_load)
Bounded: a fixed list of requests, a deadline, and the server is stopped at the end. A 503 is retried after its
Retry-After (what a client is told to do), so every good upload must end with 200 and its captions.
"""
from __future__ import annotations

import argparse
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import httpx
from PIL import Image

from benchmarks.common import row, say, shared_file
from benchmarks.serve_bench import photo_jpeg, untrained_model

SECTION = "serve_load"
RSS_LIMIT_MB = 2048
FAIRNESS = 0.25  # each request size admitted per attempt at least this fraction as often as single files
EXIF_FILE = "data/bad-inputs/malformed-exif.jpg"


@dataclass
class Kind:
    """One kind of request: its files, the status it must end with, and how many of its files must be captioned."""

    label: str
    files: list[tuple[str, bytes]]
    expect: int
    captioned: int
    count: int
    statuses: Counter = field(default_factory=Counter)
    retries: int = 0
    uncaptioned: int = 0  # answered 200 with fewer captioned files than ``captioned``

    @property
    def attempts(self) -> int:
        return sum(self.statuses.values()) + self.retries

    @property
    def admitted(self) -> int:
        """Attempts not refused as busy (503)."""
        return self.attempts - self.retries - self.statuses[503]


def rgba_png(side: int) -> bytes:
    """A ``side`` x ``side`` RGBA PNG, smooth colour and alpha gradients (a few MB for 16 MP)."""
    ramp = Image.linear_gradient("L").resize((side, side))
    return png(Image.merge("RGBA", (ramp, ramp.transpose(Image.Transpose.ROTATE_90), ramp.point(lambda v: 255 - v),
                                    ramp.transpose(Image.Transpose.ROTATE_270))))


def png(image: Image.Image) -> bytes:
    buf = BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def kinds(quick: bool) -> tuple[list[Kind], str]:
    """The requests of the mix (a tenth or so with ``quick``), and a note on what was left out."""
    exif_path, skipped = shared_file(EXIF_FILE)
    exif = [("malformed-exif.jpg", exif_path.read_bytes())] if exif_path else []
    good, thin = ("photo.jpg", photo_jpeg()), ("thin.png", png(Image.new("L", (1, 20000))))
    huge = ("huge.png", png(Image.new("RGB", (6000, 6000), (90, 140, 200))))  # 36 MP, ~100 kB: under the 40 MP limit
    bomb = ("bomb.png", png(Image.new("L", (8000, 8000))))  # 64 MP: over it
    rgba = ("rgba.png", rgba_png(4000))  # 16 MP with alpha: ~12 bytes a pixel to decode and flatten on white
    n = (lambda full, small: small) if quick else (lambda full, small: full)
    mix = [Kind("good 640x480 JPEG", [good], 200, 1, n(96, 12)),
           Kind("thin 1x20000 PNG", [thin], 422, 0, n(16, 3)),
           Kind("huge 6000x6000 PNG (36 MP)", [huge], 200, 1, n(24, 3)),
           Kind("pixel bomb 8000x8000 PNG (64 MP)", [bomb], 413, 0, n(8, 2)),
           Kind("RGBA 4000x4000 PNG (16 MP)", [rgba], 200, 1, n(48, 4)),
           Kind("16 good 640x480 JPEGs in one request", [good] * 16, 200, 16, n(32, 4))]
    if exif:
        mix += [Kind("malformed-EXIF JPEG (orientation ignored)", exif, 200, 1, n(16, 3)),
                Kind("one request: good + malformed-EXIF + thin", [good, *exif, thin], 200, 2, n(16, 3))]
    return mix, f"malformed-EXIF kinds {skipped}" if skipped else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process in MB, from Linux /proc; {} elsewhere."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return {}
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM") if key in fields}


class Server:
    """`captioner serve` on a free loopback port in its own process (its log in ``log``), stopped on exit."""

    def __init__(self, model_dir: Path, log: Path, start_timeout_s: float = 180) -> None:
        self.url, self.log = f"http://127.0.0.1:{free_port()}", log
        command = [sys.executable, "-m", "captioner", "serve", "--model", str(model_dir),
                   "--port", self.url.rsplit(":", 1)[1]]
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout_s
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.25)

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn's clean shutdown
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def send(http: httpx.Client, kind: Kind, deadline: float) -> None:
    """Post one request of ``kind``, retrying a 503 after its Retry-After until ``deadline``; record the outcome
    (status 0: no answer, the connection failed)."""
    while True:
        try:
            r = http.post("/v1/captions", files=[("files", f) for f in kind.files])
        except httpx.HTTPError as e:
            say(f"{SECTION}: {kind.label}: no answer ({type(e).__name__}: {e})")
            kind.statuses[0] += 1
            return
        if r.status_code != 503 or time.monotonic() + float(r.headers.get("retry-after", 1)) > deadline:
            break
        kind.retries += 1
        time.sleep(float(r.headers.get("retry-after", 1)))
    kind.statuses[r.status_code] += 1
    if r.status_code == 200 and sum(bool(x["captions"]) for x in r.json()["results"]) < kind.captioned:
        kind.uncaptioned += 1


def load(url: str, mix: list[Kind], clients: int, deadline: float) -> None:
    """``clients`` threads share the shuffled requests of ``mix``; each stops at ``deadline``."""
    todo = [k for k in mix for _ in range(k.count)]
    random.Random(0).shuffle(todo)
    lock, start = threading.Lock(), threading.Barrier(clients)

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            start.wait()
            while time.monotonic() < deadline:
                with lock:
                    if not todo:
                        return
                    kind = todo.pop()
                send(http, kind, deadline)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run(quick: bool = False, model_dir: str | Path | None = None, clients: int | None = None,
        seconds: float | None = None) -> list[dict]:
    """Rows: per kind the requests that ended as they must, the 500s, admission per request size, the server's peak
    and warm RSS, failed checks."""
    clients, seconds = clients or (16 if quick else 200), seconds or (120 if quick else 420)
    mix, note = kinds(quick)
    with tempfile.TemporaryDirectory() as tmp:
        setup = f"model {model_dir}"
        if model_dir is None:
            backbone, size = ("resnet18", 64) if quick else ("resnet50", 128)
            model_dir = untrained_model(Path(tmp) / "model", backbone, size)
            setup = f"untrained {backbone} at {size} px"
        server = Server(Path(model_dir), Path(tmp) / "server.log")
        try:
            httpx.post(f"{server.url}/v1/captions", files={"files": ("photo.jpg", photo_jpeg())},
                       timeout=120).raise_for_status()  # warm up
            warm = memory_mb(server.process.pid)
            say(f"{SECTION}: {sum(k.count for k in mix)} requests from {clients} clients")
            start = time.monotonic()
            load(server.url, mix, clients, start + seconds)
            wall = time.monotonic() - start
            peak = memory_mb(server.process.pid)
        finally:
            server.stop()
        errors = sum("Traceback" in line or " ERROR " in line for line in server.log.read_text().splitlines())
    setup = f"{setup}, `captioner serve` default limits, {clients} clients, loopback"
    rows, failures = [], []
    for k in mix:
        ok = k.statuses[k.expect] - (k.uncaptioned if k.expect == 200 else 0)
        what = f"answered {k.expect}" + (" with captions" if k.captioned else "")
        rows.append(row(SECTION, f"{k.label}: {what}", ok, f"of {k.count}",
                        f"statuses {dict(sorted(k.statuses.items()))}, {k.retries} retries after 503"))
        if ok != k.count:
            failures.append(f"{k.label}: {ok} of {k.count} {what}")
    rows += fairness(mix, failures)
    fives = sum(n for k in mix for s, n in k.statuses.items() if s >= 500 or s == 0)
    rows.append(row(SECTION, "answers 5xx or none (after retrying 503s)", fives, "requests",
                    f"must be 0 (status 0: no answer); server log lines with ERROR or Traceback: {errors}"))
    if fives or errors:
        failures.append(f"{fives} answers 5xx or none, {errors} error lines in the server log")
    if peak:
        rows.append(row(SECTION, "server peak RSS (VmHWM)", peak["VmHWM"], "MB",
                        f"must stay under {RSS_LIMIT_MB:,} MB; warm before the load {warm['VmRSS']:.0f} MB; {setup}"))
        if peak["VmHWM"] >= RSS_LIMIT_MB:
            failures.append(f"peak RSS {peak['VmHWM']:.0f} MB >= {RSS_LIMIT_MB} MB")
    else:
        rows.append(row(SECTION, "server peak RSS (VmHWM)", None, "MB", "not measured: needs Linux /proc"))
    rows.append(row(SECTION, "wall time of the load", wall, "s", f"deadline {seconds:g} s; {note or setup}"))
    rows.append(row(SECTION, "checks failed", len(failures), "", "; ".join(failures) or "none"))
    return rows


def fairness(mix: list[Kind], failures: list[str]) -> list[dict]:
    """Rows: per request size (files), the share of attempts admitted (not 503) and its ratio to single files'."""
    sizes: dict[int, list[int]] = {}
    for k in mix:
        if k.expect == 200:
            counts = sizes.setdefault(len(k.files), [0, 0])
            counts[0], counts[1] = counts[0] + k.admitted, counts[1] + k.attempts
    rate = {size: admitted / attempts for size, (admitted, attempts) in sizes.items() if attempts}
    rows = []
    for size, (admitted, attempts) in sorted(sizes.items()):
        ratio = rate[size] / rate[1] if rate.get(1) else None
        rows.append(row(SECTION, f"{size}-file requests admitted per attempt", 100 * rate[size], "%",
                        f"{admitted} of {attempts} attempts (the rest 503, retried); "
                        + (f"{ratio:.2f} x single files' (must be >= {FAIRNESS})" if ratio is not None else "")))
        if ratio is not None and ratio < FAIRNESS:
            failures.append(f"{size}-file requests admitted {ratio:.2f} x as often as single files")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few requests of each kind from 16 clients")
    parser.add_argument("--model", help="model folder (default: an untrained resnet50 at 128 px, --quick resnet18 "
                                         "at 64 px)")
    parser.add_argument("--clients", type=int, help="concurrent clients (default 200, --quick 16)")
    parser.add_argument("--seconds", type=float, help="deadline of the load (default 420, --quick 120)")
    args = parser.parse_args()
    rows = run(args.quick, args.model, args.clients, args.seconds)
    print("| figure | value | unit | notes |\n|---|---:|---|---|")
    for r in rows:
        value = "n/a" if r["value"] is None else f"{r['value']:,.0f}" if r["value"] >= 100 else f"{r['value']:.3g}"
        print(f"| {r['figure']} | {value} | {r['unit']} | {r['note']} |")
    return 1 if rows[-1]["value"] else 0


if __name__ == "__main__":
    sys.exit(main())
