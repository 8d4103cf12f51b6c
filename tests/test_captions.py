"""Training pairs: caption ids (plain and mirrored, flat-stored), cached-feature views, and image pairs with flips."""
from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.data.batching import LengthBucketSampler, pad_collate
from captioner.data.captions import CachedCaptions, CaptionIds, ImageCaptions, float_tensor
from captioner.data.datasets import ImageRecord
from captioner.data.vocab import END, PAD, START, Vocabulary

CAPTIONS = [
    ("A dog on the left of a cat.", "A dog and a cat."),
    ("The rightmost cat sleeps.",),
    ("A cat to the right of a dog.", "Two cats.", "A dog left of the leftmost cat."),
]
DIM = 6


@pytest.fixture
def records(tmp_path: Path) -> list[ImageRecord]:
    out = []
    for i, caps in enumerate(CAPTIONS):
        path = tmp_path / f"{i}.png"
        image = Image.new("RGB", (40, 40), "black")
        image.paste((255, 255, 255), (20, 0, 40, 40))  # right half white: a flip is visible
        image.save(path)
        out.append(ImageRecord(100 + i, path, caps, "train"))
    return out


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary.build([c for caps in CAPTIONS for c in caps], threshold=1)


def _words(vocab: Vocabulary, ids: torch.Tensor) -> list[str]:
    return [vocab.itos[i] for i in ids.tolist()]


def test_caption_ids_plain_and_mirrored(records: list[ImageRecord], vocab: Vocabulary) -> None:
    ids = CaptionIds(records, vocab)
    assert len(ids) == 6 and ids.image == [0, 0, 1, 2, 2, 2]
    assert ids.lengths == [len(p) for p in ids.plain] == [10, 7, 6, 10, 4, 9]
    assert _words(vocab, ids.plain[0]) == ["<start>", "a", "dog", "on", "the", "left", "of", "a", "cat", "<end>"]
    assert _words(vocab, ids.mirrored[0]) == ["<start>", "a", "dog", "on", "the", "right", "of", "a", "cat", "<end>"]
    assert _words(vocab, ids.mirrored[2])[2] == "leftmost"
    assert vocab.decode(ids.mirrored[5]) == "a dog right of the rightmost cat"
    assert torch.equal(ids.plain[1], ids.mirrored[1]) and torch.equal(ids.plain[4], ids.mirrored[4])  # no sides
    assert all(p[0] == START and p[-1] == END and p.dtype == torch.int64 for p in ids.plain)


def test_caption_ids_keep_mask_drops_records(records: list[ImageRecord], vocab: Vocabulary) -> None:
    ids = CaptionIds(records, vocab, keep=np.array([True, False, True]))
    assert ids.image == [0, 0, 2, 2, 2]  # still indices into the records (and the feature rows)
    assert vocab.decode(ids.plain[2]) == "a cat to the right of a dog"
    assert len(CaptionIds(records, vocab, keep=np.zeros(3, dtype=bool))) == 0


def test_caption_ids_index_like_lists_of_tensors(records: list[ImageRecord], vocab: Vocabulary) -> None:
    ids = CaptionIds(records, vocab)
    assert len(ids.plain) == len(ids.mirrored) == 6 and [len(p) for p in ids.plain] == ids.lengths
    assert torch.equal(ids.plain[-1], ids.plain[5]) and ids.mirrored[-6].tolist() == ids.mirrored[0].tolist()
    with pytest.raises(IndexError):
        ids.plain[6]


def _features(n: int, views: int) -> np.ndarray:
    """float16 [n, views, DIM]: column 0 is the view number, column 1 the record row."""
    features = np.zeros((n, views, DIM), dtype=np.float16)
    features[:, :, 0] = np.arange(views)[None, :]
    features[:, :, 1] = np.arange(n)[:, None]
    return features


def test_cached_captions_pair_mirrored_views_with_mirrored_captions(records: list[ImageRecord],
                                                                    vocab: Vocabulary) -> None:
    captions = CaptionIds(records, vocab)
    data = CachedCaptions(_features(3, 2), captions, seed=1)
    indices = list(range(len(captions)))
    seen_views = set()
    for epoch in range(4):
        data.set_epoch(epoch)
        feats, padded, lengths = data.__getitems__(indices)
        assert feats.dtype == torch.float32 and feats.shape == (6, DIM)
        assert padded.shape == (6, max(captions.lengths)) and lengths.tolist() == captions.lengths
        for k, i in enumerate(indices):
            view = int(feats[k, 0])
            seen_views.add(view)
            assert int(feats[k, 1]) == captions.image[i]  # the caption's own image
            expected = captions.mirrored[i] if view == 1 else captions.plain[i]
            assert padded[k, :lengths[k]].tolist() == expected.tolist()
            assert (padded[k, lengths[k]:] == PAD).all()
    assert seen_views == {0, 1}


