"""Frozen-encoder feature cache: every image encoded once into a float16 memory-mapped array, reused by runs.

The cache is keyed by a fingerprint of backbone + weights + image size + views + image files (path, size, mtime).
It is built in chunks; a chunk counts only once its marker file exists, so a killed (or distributed) build is
completed, never trusted half-written. Markers are written atomically, name their chunk's size and are cleared
whenever a new partial array is started; the metadata is written before the array is renamed into place, so a
kill at any point leaves either a finished cache or a build that a rerun completes. Processes of a distributed
run each encode their share of the chunks; jobs building the same cache take turns on a lock file beside it. The
array's disk space is reserved before encoding (a full disk stops with a message, not a bus error on a mapped
page), and a damaged cache file is rebuilt.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch.utils.data import DataLoader, Dataset

from captioner.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESIZE_RATIO,
    eval_transform,
    flip,
    load_rgb,
    train_transform,
)
from captioner.io import write_json
from captioner.precision import autocast
from captioner.progress import bar as progress_bar

if TYPE_CHECKING:
    from captioner.models.encoder import Encoder

CACHE_VERSION = 2
SHARED_WAIT_S = 60.0  # how long another node may take to see rank 0's files (NFS caches attributes up to 60 s)


def default_cache_dir() -> Path:
    """$CAPTIONER_CACHE or ~/.cache/captioner/features."""
    return Path(os.environ.get("CAPTIONER_CACHE", Path.home() / ".cache" / "captioner" / "features"))


def fingerprint(backbone: str, weights: str, seed: int, image_size: int, views: int, paths: Sequence[Path],
                output_stride: int = 32, grid: int = 1, precision: str = "fp32") -> str:
    """Key of a cache: changes whenever the encoder, its precision, preprocessing, image list or an image's size or
    mtime changes (float32 caches keep the key they had before precisions were told apart)."""
    from captioner.models.timm_backbones import weights_key  # a weights file is keyed by its content

    settings = [CACHE_VERSION, backbone, weights_key(weights), seed if weights == "none" else None, image_size, views,
                RESIZE_RATIO, output_stride, grid] + ([precision] if precision != "fp32" else [])
    h = hashlib.sha256(json.dumps(settings).encode())
    for p in paths:
        path = Path(p).resolve()
        try:
            stat = path.stat()
            stamp = f"{stat.st_size} {stat.st_mtime_ns}"
        except OSError:  # a missing file is cached as unreadable, until it appears
            stamp = "missing"
        h.update(os.fsencode(path) + f"\0{stamp}\0".encode())
    return h.hexdigest()[:20]


class ImageViews(Dataset):
    """Each image as ``views`` tensors: 0 plain, 1 mirrored, then random crops (odd views mirrored).

    A view's randomness is seeded by (image index, view), so every process and every rerun sees the same pixels.
    An unreadable image yields zeros and ``ok=False``.
    """

    def __init__(self, paths: Sequence[Path], image_size: int, views: int = 1, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.paths, self.views = list(paths), views
        self.plain, self.aug = eval_transform(image_size, mean, std), train_transform(image_size, mean, std)

    def __len__(self) -> int:
        return len(self.paths)

    def _view(self, image, index: int, view: int) -> torch.Tensor:
        if view < 2:
            x = self.plain(image)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(index * 1009 + view)
                x = self.aug(image)
        return flip(x) if view % 2 else x

    def __getitem__(self, index: int) -> tuple[torch.Tensor, bool]:
        try:
            image = load_rgb(self.paths[index])
        except OSError:
            size = self.plain.transforms[1].size
            return torch.zeros(self.views, 3, *size), False
        return torch.stack([self._view(image, index, v) for v in range(self.views)]), True


class NoSpaceError(OSError):
    """The disk holding the cache cannot take the array."""


def reserve(path: Path, folder: Path) -> None:
    """Allocate every byte of ``path`` now: writes through a memory map to a sparse file on a full disk kill the
    process with SIGBUS (a "Bus error", no message)."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(folder, size) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # else a filesystem that cannot reserve: write and hope
            raise
    except AttributeError:  # no posix_fallocate on this system
        return
    finally:
        os.close(fd)


def _no_space(folder: Path, need: int) -> NoSpaceError:
    free = shutil.disk_usage(folder).free
    return NoSpaceError(errno.ENOSPC, f"no space left on {_device(folder)}: need {need / 1e9:.2f} GB in {folder} "
                        f"({free / 1e9:.2f} GB free) for the feature cache; free some space or give --cache-dir on "
                        f"another disk, and run again (the images encoded so far are kept)")


