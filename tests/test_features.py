"""The frozen-encoder feature cache: reuse, invalidation, unreadable images, completion of a partial build."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from captioner.features import FeatureCache, ImageViews, encode_images, fingerprint
from captioner.models.encoder import build_backbone


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


def encode(paths, cache, size=32, views=1, **kw):
    messages = []
    feats, ok = encode_images(paths, "resnet18", "none", 0, size, views, cache, batch_size=3, log=messages.append,
                              progress=False, **kw)
    return np.array(feats), ok, " ".join(messages)


def test_cache_is_reused_and_rebuilt_when_the_input_changes(images, tmp_path) -> None:
    feats, ok, log = encode(images, tmp_path / "c")
    assert feats.shape == (7, 1, 512) and feats.dtype == np.float16 and ok.all()
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
    trunk, dim = build_backbone("resnet18", "none", 0)
    data = ImageViews(images, 32)
    done = cache.build(lambda x: trunk.eval()(x), data, dim, batch_size=3, rank=0, world_size=2, progress=False)
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
