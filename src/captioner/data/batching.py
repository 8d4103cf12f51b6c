"""Batching captions: a length-bucketed, shardable batch sampler and a padding collate for packed sequences."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from captioner.data.vocab import PAD


class LengthBucketSampler(Sampler[list[int]]):
    """Batches whose captions all share one length; every index exactly once per epoch, shuffled by seed.

    With ``world_size > 1`` each rank gets a disjoint share of the batches, the same number on every rank
    (batches are split in two where needed, never repeated or dropped), as DDP requires.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if len(lengths) < world_size:
            raise ValueError(f"{len(lengths)} captions cannot be shared among {world_size} processes")
        self.lengths, self.batch_size, self.shuffle, self.seed = list(lengths), batch_size, shuffle, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, n in enumerate(self.lengths):
            buckets[n].append(i)
        batches = []
        for n in sorted(buckets):
            idx = buckets[n]
            if self.shuffle:
                idx = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
            batches += [idx[k:k + self.batch_size] for k in range(0, len(idx), self.batch_size)]
        while len(batches) % self.world_size:  # split the largest batch until every rank gets as many
            big = max(range(len(batches)), key=lambda k: len(batches[k]))
            half = len(batches[big]) // 2
            if half == 0:
                raise ValueError(f"{len(batches)} single-caption batches cannot be shared evenly among "
                                 f"{self.world_size} processes: use a larger batch size")
            batches[big:big + 1] = [batches[big][:half], batches[big][half:]]
        if self.shuffle:
            batches = [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._all_batches()[self.rank::self.world_size])

    def __len__(self) -> int:
        return len(self._all_batches()) // self.world_size


def pad(ids: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption id tensors -> [B, T] padded with <pad>, and their lengths (for pack_padded_sequence)."""
    lengths = torch.tensor([len(x) for x in ids])
    return torch.nn.utils.rnn.pad_sequence(list(ids), batch_first=True, padding_value=PAD), lengths


def pad_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor] | None]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(image or feature, caption ids) pairs -> stacked inputs, padded captions, caption lengths.

    Items that failed to load (None) are dropped; a batch with nothing left is None (the training step skips it).
    """
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return torch.stack([b[0] for b in batch]), *pad([b[1] for b in batch])
