"""The frozen-encoder feature cache: reuse, invalidation, unreadable images, completion of a partial build."""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.features import FeatureCache, ImageViews, encode_images, fingerprint
from captioner.models.encoder import Encoder


@pytest.fixture()
def images(tmp_path):
    paths = []
    for i in range(7):
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        image = Image.new("RGB", (40, 30), (30 * i, 255 - 30 * i, 90))
        image.paste((250, 250, 0), (2, 5, 12 + i, 25))  # something on the left, so a mirror differs
        image.save(path)
        paths.append(path)
    return paths


def encode(paths, cache, size=32, views=1, batch_size=3, **kw):
    messages = []
    feats, ok = encode_images(paths, "resnet18", "none", 0, size, views, cache, batch_size=batch_size,
                              log=messages.append, progress=False, **kw)
    return np.array(feats), ok, " ".join(messages)


def test_cache_is_reused_and_rebuilt_when_the_input_changes(images, tmp_path) -> None:
    feats, ok, log = encode(images, tmp_path / "c")
    assert feats.shape == (7, 1, 1, 512) and feats.dtype == np.float16 and ok.all()
    assert "encoded 7 images" in log
    again, _, log = encode(images, tmp_path / "c")
    assert "cache hit" in log and np.array_equal(feats, again)
    _, _, log = encode(images, tmp_path / "c", size=48)
    assert "encoded 7 images" in log
    _, _, log = encode(images[:5], tmp_path / "c")
    assert "encoded 5 images" in log
    assert len(list((tmp_path / "c").glob("*.npy"))) == 3


def test_views_are_plain_then_mirrored(images, tmp_path) -> None:
    feats, _, _ = encode(images, tmp_path / "c", views=2)
    plain, _, _ = encode(images, tmp_path / "c2")
    assert np.allclose(feats[:, 0], plain[:, 0], rtol=1e-2, atol=1e-2)
    assert not np.allclose(feats[:, 0], feats[:, 1], rtol=1e-2, atol=1e-2)
    views = ImageViews(images, 32, views=2)[3][0]
    assert np.array_equal(views[1].numpy(), views[0].flip(-1).numpy())


def test_unreadable_image_is_reported_and_masked(images, tmp_path) -> None:
    images[2].write_bytes(b"not an image")
    feats, ok, log = encode(images, tmp_path / "c")
    assert ok.tolist() == [True, True, False, True, True, True, True]
    assert "skipped 1 unreadable" in log and "2.png" in log


def test_partial_build_is_completed_not_trusted(images, tmp_path) -> None:
    clean, _, _ = encode(images, tmp_path / "clean")
    key = fingerprint("resnet18", "none", 0, 32, 1, images)
    cache = FeatureCache(tmp_path / "c", key)
    encoder = Encoder("resnet18", "none", grid=1).eval()
    data = ImageViews(images, 32)
    done = cache.build(encoder, data, 1, encoder.feature_size, batch_size=3, rank=0, world_size=2, progress=False)
    assert done == 4 and not cache.complete()  # chunks 0 and 6 of 0/3/6: as if rank 1 had been killed
    feats, ok, log = encode(images, tmp_path / "c")
    assert "encoded 3 images" in log
    assert feats.tobytes() == clean.tobytes()


def test_an_image_rewritten_in_place_rebuilds_the_cache(images, tmp_path) -> None:
    before, _, _ = encode(images, tmp_path / "c")
    Image.new("RGB", (40, 30), (0, 0, 0)).save(images[4])  # new pixels at the same path, as a regenerated data set
    after, _, log = encode(images, tmp_path / "c")
    assert "encoded 7 images" in log and not np.array_equal(after[4], before[4])
    fresh, _, _ = encode(images, tmp_path / "fresh")
    assert after.tobytes() == fresh.tobytes()


def _half_build(images, cache: FeatureCache, batch_size: int = 3) -> None:
    """Encode chunks 0 and 6 of 0/3/6 (batch size 3) as rank 0 of 2, as if rank 1 had been killed."""
    encoder = Encoder("resnet18", "none", grid=1).eval()
    cache.build(encoder, ImageViews(images, 32), 1, encoder.feature_size, batch_size, rank=0, world_size=2,
                progress=False)


def test_markers_of_another_chunk_size_are_not_misread(images, tmp_path) -> None:
    clean, _, _ = encode(images, tmp_path / "clean", batch_size=4)
    cache = FeatureCache(tmp_path / "c", fingerprint("resnet18", "none", 0, 32, 1, images))
    _half_build(images, cache)
    feats, _, log = encode(images, cache.folder, batch_size=4)  # chunks 0-3 and 4-6: neither was done
    assert "encoded 7 images" in log and feats.tobytes() == clean.tobytes()


