"""Image encoder: a frozen trunk from the backbone registry (or timm:NAME), its last spatial map pooled to a G x G
grid."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from captioner.models.backbones import build_trunk
from captioner.models.fold import fold_batch_norms


class Encoder(nn.Module):
    """Frozen trunk (optionally its last stage trainable) -> grid features [B, G*G, C]; their mean is the pool."""

    def __init__(self, backbone: str = "resnet50", weights: str = "imagenet", grid: int = 7, fine_tune: bool = False,
                 seed: int = 0, output_stride: int = 32, image_size: int | None = None) -> None:
        super().__init__()
        # image_size matters to ViTs only (their position embeddings); None: the model's own
        self.backbone, self.spec = build_trunk(backbone, weights, seed, output_stride, image_size)
        self.feature_size, self.grid, self.fine_tune = self.spec.channels[output_stride], grid, fine_tune
        for name, p in self.backbone.named_parameters():
            p.requires_grad = fine_tune and name.startswith(self.spec.last_stage[output_stride])

    def train(self, mode: bool = True) -> Encoder:
        """The trunk's BatchNorm statistics stay frozen even when fine-tuning (small caption batches)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Grid features [B, G*G, C] of normalised images [B, 3, H, W] (average-pooled to G x G cells)."""
        training = self.fine_tune and torch.is_grad_enabled()
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(training):
            x = self.backbone(images) if training else self._folded(images)(images)
            return F.adaptive_avg_pool2d(x, self.grid).flatten(2).transpose(1, 2)

    def _folded(self, images: torch.Tensor) -> nn.Module:
        """The trunk with its BatchNorms folded (fold.py), made on first use and again when a weight changes; the
        trunk itself when tracing for export, whose graphs keep the model's own layers, and on the meta device
        (FLOPs counted without data)."""
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or images.is_meta:
            return self.backbone
        key = tuple((t.data_ptr(), 0 if t.is_inference() else t._version)  # inference tensors keep no version
                    for t in [*self.backbone.parameters(), *self.backbone.buffers()])
        cached = self.__dict__.get("_fold")
        if cached is None or cached[0] != key:
            self.__dict__["_fold"] = cached = key, fold_batch_norms(self.backbone, images[:2])
        return cached[1]
