"""The Lightning data module: (feature or image, caption) pairs, or images alone for self-critical training."""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from captioner.data.batching import LengthBucketSampler, pad_collate
from captioner.data.captions import CachedCaptions, CachedImages, CaptionIds, ImageCaptions, float_tensor
from captioner.data.datasets import ImageRecord
from captioner.data.vocab import Vocabulary
from captioner.features import ImageViews, encode_images
from captioner.models.captioner import ModelConfig
from captioner.training.config import TrainConfig

CUT_PERCENTILE = 99.9  # of the training captions' lengths in words: the default --train-max-len


class CaptionData(L.LightningDataModule):
    """Train/val pairs; with a frozen encoder they come from the feature cache (each rank encodes its share)."""

    def __init__(self, cfg: TrainConfig, model: ModelConfig, train: list[ImageRecord], val: list[ImageRecord],
                 vocab: Vocabulary, precision: str = "fp32") -> None:
        super().__init__()
        self.cfg, self.model_cfg, self.train_records, self.val_records, self.vocab = cfg, model, train, val, vocab
        self.precision = precision  # the encoder pass's (precision.resolve)
        self.eval_records = val[:cfg.val_images]

    def _features(self, records: list[ImageRecord], views: int) -> tuple[np.ndarray, np.ndarray]:
        trainer, m = self.trainer, self.model_cfg
        return encode_images([r.path for r in records], m.backbone, m.encoder_weights, m.seed, m.image_size, views,
                             self.cfg.cache_dir, self.cfg.encode_batch_size, self.cfg.num_workers,
                             trainer.strategy.root_device, trainer.global_rank, trainer.world_size,
                             trainer.strategy.barrier, log=_say(trainer), progress=self.cfg.progress,
                             output_stride=m.output_stride, grid=m.grid,
                             encoder=trainer.lightning_module.model.encoder, precision=self.precision)

    def setup(self, stage: str) -> None:
        if self.model_cfg.fine_tune:
            spec = self.trainer.lightning_module.model.encoder.spec
            if self.cfg.scst:  # self-critical from pixels: each training image once, as it is captioned
                self.train_set = SampledImages(ImageViews([r.path for r in self.train_records],
                                                          self.model_cfg.image_size, 1, spec.mean, spec.std))
            else:
                self.train_set = ImageCaptions(self.train_records, self._train_ids(), self.model_cfg.image_size,
                                               mean=spec.mean, std=spec.std)
            self.val_set = ImageCaptions(self.val_records, CaptionIds(self.val_records, self.vocab),
                                         self.model_cfg.image_size, augment=False, mean=spec.mean, std=spec.std)
            views = ImageViews([r.path for r in self.eval_records], self.model_cfg.image_size, 1, spec.mean, spec.std)
            loaded = [(record, *views[i]) for i, record in enumerate(self.eval_records)]
            self.eval_inputs = torch.stack([image[0] for _, image, good in loaded if good])
            self.eval_records = [record for record, _, good in loaded if good]
            return
        train_feats, ok = self._features(self.train_records, self.cfg.cache_views)
        if self.cfg.scst:  # self-critical: batches of images, each sampled n times and scored against its refs
            self.train_set = CachedImages(train_feats, ok)
        else:
            self.train_set = CachedCaptions(train_feats, self._train_ids(ok), self.cfg.seed)
        val_feats, val_ok = self._features(self.val_records, 1)
        self.val_set = CachedCaptions(val_feats, CaptionIds(self.val_records, self.vocab, val_ok), random_view=False)
        n = len(self.eval_records)
        self.eval_inputs = float_tensor(val_feats[:n, 0])[val_ok[:n]]
        self.eval_records = [r for r, good in zip(self.eval_records, val_ok[:n], strict=True) if good]

    def _train_ids(self, ok: np.ndarray | None = None) -> CaptionIds:
        """The training captions' ids, cut at ``--train-max-len`` words (by default the 99.9th percentile of their
        lengths: one runaway caption would set an epoch's time and memory), said how many."""
        most, why = self.cfg.train_max_len, ""
        if most is None:
            split = self.vocab.tokenizer.split
            lengths = [len(split(c)) for i, r in enumerate(self.train_records) if ok is None or ok[i]
                       for c in r.captions]
            # "higher": a length some caption has, never one interpolated towards a runaway caption's
            most = int(np.percentile(lengths, CUT_PERCENTILE, method="higher")) if lengths else 0
            why = f" (the {CUT_PERCENTILE}th percentile of their lengths; 0 keeps them whole)"
        ids = CaptionIds(self.train_records, self.vocab, ok, most)
        if most:
            _say(self.trainer)(f"--train-max-len {most}{why}: {ids.cut} of {len(ids)} training captions were longer "
                               f"than {most} words and are cut to their first {most} (without <end>)")
        return ids

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        cached, epoch = isinstance(dataset, CachedCaptions | CachedImages), self.trainer.current_epoch
        collate = (lambda batch: batch) if cached else image_collate if isinstance(dataset, SampledImages) \
            else caption_collate
        common = dict(collate_fn=collate, pin_memory=torch.cuda.is_available(),
                      num_workers=0 if cached else self.cfg.num_workers)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if shuffle else (0, 1)
        if hasattr(dataset, "captions") and (self.cfg.batching == "bucket" or not shuffle):
            sampler = LengthBucketSampler(dataset.captions.lengths, self.cfg.batch_size, shuffle, self.cfg.seed,
                                          rank, world)
            sampler.set_epoch(epoch)  # loaders are rebuilt every epoch: each epoch its own shuffle
            return DataLoader(dataset, batch_sampler=sampler, **common)
        sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=self.cfg.seed)  # padded, or images
        sampler.set_epoch(epoch)
        return DataLoader(dataset, batch_size=self.cfg.batch_size, sampler=sampler, **common)

    def train_dataloader(self) -> DataLoader:
        if isinstance(self.train_set, CachedCaptions):
            self.train_set.set_epoch(self.trainer.current_epoch)
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


class SampledImages(Dataset):
    """(image, record index) of each readable training image, the eval transform: self-critical fine-tuning."""

    def __init__(self, views: ImageViews) -> None:
        self.views = views

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        image, ok = self.views[index]
        return (image[0], index) if ok else None


def image_collate(batch: list[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, ...]:
    """Stacked images and their record indices; unreadable ones dropped, () when none is left (see
    ``caption_collate``)."""
    kept = [item for item in batch if item is not None]
    return (torch.stack([x for x, _ in kept]), torch.tensor([i for _, i in kept])) if kept else ()


def caption_collate(batch: list[tuple[torch.Tensor, torch.Tensor] | None]) -> tuple[torch.Tensor, ...]:
    """``pad_collate``, but a batch whose images all failed is () rather than None: Lightning drops a None batch
    before ``training_step``, so under DDP that rank would skip a step the others take, and all would hang."""
    return pad_collate(batch) or ()


def _say(trainer: L.Trainer | None):
    """print on rank 0 only."""
    return lambda msg: print(msg, flush=True) if getattr(trainer, "is_global_zero", True) else None
