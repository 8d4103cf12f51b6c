"""Smoke tests of `python -m benchmarks`: the quick vocab and latency sections print one table (a few seconds); the
quick scale section measures every row (or skips them all without $CAPTIONER_SHARED)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_benchmarks_print_one_table() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "vocab", "--only", "latency",
                           "--only", "gpu"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert "CPU cores" in lines[0] and "torch threads" in lines[0]
    assert lines[2:4] == ["| section | figure | value | unit | notes |", "|---|---|---:|---|---|"]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[4:]]
    assert {c[0] for c in cells} == {"vocab", "latency", "gpu"} and all(len(c) == 5 for c in cells)
    gpu = [c for c in cells if c[0] == "gpu"]  # --quick: tiny sizes on whatever device there is
    assert len(gpu) == 1 + 2 * 2 * 2 and all(float(c[2].replace(",", "")) > 0 for c in gpu)
    latency = [c for c in cells if c[0] == "latency"]
    assert all(float(c[2].replace(",", "")) > 0 for c in latency)
    # per batch (1 and 4): the encoder, then greedy and beam-3 of two families, float32 and int8 (CPU), for 10
    # and 20 words, with ratios
    assert [c[1] for c in latency if c[3] == "ms/image" and "encoder forward" in c[1]] == [
        "batch 1: encoder forward", "batch 4: encoder forward"]
    searches = 2 * 2 * 2 * 2 * 2
    assert len([c for c in latency if c[3] == "ms/image"]) == 2 + searches
    assert len([c for c in latency if c[3] == "x" and c[1].endswith("ratio to the encoder")]) == searches
    assert len([c for c in latency if c[3] == "x" and " int8 " in c[1]]) == searches // 2
    # and (quick: the attention decoder's) step time of greedy and beam-3, plain and with each search option, and
    # of an ensemble of both families
    steps = [c[1] for c in latency if c[3] == "ms/step"]
    assert len(steps) == 2 * (2 + 6 + 2) and "batch 4: attention beam-3 + 3 diverse groups, a step" in steps
    assert "batch 1: ensemble of show-tell + attention beam-3, a step" in steps


def _scale_rows(env: dict[str, str]) -> list[list[str]]:
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "scale"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in done.stdout.strip().splitlines()[4:]]
    assert rows and all(len(c) == 5 and c[0] == "scale" for c in rows)
    return rows


def test_quick_scale_section_skips_without_shared_data() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CAPTIONER_SHARED"}
    rows = _scale_rows(env)
    assert all(c[2] == "n/a" and c[4] == "skipped: CAPTIONER_SHARED is unset" for c in rows)


@pytest.mark.slow
def test_quick_scale_section_measures_every_row(shared: Path) -> None:
    start = time.perf_counter()
    rows = _scale_rows(dict(os.environ, CAPTIONER_SHARED=str(shared)))
    assert time.perf_counter() - start < 60  # ~25 s on 2 busy cores; the section itself aims under 30 s
    figures = {c[1]: float(c[2].replace(",", "")) for c in rows}
    assert all(v > 0 for v in figures.values()), figures
    for name in ("peak RSS of a training process", "show-tell: epoch on this CPU", "attention: epoch on this CPU",
                 "show-tell: data loader", "attention: training step demand",
                 "compute-bound extraction on one H100 SXM"):
        assert name in figures
    assert any(f.startswith("feature cache on disk, 7x7 grid") for f in figures)


def test_cider_ceiling_scores_like_pycocoevalcap_and_climbs_only_up() -> None:
    from benchmarks.cider_ceiling import Scorer, climb
    from pycocoevalcap.cider.cider import Cider

    refs = {1: ["a red circle on the left", "there is a big red circle on the left", "a red circle at the left side"],
            2: ["a blue square above a green triangle", "the green triangle is under the blue square"],
            3: ["a small yellow diamond in the centre", "a yellow diamond in the middle of the image"]}
    candidates = {1: "a red circle on the right", 2: "a green triangle below a blue square", 3: "a yellow diamond"}
    references = {i: [r.split() for r in rs] for i, rs in refs.items()}
    _, official = Cider().compute_score(refs, {i: [c] for i, c in candidates.items()})
    score = Scorer(references)
    mine = [score(candidates[i].split(), i) for i in refs]
    np.testing.assert_allclose(mine, official, rtol=0, atol=1e-9)
    for i, words in ((1, candidates[1].split()), (3, ["the"])):
        best, caption = climb(score, words, i, sorted({w for r in references[i] for w in r}))
        assert best == score(caption, i) and best > score(words, i)
    assert score("a red circle on the left".split(), 1) > score("a blue square".split(), 1)


def test_quick_attention_section_times_every_decoder_and_precision() -> None:
    from benchmarks import attention_bench

    rows = attention_bench.run(quick=True)
    steps = [r for r in rows if r["unit"] == "ms"]
    ratios = {r["figure"]: r["value"] for r in rows if r["unit"] == "x"}
    assert len(steps) == 6 * 2 and all(r["value"] > 0 for r in steps)
    variants = ("attention, additive score", "attention, dot score", "attention, additive score, plain ops",
                "adaptive, additive score", "topdown, additive score")
    assert set(ratios) == {f"{v} / show-tell time, {p}" for v in variants for p in ("fp32", "bf16")}
    ms = {r["figure"]: r["value"] for r in steps}
    assert ratios["attention, dot score / show-tell time, bf16"] == pytest.approx(
        ms["training step, attention, dot score, bf16"] / ms["training step, show-tell, bf16"])


def test_curves_place_evaluated_epochs_at_their_cumulative_minutes_or_a_given_epoch_time(tmp_path: Path) -> None:
    from benchmarks import curves

    (tmp_path / "metrics.csv").write_text("epoch,val_cider,seconds\n0,30.0,60\n1,,120\n2,40.5,60\n")
    assert curves.points(tmp_path, None) == ([1.0, 4.0], [30.0, 40.5])
    assert curves.points(tmp_path, 30.0) == ([0.5, 1.5], [30.0, 40.5])
    curves.main([str(tmp_path / "c.png"), f"a={tmp_path}", f"b={tmp_path}@90"])
    assert (tmp_path / "c.png").stat().st_size > 0
