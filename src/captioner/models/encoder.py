"""Image encoder: a torchvision ResNet by name, classifier removed, frozen, then a linear embedding."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from captioner.models.backbones import WeightsUnavailableError, imagenet_state, weights_file  # noqa: F401 - re-exported

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2")
WEIGHTS = ("imagenet", "none")
DILATION = {32: None, 16: [False, False, True], 8: [False, True, True]}  # output stride -> dilated stages


def build_backbone(name: str, weights: str = "imagenet", seed: int = 0,
                   output_stride: int = 32) -> tuple[nn.Module, int]:
    """A ResNet trunk whose output is the pooled feature vector; returns (module, feature size).

    With ``weights="none"`` the random initialisation is seeded (residual branches start at zero, as torchvision's
    ``zero_init_residual``), so the same seed rebuilds the same encoder. ``output_stride`` 16 or 8 dilates the
    last stages instead of striding them (same weights, denser features, more compute).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if weights not in WEIGHTS:
        raise ValueError(f"unknown encoder weights {weights!r}; choose imagenet or none")
    if output_stride not in DILATION:
        raise ValueError(f"output stride must be 32, 16 or 8, got {output_stride}")
    if output_stride < 32 and name in ("resnet18", "resnet34"):
        raise ValueError(f"output stride {output_stride} needs a bottleneck ResNet (resnet50 or larger), not {name}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = models.get_model(name, weights=None, zero_init_residual=True,
                                 replace_stride_with_dilation=DILATION[output_stride])
    if weights == "imagenet":
        model.load_state_dict(imagenet_state(name))
    dim = model.fc.in_features
    model.fc = nn.Identity()
    return model.to(memory_format=torch.channels_last), dim


class Encoder(nn.Module):
    """Frozen CNN trunk (optionally its last stage trainable) -> Linear (+BatchNorm) image embedding."""

    def __init__(self, backbone: str = "resnet50", weights: str = "imagenet", embed_size: int = 256,
                 batch_norm: bool = True, fine_tune: bool = False, seed: int = 0, output_stride: int = 32) -> None:
        super().__init__()
        self.backbone, self.feature_size = build_backbone(backbone, weights, seed, output_stride)
        self.fine_tune = fine_tune
        for name, p in self.backbone.named_parameters():
            p.requires_grad = fine_tune and name.startswith("layer4.")
        self.standardize = nn.BatchNorm1d(self.feature_size, affine=False)  # pooled features: mean 0, std 1
        self.embed = nn.Linear(self.feature_size, embed_size)
        self.norm = nn.BatchNorm1d(embed_size, momentum=0.01) if batch_norm else nn.Identity()

    def train(self, mode: bool = True) -> Encoder:
        """The trunk's BatchNorm statistics stay frozen even when fine-tuning (small caption batches)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features [B, feature_size] of normalised images [B, 3, H, W]."""
        with torch.set_grad_enabled(self.fine_tune and torch.is_grad_enabled()):
            return self.backbone(images.contiguous(memory_format=torch.channels_last))

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Image embedding [B, embed_size] from pooled features (cached or fresh).

        The pooled features are standardised first: frozen trunks (random ones most) give features with a large
        common offset, on which the embedding would learn slowly.
        """
        return _batch_norm(self.norm, self.embed(_batch_norm(self.standardize, pooled.float())))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Image embedding of images [B, 3, H, W] or of their already pooled (cached) features [B, D]."""
        return self.project(inputs if inputs.dim() == 2 else self.pooled(inputs))


def _batch_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a BatchNorm1d; a one-caption training batch has no batch statistics, so it uses the running ones."""
    if isinstance(norm, nn.BatchNorm1d) and norm.training and x.size(0) == 1:
        return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, training=False,
                            eps=norm.eps)
    return norm(x)
