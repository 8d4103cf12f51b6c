"""COCO-2014 scale on a simulation: 123,287 images of random float16 features, 616,435 real captions.

The caches (pooled 1 x 2048 and 7x7 grid 49 x 2048, ResNet-50 shapes) are written as .npy memmaps in a temp folder
that is always deleted; captions are val2014's real ones from $CAPTIONER_SHARED, drawn with replacement. A
subprocess runs the training data path (CaptionIds, CachedCaptions, LengthBucketSampler, DataLoader) and a few real
steps of each decoder family at batch 512, so its peak RSS is that of a training process. FLOPs come from
torch.utils.flop_counter; the GPU rows project them onto one H100 at a stated fraction of its bf16 peak.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import optimizer_of, row, say, shared_file, timed, train_step
from benchmarks.vocab_bench import FILE

SECTION = "scale"
FULL = dict(images=123_287, batch=512, warmup=1, timed=5, photos=159)
QUICK = dict(images=1_000, batch=16, warmup=0, timed=2, photos=8)
CAPTIONS_PER_IMAGE, DIM, GRID_CELLS = 5, 2048, 49
FAMILIES = ("show-tell", "attention")
CHUNK_BYTES = 64 * 2**20
GPU, GPU_PEAK_TFLOPS, GPU_FRACTION = "H100 SXM", 989.0, 0.2  # dense bf16 peak; fraction assumed reachable
LOADER_PROCESSES = 16  # JPEG-decoding DataLoader workers of a GPU host (assumed)


def draw_records(captions_file: Path, images: int, seed: int = 0) -> list:
    """``images`` records of 5 captions each, cycling through a shuffle of the real captions (reused as needed)."""
    from captioner.data.datasets import ImageRecord

    captions = [a["caption"] for a in json.loads(captions_file.read_text())["annotations"]]
    order = np.resize(np.random.default_rng(seed).permutation(len(captions)), images * CAPTIONS_PER_IMAGE)
    k = CAPTIONS_PER_IMAGE
    return [ImageRecord(i, Path(f"{i}.jpg"), tuple(captions[j] for j in order[i * k:(i + 1) * k]), "train")
            for i in range(images)]


def write_cache(path: Path, images: int, cells: int) -> float:
    """An [images, 1 view, cells, 2048] float16 .npy of random values, written chunk by chunk through short-lived
    memmaps and dropped from the page cache, so RAM stays low; one random chunk repeats (values cost nothing to
    read). Returns seconds."""
    start = time.perf_counter()
    shape = (images, 1, cells, DIM)
    offset = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape).offset
    row_bytes = cells * DIM * 2
    rows = max(1, CHUNK_BYTES // row_bytes)
    block = np.random.default_rng(0).standard_normal((rows, *shape[1:]), dtype=np.float32).astype(np.float16)
    with open(path, "rb") as f:
        for first in range(0, images, rows):
            n = min(rows, images - first)
            chunk = np.memmap(path, np.float16, "r+", offset + first * row_bytes, (n, *shape[1:]))
            chunk[:] = block[:n]
            chunk.flush()
            del chunk
            os.posix_fadvise(f.fileno(), offset + first * row_bytes, n * row_bytes, os.POSIX_FADV_DONTNEED)
    return time.perf_counter() - start


def evict(path: Path) -> None:
    """Drop a file's (unmapped, clean) pages from the page cache, so the next reads come from disk."""
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def proc_status(*keys: str) -> dict[str, float]:
    """GB figures of this process from /proc/self/status (e.g. VmRSS, VmHWM)."""
    lines = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {k: int(lines[k].split()[0]) / 2**20 for k in keys}


def mapped_gb(path: Path) -> float:
    """GB of ``path`` resident through this process's memory maps (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's header line ends with its file
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total / 2**20


def flops_per_caption(module, vocab_size: int) -> tuple[float, float]:
    """(a, b) with one caption of length T costing a + b*T FLOPs in a training step (forward + backward),
    counted on two 2-caption batches; oneDNN is off so the LSTM's matmuls are visible to the counter."""
    from torch.utils.flop_counter import FlopCounterMode

    def count(length: int) -> float:
        x, ids = torch.randn(2, GRID_CELLS, DIM), torch.randint(4, vocab_size, (2, length))
        with FlopCounterMode(display=False) as counter, torch.backends.mkldnn.flags(enabled=False):
            module._loss((x, ids, torch.full((2,), length)))[1].backward()
        module.zero_grad(set_to_none=True)
        return counter.get_total_flops() / 2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mkldnn.flags warns about Intel-GPU TF32
        short, long = count(5), count(10)
    per_word = (long - short) / 5
    return short - 5 * per_word, per_word


