"""The length-bucket batch sampler (one length per batch, each caption once, even shards) and padding."""
from __future__ import annotations

import math
import random

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from captioner.data.batching import LengthBucketSampler, pad, pad_collate
from captioner.data.vocab import PAD

SEEDS = range(60)


def _lengths(rng: random.Random, n: int) -> list[int]:
    return [rng.randint(3, 3 + rng.randint(0, 12)) for _ in range(n)]


def _check_batches(batches: list[list[int]], lengths: list[int], batch_size: int) -> None:
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        assert len({lengths[i] for i in batch}) == 1, "a batch mixes caption lengths"


def _shareable(lengths: list[int], batch_size: int, world_size: int) -> bool:
    """Whether an even share exists: some multiple of world_size between the bucket batch count and n."""
    batches = sum(math.ceil(c / batch_size) for c in {n: lengths.count(n) for n in lengths}.values())
    return any(k % world_size == 0 for k in range(batches, len(lengths) + 1))


def test_one_length_per_batch_and_every_caption_once() -> None:
    for seed in SEEDS:
        rng = random.Random(seed)
        lengths, batch_size = _lengths(rng, rng.randint(1, 300)), rng.randint(1, 40)
        sampler = LengthBucketSampler(lengths, batch_size, seed=seed)
        for epoch in range(2):
            sampler.set_epoch(epoch)
            batches = list(sampler)
            _check_batches(batches, lengths, batch_size)
            assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
            assert len(sampler) == len(batches)


def test_order_depends_on_seed_and_epoch_only() -> None:
    lengths = _lengths(random.Random(1), 500)
    sampler = LengthBucketSampler(lengths, 16, seed=7)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    assert sorted(map(sorted, epoch1)) != sorted(map(sorted, epoch0))  # batch contents change, not just order
    again = LengthBucketSampler(lengths, 16, seed=7)
    again.set_epoch(1)
    assert list(again) == epoch1 and list(again) == epoch1
    assert list(LengthBucketSampler(lengths, 16, seed=8)) != epoch0


def test_without_shuffle_batches_are_fixed_and_sorted() -> None:
    lengths = [5, 3, 5, 4, 3, 5, 3]
    sampler = LengthBucketSampler(lengths, 2, shuffle=False, seed=3)
    expected = [[1, 4], [6], [3], [0, 2], [5]]
    assert list(sampler) == expected
    sampler.set_epoch(5)
    assert list(sampler) == expected
    assert list(LengthBucketSampler(lengths, 2, shuffle=False, seed=99)) == expected


def _shards(lengths: list[int], batch_size: int, world_size: int, epoch: int = 0,
            shuffle: bool = True) -> list[list[list[int]]]:
    shards = []
    for rank in range(world_size):
        sampler = LengthBucketSampler(lengths, batch_size, shuffle, seed=11, rank=rank, world_size=world_size)
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(sampler) == len(batches)
        shards.append(batches)
    return shards


def _check_shards(shards: list[list[list[int]]], lengths: list[int], batch_size: int) -> None:
    assert len({len(s) for s in shards}) == 1, "ranks get different numbers of batches"
    every = [i for shard in shards for batch in shard for i in batch]
    assert sorted(every) == list(range(len(lengths)))  # disjoint (no index twice) and complete
    for shard in shards:
        _check_batches(shard, lengths, batch_size)


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_are_disjoint_complete_and_even(world_size: int) -> None:
    checked = 0
    for seed in SEEDS:
        rng = random.Random(seed)
        lengths, batch_size = _lengths(rng, rng.randint(world_size, 120)), rng.randint(1, 12)
        if not _shareable(lengths, batch_size, world_size):
            with pytest.raises(ValueError, match="cannot be shared evenly"):
                list(LengthBucketSampler(lengths, batch_size, rank=0, world_size=world_size))
            continue
        for epoch in range(2):
            _check_shards(_shards(lengths, batch_size, world_size, epoch), lengths, batch_size)
        _check_shards(_shards(lengths, batch_size, world_size, shuffle=False), lengths, batch_size)
        checked += 1
    assert checked >= 50


def test_uneven_buckets_are_split_not_dropped_or_repeated() -> None:
    lengths = [7] * 5 + [9]  # buckets of 5 and 1 with batch size 8: two batches
    for world_size, sizes in ((3, [1, 2, 3]), (4, [1, 1, 2, 2]), (6, [1] * 6)):
        shards = _shards(lengths, 8, world_size)
        _check_shards(shards, lengths, 8)
        assert [len(s) for s in shards] == [1] * world_size
        assert sorted(len(b) for s in shards for b in s) == sizes
    shards = _shards([4] * 10, 4, 2)  # batches of 4, 4, 2 -> the 4 is halved: 4 batches
    assert sorted(len(b) for s in shards for b in s) == [2, 2, 2, 4]


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="rank 2 outside world size 2"):
        LengthBucketSampler([3] * 10, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="rank -1"):
        LengthBucketSampler([3] * 10, 4, rank=-1, world_size=2)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="batch size must be >= 1"):
            LengthBucketSampler([3] * 10, bad)
    with pytest.raises(ValueError, match="2 captions cannot be shared among 3 processes"):
        LengthBucketSampler([3, 4], 4, rank=0, world_size=3)
    with pytest.raises(ValueError, match="use a larger batch size"):  # 5 single-caption batches for 2 ranks
        len(LengthBucketSampler([3] * 5, 1, rank=1, world_size=2))


def test_works_as_a_dataloader_batch_sampler() -> None:
    lengths = _lengths(random.Random(4), 50)
    data = [torch.full((n,), i) for i, n in enumerate(lengths)]
    loader = torch.utils.data.DataLoader(data, batch_sampler=LengthBucketSampler(lengths, 8), collate_fn=pad)
    seen = []
    for ids, batch_lengths in loader:
        assert ids.shape == (len(batch_lengths), int(batch_lengths[0]))
        assert (batch_lengths == batch_lengths[0]).all()
        seen += ids[:, 0].tolist()
    assert sorted(seen) == list(range(50))


def test_pad_and_pad_collate() -> None:
    ids = [torch.tensor([1, 5, 6, 2]), torch.tensor([1, 7, 2]), torch.tensor([1, 8, 9, 10, 11, 2])]
    padded, lengths = pad(ids)
    assert padded.shape == (3, 6) and lengths.tolist() == [4, 3, 6]
    assert padded[1].tolist() == [1, 7, 2, PAD, PAD, PAD] and PAD == 0
    for row, original in zip(padded, ids, strict=True):
        assert row[:len(original)].tolist() == original.tolist() and (row[len(original):] == 0).all()

    features = [torch.full((5,), float(k)) for k in range(3)]
    stacked, padded2, lengths2 = pad_collate(list(zip(features, ids, strict=True)))
    assert stacked.shape == (3, 5) and stacked[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert torch.equal(padded2, padded) and torch.equal(lengths2, lengths)

    embedded = torch.nn.Embedding(12, 4, padding_idx=PAD)(padded)
    packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
    assert packed.data.shape == (13, 4)  # only real tokens
    unpacked, back = pad_packed_sequence(packed, batch_first=True)
    assert back.tolist() == [4, 3, 6] and torch.equal(unpacked, embedded)
