"""The real-photo main job, timed: `captioner demo --data Flickr8k.token.txt` from an empty cache (encoding every
photo included), each phase's seconds and the total against the 20-minute budget (needs $CAPTIONER_SHARED)."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import row, say, shared_file

SECTION = "photos"
FILE = "data/flickr8k/Flickr8k.token.txt"
BUDGET_S = 20 * 60


def run(quick: bool) -> list[dict]:
    path, why = shared_file(FILE)
    if path is None or quick:
        return [row(SECTION, "real-photo main job, Flickr8k", None, "s", why or "skipped with --quick (~20 min)")]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "captioner", "demo", "--data", str(path), "--out", tmp,
                        "--no-progress"], check=True, stdout=sys.stderr)
        wall = time.perf_counter() - start
        summary = json.loads((Path(tmp) / "demo_summary.json").read_text())
    say(f"photos: {wall:.0f} s")
    photos = f"{summary['split']} split scored; {summary['served']} served"
    rows = [row(SECTION, f"phase: {name}", seconds, "s", photos) for name, seconds in summary["phases_s"].items()
            if name != "total"]
    return rows + [row(SECTION, "whole job (process wall time)", wall, "s", "from an empty feature cache"),
                   row(SECTION, "whole job / 20-minute budget", wall / BUDGET_S, "x", "below 1 meets the target")]