def encoder_flops(encoder) -> float:
    """FLOPs of an encoder built on the meta device on one 224 px image (counted, not computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        encoder.eval()(torch.randn(1, 3, 224, 224, device="meta"))
    return counter.get_total_flops()


def probe_family(family: str, seed: int, data, vocab, cfg: dict) -> dict:
    """One decoder family's timed loader fetches (cold, then the same batches warm) and training steps, the process's
    peak RSS over them and one more step on the epoch's heaviest batch, and the family's FLOPs per caption."""
    from torch.utils.data import DataLoader

    from captioner.data.batching import LengthBucketSampler
    from captioner.models.captioner import ModelConfig
    from captioner.training.run import CaptionModule, TrainConfig

    say(f"scale: {family}, {cfg['warmup']} + {cfg['timed']} steps at batch {cfg['batch']}")
    Path("/proc/self/clear_refs").write_text("5")  # restart VmHWM: this family's peak
    module = CaptionModule(asdict(ModelConfig(vocab_size=len(vocab), decoder=family, backbone="resnet50",
                                             image_size=224, encoder_weights="none")),
                           vocab.itos, asdict(TrainConfig(data=".", batch_size=cfg["batch"]))).train()
    optimizer = optimizer_of(module)
    sampler = LengthBucketSampler(data.captions.lengths, cfg["batch"], seed=seed)
    evict(Path(cfg["grid"]))  # cold reads, as in a first epoch
    step = partial(train_step, module, optimizer)

    loader = iter(DataLoader(data, batch_sampler=sampler, collate_fn=lambda b: b))
    out = {"fetch": [], "step": [], "lengths": [], "before": proc_status("VmRSS")["VmRSS"]}
    for i in range(cfg["warmup"] + cfg["timed"]):
        t0 = time.perf_counter()
        batch = next(loader)
        t1 = time.perf_counter()
        step(batch)
        if i >= cfg["warmup"]:
            out["fetch"].append(t1 - t0), out["step"].append(time.perf_counter() - t1)
            out["lengths"].append(batch[2].tolist())
    out["timed_peak"], batches = proc_status("VmHWM")["VmHWM"], list(sampler)
    out["warm"] = [timed(lambda idx=idx: data.__getitems__(idx), repeat=1, warmup=0)
                   for idx in batches[cfg["warmup"]:cfg["warmup"] + cfg["timed"]]]
    heaviest = max(batches, key=lambda idx: len(idx) * data.captions.lengths[idx[0]])
    out["heaviest"] = (len(heaviest), data.captions.lengths[heaviest[0]])
    step(data.__getitems__(heaviest))
    out["peak"] = proc_status("VmHWM")["VmHWM"]
    out["a"], out["b"] = flops_per_caption(module, len(vocab))
    lengths = data.captions.lengths
    out["epoch_flops"] = len(lengths) * out["a"] + out["b"] * sum(lengths)
    out["timed_flops"] = sum(out["a"] + out["b"] * t for lens in out["lengths"] for t in lens)
    return out


def train_probe(cfg: dict) -> dict:
    """In a fresh process: the cached-feature training path over the grid cache, timed, with RSS and FLOPs."""
    from captioner.data.batching import LengthBucketSampler
    from captioner.data.captions import CachedCaptions, CaptionIds
    from captioner.data.vocab import Vocabulary
    from captioner.models.encoder import Encoder

    records = draw_records(Path(cfg["captions"]), cfg["images"])
    vocab = Vocabulary.load(cfg["vocab"])
    before, start = proc_status("VmRSS")["VmRSS"], time.perf_counter()
    ids = CaptionIds(records, vocab)
    out = {"ids_s": time.perf_counter() - start, "ids_gb": proc_status("VmRSS")["VmRSS"] - before,
           "batches": len(LengthBucketSampler(ids.lengths, cfg["batch"])), "captions": len(ids), "vocab": len(vocab)}
    data = CachedCaptions(np.load(cfg["grid"], mmap_mode="r"), ids)
    for seed, family in enumerate(FAMILIES):
        out[family] = probe_family(family, seed, data, vocab, cfg)
    out["mapped"] = mapped_gb(Path(cfg["grid"]))
    with torch.device("meta"):
        out["encoder_flops"] = encoder_flops(Encoder("resnet50", "none", grid=7))
    return out


def decode_rate(photos: list[Path]) -> float:
    """Images/s of reading + decoding + resizing real JPEGs to 224 px in one process on one thread, as a DataLoader
    worker does (ImageViews, 1 view)."""
    from captioner.features import ImageViews

    views, threads = ImageViews(photos, 224), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        views[0]
        start = time.perf_counter()
        for i in range(len(photos)):
            views[i]
        return len(photos) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def skip_reason(cache_gb: float) -> str | None:
    """Why the section cannot run here (too little free disk for the caches), or None."""
    free_gb = shutil.disk_usage(tempfile.gettempdir()).free / 1e9
    if free_gb < 1.2 * cache_gb + 2:
        return f"skipped: {cache_gb:.1f} GB of caches need more than the {free_gb:.1f} GB free in " \
               f"{tempfile.gettempdir()}"
    return None


def run(quick: bool) -> list[dict]:
    from captioner.data.vocab import Vocabulary

    s = QUICK if quick else FULL
    grid_gb, pooled_gb = s["images"] * GRID_CELLS * DIM * 2 / 1e9, s["images"] * DIM * 2 / 1e9
    captions, why = shared_file(FILE)
    why = why or skip_reason(grid_gb + pooled_gb)
    if why:
        return [row(SECTION, figure, None, unit, why) for figure, unit in
                (("feature cache on disk", "GB"), ("peak RSS of a training process", "GB"),
                 ("epoch on this CPU", "s"))]
    load = os.getloadavg()[0]
    say(f"scale: drawing {s['images'] * CAPTIONS_PER_IMAGE:,} captions for {s['images']:,} images")
    records = draw_records(captions, s["images"])
    start = time.perf_counter()
    vocab = Vocabulary.build((c for r in records for c in r.captions), 5)
    vocab_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="captioner-scale-") as tmp:
        say(f"scale: writing {pooled_gb:.2f} + {grid_gb:.2f} GB of float16 caches under {tmp}")
        write_s = write_cache(Path(tmp, "pooled.npy"), s["images"], 1)
        write_s += write_cache(Path(tmp, "grid.npy"), s["images"], GRID_CELLS)
        sizes = {name: Path(tmp, f"{name}.npy").stat().st_size / 1e9 for name in ("pooled", "grid")}
        vocab.save(Path(tmp, "vocab.json"))
        cfg = dict(s, captions=str(captions), vocab=str(Path(tmp, "vocab.json")), grid=str(Path(tmp, "grid.npy")))
        Path(tmp, "cfg.json").write_text(json.dumps(cfg))
        src = str(Path(sys.modules["captioner"].__file__).parents[1])  # the child imports this same captioner
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
        child = subprocess.run([sys.executable, "-m", "benchmarks.scale_bench", str(Path(tmp, "cfg.json"))],
                               cwd=Path(__file__).parents[1], env=env, stdout=subprocess.PIPE, text=True,
                               timeout=180 if quick else 3600, check=True)
        probe = json.loads(child.stdout.splitlines()[-1])
    photos = sorted(Path(os.environ["CAPTIONER_SHARED"], "data/coco-mini/val2017").glob("*.jpg"))[:s["photos"]]
    jpeg = decode_rate(photos) if photos else None
    return table_rows(s, vocab_s, sizes, write_s, probe, jpeg, (load, os.getloadavg()[0]))


def table_rows(s: dict, vocab_s: float, sizes: dict[str, float], write_s: float, probe: dict, jpeg: float | None,
               load: tuple[float, float]) -> list[dict]:
    """The section's rows from the parent's and the training subprocess's measurements."""
    n, gpu = s["images"], GPU_PEAK_TFLOPS * 1e12 * GPU_FRACTION
    gpu_note = f"{GPU_FRACTION:.0%} of {GPU} dense bf16 peak ({GPU_PEAK_TFLOPS:.0f} TFLOP/s), an assumption"
    heavy = probe["show-tell"]["heaviest"]
    setup = f"batch {s['batch']}, hidden 512, 7x7 grid of 2048, context 256, vocab {probe['vocab']:,}"
    rows = [
        row(SECTION, f"feature cache on disk, pooled ({n:,} x 1 x 2048 fp16)", sizes["pooled"], "GB",
            "ResNet-50 pooled shape, random values"),
        row(SECTION, f"feature cache on disk, 7x7 grid ({n:,} x 49 x 2048 fp16)", sizes["grid"], "GB",
            f"both caches written chunk by chunk via memmaps in {write_s:.0f} s, then deleted"),
        row(SECTION, f"vocabulary build, {probe['captions']:,} captions", vocab_s, "s",
            f"Vocabulary.build, threshold 5 -> {probe['vocab']:,} words; real val2014 captions, reused as needed"),
        row(SECTION, "caption ids (CaptionIds) build", probe["ids_s"], "s",
            f"tokenize + encode {probe['captions']:,} captions; RSS +{probe['ids_gb'] * 1024:.0f} MB"),
        row(SECTION, "peak RSS of a training process", max(probe[f]["peak"] for f in FAMILIES), "GB",
            f"VmHWM of the subprocess (CPU training: activations count) with a step on the epoch's heaviest batch "
            f"({heavy[0]} captions x {heavy[1]} tokens): show-tell {probe['show-tell']['peak']:.2f}, attention "
            f"{probe['attention']['peak']:.2f} GB; over the {s['warmup'] + s['timed']} random batches only "
            f"{probe['show-tell']['timed_peak']:.2f} / {probe['attention']['timed_peak']:.2f} GB; before any step "
            f"{probe['show-tell']['before']:.2f} GB; grid memmap pages resident at the end {probe['mapped']:.2f} GB "
            f"of the {sizes['grid']:.1f} GB cache"),
    ]
    for family in FAMILIES:
        p = probe[family]
        loader, steps = 1 / statistics.median(p["fetch"]), 1 / statistics.median(p["step"])
        cpu_flops = p["timed_flops"] / sum(p["step"])
        fixed = f" + {p['a'] / 1e6:.0f} per caption" if p["a"] > 1e6 else ""  # Show-Tell's is ~0 (or below)
        rows += [
            row(SECTION, f"{family}: epoch on this CPU", p["epoch_flops"] / cpu_flops, "s",
                f"extrapolated by FLOPs from {s['timed']} timed steps ({cpu_flops / 1e9:.0f} GFLOP/s) to "
                f"{probe['batches']:,} batches; {setup}"),
            row(SECTION, f"{family}: data loader", loader, "batches/s",
                f"median of {s['timed']}, cold: CachedCaptions reading the grid cache after its pages were dropped, "
                f"num_workers 0; the same batches warm {1 / statistics.median(p['warm']):.2f} batches/s"),
            row(SECTION, f"{family}: training step demand", steps, "steps/s",
                f"median of {s['timed']}; loss, backward, clip, Adam"),
            row(SECTION, f"{family}: training FLOPs per caption word", p["b"] / 1e6, "MFLOP",
                f"forward + backward, FlopCounterMode; {p['b'] / 1e6:.1f} MFLOP per word{fixed}; "
                f"{p['epoch_flops'] / 1e15:.3g} PFLOP per epoch"),
            row(SECTION, f"{family}: compute floor of an epoch on one {GPU}", p["epoch_flops"] / gpu, "s",
                f"{gpu_note}; this CPU's loader at {loader:.2f} batches/s alone needs "
                f"{probe['batches'] / loader:,.0f} s"),
        ]
    enc = probe["encoder_flops"]
    decode = (f"JPEG decoding at {jpeg:.0f} img/s per process needs {gpu / enc / jpeg:.0f} loader processes to keep "
              f"up; {LOADER_PROCESSES} give {LOADER_PROCESSES * jpeg:,.0f} img/s, {n:,} images in "
              f"{n / (LOADER_PROCESSES * jpeg) / 60:.1f} min" if jpeg else "JPEG decoding not measured (no photos)")
    rows += [
        row(SECTION, "encoder FLOPs per image (ResNet-50, 224 px, 7x7 grid)", enc / 1e9, "GFLOP", "FlopCounterMode"),
        row(SECTION, f"compute-bound extraction on one {GPU}", gpu / enc, "images/s",
            f"{gpu_note}; {n:,} images in {n / (gpu / enc) / 60:.1f} min; {decode}"),
    ]
    if jpeg:
        rows.append(row(SECTION, "JPEG read + decode + resize to 224 px", jpeg, "images/s",
                        f"ImageViews on {s['photos']} real COCO photos (coco-mini val2017), one process, one thread"))
    rows.append(row(SECTION, "host load average (1 min), higher of start / end", max(load), "",
                    f"{load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores shared with other work"))
    return rows


if __name__ == "__main__":
    print(json.dumps(train_probe(json.loads(Path(sys.argv[1]).read_text()))))