def test_markers_without_their_partial_array_are_not_trusted(images, tmp_path) -> None:
    clean, _, _ = encode(images, tmp_path / "clean")
    cache = FeatureCache(tmp_path / "c", fingerprint("resnet18", "none", 0, 32, 1, images))
    _half_build(images, cache)
    cache.partial_path.unlink()  # a new, zero-filled partial array must not inherit the old markers
    feats, _, log = encode(images, cache.folder)
    assert "encoded 7 images" in log and feats.tobytes() == clean.tobytes()


class Killed(BaseException):
    """A simulated SIGKILL at one line."""


@pytest.mark.parametrize("killed_after", ["array", "metadata"])
def test_a_kill_while_finalising_is_completed_to_the_same_bytes(images, tmp_path, monkeypatch, killed_after) -> None:
    clean, _, _ = encode(images, tmp_path / "clean")
    cache = FeatureCache(tmp_path / "c", fingerprint("resnet18", "none", 0, 32, 1, images))
    target = {"array": cache.array_path, "metadata": cache.meta_path}[killed_after]
    replace = os.replace

    def replace_then_die(src, dst) -> None:
        replace(src, dst)
        if Path(dst) == target:
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", replace_then_die)
        with pytest.raises(Killed):
            encode(images, cache.folder)
    feats, ok, _ = encode(images, cache.folder)
    assert ok.all() and feats.tobytes() == clean.tobytes()
    assert cache.meta_path.read_text() == (tmp_path / "clean" / cache.meta_path.name).read_text()


def _encode_then_die_writing_a_marker(images, cache: FeatureCache) -> None:
    """Child process: encode the first chunk, then die halfway through writing its marker, as SIGKILL would."""
    torch.set_num_threads(1)
    write_text = Path.write_text

    def die_halfway(path: Path, text: str, *args, **kwargs) -> None:
        write_text(path, text[:len(text) // 2], *args, **kwargs)
        os._exit(9)

    Path.write_text = die_halfway
    cache.build(lambda x: x.new_zeros(len(x), 1, 512), ImageViews(images, 32), 1, 512, batch_size=3, progress=False)


def test_a_kill_while_writing_a_marker_leaves_that_chunk_to_do(images, tmp_path) -> None:
    clean, _, _ = encode(images, tmp_path / "clean")
    cache = FeatureCache(tmp_path / "c", fingerprint("resnet18", "none", 0, 32, 1, images))
    child = multiprocessing.get_context("fork").Process(target=_encode_then_die_writing_a_marker,
                                                        args=(images, cache))
    child.start()
    child.join(120)
    assert child.exitcode == 9 and cache.partial_path.is_file()
    feats, _, log = encode(images, cache.folder)
    assert "encoded 7 images" in log and feats.tobytes() == clean.tobytes()


class SlowEncoder(Encoder):
    """A seeded random ResNet-18 that takes 0.1 s more a batch, so two builds overlap."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.1)
        return super().forward(x)


def test_two_jobs_building_one_cache_take_turns(images, tmp_path) -> None:
    clean, _, _ = encode(images, tmp_path / "clean", batch_size=1)

    def job(delay: float, encoder: Encoder) -> tuple[np.ndarray, np.ndarray, str]:
        time.sleep(delay)
        return encode(images, tmp_path / "c", batch_size=1, encoder=encoder)

    encoders = [SlowEncoder("resnet18", "none", grid=1) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:  # 7 chunks of > 0.1 s: the second job starts while the first encodes
        first, second = [f.result() for f in [pool.submit(job, 0.0, encoders[0]), pool.submit(job, 0.3, encoders[1])]]
    assert "encoded 7 images" in first[2]
    assert "waiting for another job" in second[2] and "cache hit" in second[2] and "encoded" not in second[2]
    assert first[0].tobytes() == second[0].tobytes() == clean.tobytes()
    assert [p.name for p in (tmp_path / "c").iterdir() if "parts" in p.name or "partial" in p.name] == []


def test_a_node_local_cache_folder_is_named_at_once(images, tmp_path, monkeypatch) -> None:
    import captioner.features as features

    monkeypatch.setattr(features, "SHARED_WAIT_S", 0.5, raising=False)
    errors: list[BaseException] = []

    def rank_1() -> None:  # of 2: rank 0 runs on another node, whose files never reach this folder
        try:
            encode(images, tmp_path / "local", rank=1, world_size=2)
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=rank_1, daemon=True)
    worker.start()
    worker.join(15)
    assert not worker.is_alive(), "rank 1 still waits for rank 0's file (600 s)"
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError), errors
    assert f"{tmp_path / 'local'} is not shared" in str(errors[0]) and "--cache-dir" in str(errors[0])