def test_cached_captions_views_follow_seed_and_epoch(records: list[ImageRecord], vocab: Vocabulary) -> None:
    captions = CaptionIds(records * 10, vocab)
    data = CachedCaptions(_features(30, 4), captions, seed=5)
    data.set_epoch(3)
    views = data.view.clone()
    assert set(views.tolist()) == {0, 1, 2, 3}
    data.set_epoch(4)
    assert not torch.equal(data.view, views)
    data.set_epoch(3)
    assert torch.equal(data.view, views)
    other = CachedCaptions(_features(30, 4), captions, seed=5)
    other.set_epoch(3)
    assert torch.equal(other.view, views)
    feats, padded, _ = data.__getitems__([0, 5, 7])
    for k, i in enumerate([0, 5, 7]):  # view 2 is an unmirrored crop, 3 a mirrored one
        expected = captions.mirrored[i] if int(feats[k, 0]) % 2 else captions.plain[i]
        assert padded[k, :len(expected)].tolist() == expected.tolist()
    fixed = CachedCaptions(_features(30, 4), captions, random_view=False)
    assert (fixed.view == 0).all()


def test_cached_captions_with_the_bucket_sampler(records: list[ImageRecord], vocab: Vocabulary) -> None:
    captions = CaptionIds(records * 4, vocab)
    data = CachedCaptions(_features(12, 2), captions)
    loader = torch.utils.data.DataLoader(data, batch_sampler=LengthBucketSampler(captions.lengths, 3),
                                         collate_fn=lambda batch: batch)
    total = 0
    for feats, padded, lengths in loader:
        assert feats.shape == (len(lengths), DIM) and (lengths == lengths[0]).all()
        assert padded.shape == (len(lengths), int(lengths[0]))
        total += len(lengths)
    assert total == len(captions) == 24
    assert len(data[2][2]) == 1 and data[2][2].item() == captions.lengths[2]


def test_cached_captions_read_a_memmap_like_an_array(records: list[ImageRecord], vocab: Vocabulary,
                                                    tmp_path: Path) -> None:
    captions = CaptionIds(records * 4, vocab)
    features = np.random.default_rng(0).standard_normal((12, 3, 2, DIM)).astype(np.float16)
    np.save(tmp_path / "cache.npy", features)
    mapped = np.load(tmp_path / "cache.npy", mmap_mode="r")
    indices = [5, 0, 23, 11, 11]
    expected = CachedCaptions(features, captions, seed=2).__getitems__(indices)
    for source in (mapped, mapped[:12]):  # the file read, and a sliced memmap (read through the mapping)
        got = CachedCaptions(source, captions, seed=2).__getitems__(indices)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert not np.array_equal(expected[0][0], expected[0][1])


def test_image_captions_flip_images_with_their_captions(records: list[ImageRecord], vocab: Vocabulary) -> None:
    captions = CaptionIds(records, vocab)
    data = ImageCaptions(records, captions, image_size=32)
    torch.manual_seed(0)
    flipped = 0
    for _ in range(4):
        for i in range(len(data)):
            image, ids = data[i]
            assert image.shape == (3, 32, 32)
            mirrored = image[:, :, :16].mean() > image[:, :, 16:].mean()  # the white half moved to the left
            assert ids.tolist() == (captions.mirrored[i] if mirrored else captions.plain[i]).tolist()
            flipped += bool(mirrored)
    assert 0 < flipped < 24
    steady = ImageCaptions(records, captions, image_size=32, augment=False)
    for i in range(len(steady)):
        image, ids = steady[i]
        assert image[:, :, :16].mean() < image[:, :, 16:].mean() and torch.equal(ids, captions.plain[i])


def test_truncated_jpeg_is_skipped_and_named_once_while_batches_go_on(records: list[ImageRecord], vocab: Vocabulary,
                                                                      tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert Image.open(cut).size == (64, 64)  # the header reads fine: the data set check lets it through
    records = [*records[:2], replace(records[2], path=cut)]  # its captions: lengths 10 (shared with 0), 4 and 9
    captions = CaptionIds(records, vocab)
    data = ImageCaptions(records, captions, image_size=32)
    sampler = LengthBucketSampler(captions.lengths, 4)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=pad_collate)
    with pytest.warns(UserWarning, match=r"unreadable image .*cut\.jpg") as caught:
        for epoch in range(2):
            sampler.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == 5 and batches.count(None) == 2  # the lengths 4 and 9 batches held only cut.jpg
            kept = [b for b in batches if b is not None]
            for images, padded, lengths in kept:
                assert images.shape == (len(lengths), 3, 32, 32) and padded.shape[0] == len(lengths)
            assert sorted(int(n) for _, _, lengths in kept for n in lengths) == [6, 7, 10]  # the readable ones
    assert sum("cut.jpg" in str(w.message) for w in caught) == 1
    assert data.unreadable == {cut}


def test_float_tensor_is_numpys_float32_of_any_cache_array(tmp_path, recwarn) -> None:
    """Every float16 (subnormals, infinities, NaN included), from a read-only memmap view or a copy, converts exactly
    as numpy does, without torch's warning about a non-writable array."""
    values = np.arange(2**16, dtype=np.uint16).view(np.float16).reshape(256, 16, 16)
    np.save(tmp_path / "f.npy", values)
    cache = np.load(tmp_path / "f.npy", mmap_mode="r")
    for array in (cache[:7, 0], cache[[3, 1, 200]], values):
        got, want = float_tensor(array), np.asarray(array, dtype=np.float32)
        assert got.dtype == torch.float32 and np.array_equal(got.numpy(), want, equal_nan=True)
    assert not [w for w in recwarn if "not writable" in str(w.message)]
