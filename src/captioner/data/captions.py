"""Training pairs (image, caption ids): from cached encoder features or from image files."""
from __future__ import annotations

import mmap
import warnings
from array import array
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from captioner.data.batching import pad
from captioner.data.datasets import ImageRecord
from captioner.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    flip,
    load_rgb,
    swap_left_right,
    train_transform,
)
from captioner.data.vocab import Vocabulary


class Ragged(Sequence[torch.Tensor]):
    """Variable-length id sequences kept in one flat int32 array with offsets; item ``i`` is an int64 tensor."""

    def __init__(self, values: array, offsets: np.ndarray) -> None:
        self.values, self.offsets = np.array(values, dtype=np.int32), offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> torch.Tensor:
        i = range(len(self))[index]  # negative indices count from the end; out of range raises IndexError
        return torch.from_numpy(self.values[self.offsets[i]:self.offsets[i + 1]].astype(np.int64))


class CaptionIds:
    """Every caption of a record list as word ids, plain and with left/right swapped (for mirrored images).

    Ids live in two flat arrays (``Ragged``), not two tensors per caption (~1.5 kB each): COCO's 616k captions take
    ~85 MB.
    """

    def __init__(self, records: Sequence[ImageRecord], vocab: Vocabulary, keep: np.ndarray | None = None,
                 max_words: int = 0) -> None:
        """``max_words`` > 0: a caption longer than that keeps its first ``max_words`` words and no <end> (as a search
        cuts one at max_len); ``cut`` counts them."""
        self.image, self.lengths, self.cut = [], [], 0
        plain, mirrored = array("i"), array("i")
        for i, record in enumerate(records):
            if keep is not None and not keep[i]:
                continue
            for caption in record.captions:
                tokens = vocab.tokenizer.split(caption)
                long = 0 < max_words < len(tokens)
                tokens = tokens[:max_words] if long else tokens
                ids, flipped = vocab.encode(tokens), vocab.encode(swap_left_right(tokens))
                if long:  # no <end>
                    ids, flipped, self.cut = ids[:-1], flipped[:-1], self.cut + 1
                self.image.append(i)
                self.lengths.append(len(ids))
                plain.extend(ids)
                mirrored.extend(flipped)
        offsets = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])
        self.plain, self.mirrored = Ragged(plain, offsets), Ragged(mirrored, offsets)

    def __len__(self) -> int:
        return len(self.lengths)


def gather_views(features: np.ndarray, rows: Sequence[int], views: Sequence[int]) -> np.ndarray:
    """``features[rows, views]``. A cache memmap is read with positioned file reads rather than through its mapping,
    so the pages read are not kept in the process's RSS: a training epoch streams the cache instead of loading it."""
    if not (isinstance(features, np.memmap) and isinstance(features.base, mmap.mmap) and features.flags.c_contiguous):
        return features[rows, views]
    out = np.empty((len(rows), *features.shape[2:]), dtype=features.dtype)
    with open(features.filename, "rb", buffering=0) as f:
        for k, (row, view) in enumerate(zip(rows, views, strict=True)):
            f.seek(features.offset + row * features.strides[0] + view * features.strides[1])
            if f.readinto(out[k]) != out[k].nbytes:
                raise OSError(f"feature cache {features.filename} ends before row {row}: rebuild it")
    return out


def float_tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 tensor of a (float16 cache) array. Torch converts ~10x faster than numpy: numpy's conversion of a
    batch of 32 x 49 x 1280 took 6 ms of a ~60 ms training step."""
    return torch.from_numpy(array if array.flags.writeable else np.array(array)).float()


class CachedCaptions(Dataset):
    """(pooled feature, caption ids) pairs from a feature cache; each epoch draws one cached view per caption.

    Fetching is batched (``__getitems__``) and returns the collated batch: features, padded ids, lengths.
    """

    def __init__(self, features: np.ndarray, captions: CaptionIds, seed: int = 0, random_view: bool = True) -> None:
        self.features, self.captions, self.seed, self.random_view = features, captions, seed, random_view
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Views are drawn from (seed, epoch) alone, so a resumed run sees the same data as an unbroken one."""
        views = self.features.shape[1] if self.random_view else 1
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        self.view = torch.randint(views, (len(self.captions),), generator=g)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = [self.captions.image[i] for i in indices]
        views = self.view[list(indices)].tolist()
        feats = float_tensor(gather_views(self.features, rows, views))
        ids = [(self.captions.mirrored if v % 2 else self.captions.plain)[i]
               for i, v in zip(indices, views, strict=True)]
        return feats, *pad(ids)

    def __getitem__(self, index: int):
        return self.__getitems__([index])


class ImageCaptions(Dataset):
    """(image, caption ids) pairs read from files, for fine-tuning: ``augment`` gives random crops and flips (a flip
    swaps left/right), else the eval transform (validation).

    An image that fails to decode (e.g. truncated after a valid header) gives None, which pad_collate drops;
    each such file is warned about once and kept in ``unreadable``.
    """

    def __init__(self, records: Sequence[ImageRecord], captions: CaptionIds, image_size: int, augment: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.records, self.captions, self.augment = records, captions, augment
        self.transform = (train_transform if augment else eval_transform)(image_size, mean, std)
        self.unreadable: set[Path] = set()

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        path = self.records[self.captions.image[index]].path
        if path in self.unreadable:
            return None
        try:
            image = self.transform(load_rgb(path))
        except OSError as e:  # load_rgb's message names the file
            self.unreadable.add(path)
            warnings.warn(f"skipping an unreadable image ({len(self.unreadable)} so far): {e}", stacklevel=2)
            return None
        if self.augment and torch.rand(()) < 0.5:
            return flip(image), self.captions.mirrored[index]
        return image, self.captions.plain[index]



class CachedImages(Dataset):
    """(grid features, image index) of the usable images of a feature cache, view 0: self-critical training."""

    def __init__(self, features: np.ndarray, keep: np.ndarray) -> None:
        self.features, self.rows = features, np.flatnonzero(keep)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows[list(indices)]
        return float_tensor(self.features[rows, 0]), torch.from_numpy(rows)

    def __getitem__(self, index: int):
        return self.__getitems__([index])
