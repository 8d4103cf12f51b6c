"""Val CIDEr against training minutes, one line per run (e.g. per decoder family), from the runs' metrics.csv:

    python -m benchmarks.curves OUT.png LABEL=RUN[@SECONDS] ...

Each run's epochs are placed at their cumulative seconds (metrics.csv's ``seconds``), or at epoch x SECONDS when
given: runs trained side by side on a shared machine have meaningless clocks, so a time per epoch measured alone
(e.g. on 2 idle cores) places them instead. The figure's title says which.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from captioner.io import read_csv


def points(run: Path, seconds: float | None) -> tuple[list[float], list[float]]:
    """(minutes, val CIDEr) of a run's evaluated epochs."""
    rows = [r for r in read_csv(run / "metrics.csv") if r.get("val_cider")]
    if not rows:
        raise SystemExit(f"{run / 'metrics.csv'} has no val_cider: train with --eval-every 1")
    if seconds is None:
        elapsed, minutes = 0.0, []
        for r in read_csv(run / "metrics.csv"):
            elapsed += float(r["seconds"])
            if r.get("val_cider"):
                minutes.append(elapsed / 60)
    else:
        minutes = [(int(r["epoch"]) + 1) * seconds / 60 for r in rows]
    return minutes, [float(r["val_cider"]) for r in rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the picture (.png)")
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_FOLDER[@SECONDS_PER_EPOCH]")
    parser.add_argument("--title", default="val CIDEr against training minutes")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for spec in args.runs:
        label, _, where = spec.partition("=")
        folder, _, seconds = where.partition("@")
        x, y = points(Path(folder), float(seconds) if seconds else None)
        ax.plot(x, y, marker="o", label=label)
    ax.set(xlabel="training minutes", ylabel="val CIDEr (greedy)", title=args.title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