def _device(folder: Path) -> str:
    """The device (or filesystem) holding ``folder``, from /proc/self/mounts where there is one."""
    try:
        mounts = [line.split()[:2] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return "device"
    target = str(folder.resolve())
    held = [(point, dev) for dev, point in mounts if target == point or target.startswith(point.rstrip("/") + "/")]
    return max(held, key=lambda m: len(m[0]))[1] if held else "device"


class FeatureCache:
    """The cache files of one fingerprint: ``<fp>.npy`` [n, views, cells, dim] float16 and ``<fp>.json`` (metadata)."""

    def __init__(self, folder: str | Path, key: str) -> None:
        self.folder, self.key = Path(folder), key
        self.array_path = self.folder / f"{key}.npy"
        self.meta_path = self.folder / f"{key}.json"
        self.partial_path = self.folder / f"{key}.partial.npy"
        self.parts = self.folder / f"{key}.parts"

    def complete(self) -> bool:
        return self.array_path.is_file() and self.meta_path.is_file()

    @contextmanager
    def lock(self, log: Callable[[str], None] = print) -> Iterator[None]:
        """Hold ``<key>.lock`` unless the cache is complete: another job building it is waited for."""
        if self.complete():
            yield
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.folder / f"{self.key}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log(f"feature cache {self.key}: waiting for another job building it (it holds {lock.lock_file})")
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def prepare(self, shape: tuple[int, ...], log: Callable[[str], None] = print) -> None:
        """Start a zero-filled partial array of ``shape``, its disk space reserved, unless a readable one exists
        (rank 0)."""
        if self.partial_path.exists():
            try:
                usable = np.load(self.partial_path, mmap_mode="r").shape == shape
            except (OSError, ValueError) as e:
                usable = False
                log(f"feature cache: {self.partial_path} is damaged ({e}): starting it again")
            if usable:
                reserve(self.partial_path, self.folder)  # one left by a version that did not reserve its space
                return
            self.partial_path.unlink()
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.parts.exists():  # markers of an earlier partial array say nothing about a new one
            shutil.rmtree(self.parts)
        tmp = self.folder / f"{self.key}.partial.tmp.npy"
        try:
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape).flush()
            reserve(tmp, self.folder)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if isinstance(e, NoSpaceError) or e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise _no_space(self.folder, int(np.prod(shape)) * 2) from None
        os.replace(tmp, self.partial_path)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(features memmap [n, views, cells, dim] float16, ok mask [n] bool)."""
        meta = json.loads(self.meta_path.read_text())
        ok = np.ones(meta["n"], dtype=bool)
        ok[meta["unreadable"]] = False
        return np.load(self.array_path, mmap_mode="r"), ok

    def build(self, encode: Callable[[torch.Tensor], torch.Tensor], data: ImageViews, cells: int, dim: int,
              batch_size: int = 32, num_workers: int = 0, rank: int = 0, world_size: int = 1,
              progress: bool = True) -> int:
        """Encode this process's missing chunks into the partial array; returns images encoded."""
        shape = (len(data), data.views, cells, dim)
        if rank == 0:
            self.prepare(shape)
        self.parts.mkdir(exist_ok=True)
        array = np.load(self.partial_path, mmap_mode="r+")
        if array.shape != shape:
            raise RuntimeError(f"{self.partial_path} has shape {array.shape}, expected {shape}: delete it and rerun")
        chunks = [c for c in range(0, len(data), batch_size)[rank::world_size] if not self._done(c, batch_size)]
        indices = [i for c in chunks for i in range(c, min(c + batch_size, len(data)))]
        loader = DataLoader(torch.utils.data.Subset(data, indices), batch_size=batch_size, num_workers=num_workers,
                            pin_memory=torch.cuda.is_available())
        bar = progress_bar(len(indices), "encoding images", "img", enabled=progress and bool(indices))
        for c, (images, ok) in zip(chunks, loader, strict=True):
            n, v = images.shape[:2]
            with torch.inference_mode():
                feats = encode(images.flatten(0, 1)).view(n, v, cells, dim)
            array[c:c + n] = feats.to(torch.float16).cpu().numpy()
            array.flush()
            write_json(self._marker(c, batch_size), [c + int(i) for i in (~ok).nonzero().flatten()])
            bar.update(n)
        bar.close()
        del array
        return len(indices)

    def _marker(self, chunk: int, size: int) -> Path:
        """Marker (listing unreadable rows) of rows chunk .. chunk + size - 1: no other chunking's marker matches."""
        return self.parts / f"{chunk}-{chunk + size}"

    def _done(self, chunk: int, size: int) -> bool:
        return self._marker(chunk, size).is_file()

    def finalize(self, n: int, batch_size: int) -> None:
        """Once every chunk is done: write the metadata, then rename the partial array into place (rank 0)."""
        chunks = range(0, n, batch_size)
        missing = [c for c in chunks if not self._done(c, batch_size)]
        if missing:
            raise RuntimeError(f"feature cache {self.key}: {len(missing)} chunks still missing (a process failed, "
                               f"or --cache-dir is not one folder shared by every node)")
        unreadable = sorted(i for c in chunks for i in json.loads(self._marker(c, batch_size).read_text()))
        write_json(self.meta_path, {"n": n, "unreadable": unreadable, "version": CACHE_VERSION})
        os.replace(self.partial_path, self.array_path)  # the cache is complete from here on
        shutil.rmtree(self.parts)


