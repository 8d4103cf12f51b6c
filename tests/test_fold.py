"""Folding a frozen trunk's BatchNorms into its convolutions: same features, no BatchNorm left where one reads a
convolution, the trunk kept where folding would change what it computes, and a refold when a weight changes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from captioner.models.backbones import build_trunk
from captioner.models.encoder import Encoder
from captioner.models.fold import fold_batch_norms


def randomise_statistics(trunk: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm running statistics and an affine map far from the identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in trunk.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) * 3 + 0.2)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))
    return trunk.eval()


def batch_norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
@pytest.mark.parametrize("size", [64, 97])
def test_a_folded_trunk_computes_the_same_features_without_its_batch_norms(name: str, size: int) -> None:
    trunk = randomise_statistics(build_trunk(name, "none")[0])
    before = batch_norms(trunk)
    x = torch.randn(3, 3, size, size).contiguous(memory_format=torch.channels_last)
    folded = fold_batch_norms(trunk, x[:2])
    assert folded is not trunk and batch_norms(folded) == 0 and batch_norms(trunk) == before > 0
    with torch.inference_mode():
        want, got = trunk(x), folded(x)  # the third image was not the one folding was checked on
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()))
    assert not any(p.requires_grad for p in folded.parameters())


class ReadTwice(nn.Module):
    """A convolution whose output a BatchNorm reads and a skip connection reads too: folding would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_a_trunk_whose_folding_would_change_its_output_is_kept() -> None:
    trunk = randomise_statistics(ReadTwice())
    assert fold_batch_norms(trunk, torch.randn(2, 3, 8, 8)) is trunk


def test_batch_norms_in_training_mode_are_not_folded() -> None:
    trunk = randomise_statistics(build_trunk("resnet18", "none")[0]).train()
    assert fold_batch_norms(trunk, torch.randn(2, 3, 32, 32)) is trunk


def test_the_encoder_refolds_when_a_frozen_weight_changes() -> None:
    encoder = Encoder("efficientnet_lite0", "none", grid=2).eval()
    randomise_statistics(encoder.backbone)
    x = torch.randn(2, 3, 64, 64)

    def plain() -> torch.Tensor:
        with torch.inference_mode():
            return torch.nn.functional.adaptive_avg_pool2d(encoder.backbone(x), 2).flatten(2).transpose(1, 2)

    with torch.inference_mode():
        first = encoder(x)
    assert torch.allclose(first, plain(), rtol=1e-3, atol=1e-4 * float(first.abs().max()))
    with torch.no_grad():  # an in-place change of one BatchNorm's statistics (e.g. a state dict loaded into it)
        next(m for m in encoder.backbone.modules() if isinstance(m, nn.BatchNorm2d)).running_mean.add_(1.0)
    with torch.inference_mode():
        second = encoder(x)
    assert not torch.allclose(second, first, rtol=1e-3)
    assert torch.allclose(second, plain(), rtol=1e-3, atol=1e-4 * float(second.abs().max()))


def test_an_encoder_on_the_meta_device_runs_unfolded() -> None:
    """FLOPs are counted on the meta device (benchmarks/scale_bench.py): no data to fold or check, so the trunk runs
    as it is (folding there raised: meta has no autocast)."""
    encoder = Encoder("resnet18", "none", grid=2).to("meta").eval()
    with torch.inference_mode():
        assert encoder(torch.randn(1, 3, 64, 64, device="meta")).shape == (1, 4, 512)
    assert "_fold" not in encoder.__dict__