def _expect_from_rank_0(*paths: Path) -> None:
    """Wait up to SHARED_WAIT_S for one of the files rank 0 has written; none: the folder is not shared."""
    deadline = time.monotonic() + SHARED_WAIT_S
    while not any(p.exists() for p in paths):
        if time.monotonic() > deadline:
            raise RuntimeError(f"feature cache folder {paths[0].parent} is not shared with rank 0: its "
                               f"{paths[0].name} did not appear here within {SHARED_WAIT_S:.0f} s. With --num-nodes "
                               f"> 1 give --cache-dir (or $CAPTIONER_CACHE) on a filesystem every node mounts")
        time.sleep(0.05)


def encode_images(paths: Sequence[Path], backbone: str, weights: str, seed: int, image_size: int, views: int = 1,
                  cache_dir: str | Path | None = None, batch_size: int = 32, num_workers: int = 0,
                  device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1,
                  barrier: Callable[[], None] = lambda: None, log: Callable[[str], None] = print,
                  progress: bool = True, output_stride: int = 32, grid: int = 1,
                  encoder: Encoder | None = None, precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Grid features of ``paths`` from the cache, encoding (this rank's share of) what is missing.

    Returns (float16 memmap [n, views, grid * grid, dim], ok mask [n]); unreadable images are reported and
    masked out. ``encoder`` is the caller's frozen encoder built from the same settings; without it one is built.
    ``precision``: the encoder pass's, "fp32" or "bf16" (precision.resolve), part of the cache's key.
    """
    from captioner.models.encoder import Encoder

    key = fingerprint(backbone, weights, seed, image_size, views, paths, output_stride, grid, precision)
    cache = FeatureCache(cache_dir or default_cache_dir(), key)
    hit = f"feature cache hit: {cache.array_path} ({len(paths)} images x {views} views; no encoder pass)"
    if world_size == 1 and cache.complete():  # the ranks of a distributed run decide together, below
        try:
            loaded = cache.load()
            log(hit)
            return loaded
        except (OSError, ValueError, KeyError, IndexError) as e:  # truncated by a full disk or a copy, say
            log(f"feature cache {cache.array_path} is damaged ({e}): rebuilding it")
            cache.array_path.unlink(missing_ok=True)
            cache.meta_path.unlink(missing_ok=True)
    with cache.lock(log) if rank == 0 else nullcontext():
        barrier()  # the other ranks wait here while rank 0 waits for another job building this cache
        todo = rank == 0 and not cache.complete()
        if todo:
            encoder = encoder or Encoder(backbone, weights, grid, False, seed, output_stride, image_size)
            cache.prepare((len(paths), views, grid * grid, encoder.feature_size), log)
        barrier()  # rank 0's partial array exists
        if rank:
            _expect_from_rank_0(cache.partial_path, cache.array_path)
            todo = not cache.complete()
        if todo:
            encoder = encoder or Encoder(backbone, weights, grid, False, seed, output_stride, image_size)
            cells, dim = grid * grid, encoder.feature_size
            log(f"feature cache: {len(paths)} images x {views} views of {grid}x{grid}x{dim} float16 = "
                f"{len(paths) * views * cells * dim * 2 / 2**20:,.1f} MiB on disk ({views * cells * dim * 2 / 1024:.1f}"
                f" KiB per image), streamed from {cache.folder}")
            start = time.perf_counter()
            with _frozen(encoder, device, precision) as encode:
                n = cache.build(encode, ImageViews(paths, image_size, views, encoder.spec.mean, encoder.spec.std),
                                cells, dim, batch_size, num_workers, rank, world_size, progress)
            seconds = time.perf_counter() - start
            if n:
                log(f"encoded {n} images x {views} views with {backbone} ({precision}) in {seconds:.1f} s "
                    f"({n / seconds:.1f} img/s) into {cache.folder}")
        else:
            log(hit)
        barrier()
        if todo and rank == 0:
            cache.finalize(len(paths), batch_size)
        barrier()
    if rank:
        _expect_from_rank_0(cache.array_path)  # written last
    features, ok = cache.load()
    if not ok.all():
        bad = [str(paths[i]) for i in np.flatnonzero(~ok)[:3]]
        log(f"skipped {int((~ok).sum())} unreadable images, e.g. {', '.join(bad)}")
    return features, ok


@contextmanager
def _frozen(encoder: Encoder, device: str | torch.device,
            precision: str = "fp32") -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """``encoder`` in eval mode on ``device`` as a float32 function of images, run in ``precision``; the caller's
    module keeps its mode."""
    device, was_training = torch.device(device), encoder.training
    encoder = encoder.eval().to(device)

    def encode(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        with autocast(precision, device):
            return encoder(x).float()

    try:
        yield encode
    finally:
        encoder.train(was_training)
