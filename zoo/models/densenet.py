"""DenseNets: every layer sees the concatenation of all earlier feature maps of its block.

Huang, Liu, van der Maaten, Weinberger (2017), "Densely Connected Convolutional Networks".

  * ImageNet (Table 1): ``densenet121/161/169/201``, DenseNet-BC (bottleneck 1x1 conv to
    4k channels, compression 0.5), growth k = 32 (48 for 161), a 7x7/2 stem with max-pool.
    Layer names are torchvision's (``features.conv0``, ``features.denseblock1.denselayer1.norm1``,
    ``features.transition1.conv``, ``classifier``), so torchvision state dicts load as they are,
    old ``norm.1``-style keys included (remapped on load, as torchvision's loader does).
  * CIFAR (Table 2, 10 classes): ``densenet40_12`` (no bottleneck, no compression, 3 blocks of
    12 layers, k = 12, 16 stem channels: 1.0M parameters) and DenseNet-BC
    ``densenet_bc_100_12`` (0.8M), ``densenet_bc_250_24`` (15.3M), ``densenet_bc_190_40``
    (25.6M): (depth - 4) / 6 bottleneck layers per block, 2k stem channels, a 3x3 stem conv.

The concatenation is the one line ``torch.cat([x, new], 1)`` in :class:`DenseLayer`.

``memory_efficient`` checkpoints each layer's concatenation and bottleneck (BN-ReLU-1x1 conv;
for the non-bottleneck densenet40_12, BN-ReLU-3x3 conv) as torchvision does (Pleiss et al. 2017,
"Memory-Efficient Implementation of DenseNets"): the block keeps each layer's new maps once and
concatenates them inside the checkpoint, so the growing concatenation and its BN and ReLU
outputs are recomputed in backward instead of stored. Outputs, gradients and BN running
statistics equal the normal mode's.

Deviations: dropout (the paper's 0.2 for CIFAR without augmentation) is not implemented.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from zoo.models.common import DepthUnit, Network, checkpoint_module

DEFAULT_NUM_CLASSES = 1000
# The family's facts, read by the registry's describe(): paper, native input (px per side)
PAPER = "Huang et al. 2017"
INPUT_SIZE = 224
RELU_AFTER_ADDITION = None  # no addition: concatenation

# ---------------------------------------------------------------- helpers

# torchvision's published DenseNet weights predate the ban on "." in module names and carry
# keys like "denselayer1.norm.1.weight" for "denselayer1.norm1.weight".
_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def remap_legacy_keys(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Rename old ``norm.1``-style DenseNet keys in place (torchvision's remapping)."""
    for key in list(state_dict):
        match = _LEGACY_KEY.match(key)
        if match:
            state_dict[match.group(1) + match.group(2)] = state_dict.pop(key)
    return state_dict


# ---------------------------------------------------------------- layers


class DenseLayer(nn.Module):
    """BN-ReLU-conv(1x1 to bn_size*k)-BN-ReLU-conv(3x3 to k), or BN-ReLU-conv(3x3) without
    bottleneck; the k new maps are concatenated to the input."""

    def __init__(
        self, in_channels: int, growth_rate: int, bn_size: int | None, memory_efficient: bool
    ) -> None:
        super().__init__()
        self.memory_efficient = memory_efficient
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        if bn_size is None:  # DenseNet (not -BC): a single 3x3 conv
            self.conv1 = nn.Conv2d(in_channels, growth_rate, 3, padding=1, bias=False)
            self.norm2 = self.relu2 = self.conv2 = None
        else:
            self.conv1 = nn.Conv2d(in_channels, bn_size * growth_rate, 1, bias=False)
            self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def bottleneck(self, *features: torch.Tensor) -> torch.Tensor:
        # In memory-efficient mode the block hands over its earlier maps one by one and they are
        # concatenated here, inside the checkpoint: the concatenation is recomputed in backward
        # instead of being stored once per layer (Pleiss et al. 2017).
        x = features[0] if len(features) == 1 else torch.cat(features, 1)
        return self.conv1(self.relu1(self.norm1(x)))

    def new_features(self, *features: torch.Tensor) -> torch.Tensor:
        if self.memory_efficient and torch.is_grad_enabled():
            out = checkpoint_module(self.bottleneck, *features, module=self)
        else:
            out = self.bottleneck(*features)
        if self.conv2 is not None:
            out = self.conv2(self.relu2(self.norm2(out)))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.new_features(x)
        return torch.cat([x, new], 1)  # the skip connection: concatenate, never add


class DenseBlock(nn.Sequential):
    """``num_layers`` dense layers; channels grow by ``growth_rate`` per layer."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        bn_size: int | None,
        memory_efficient: bool,
    ) -> None:
        super().__init__()
        self.memory_efficient = memory_efficient
        for index in range(num_layers):
            layer = DenseLayer(
                in_channels + index * growth_rate, growth_rate, bn_size, memory_efficient
            )
            self.add_module(f"denselayer{index + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.memory_efficient and torch.is_grad_enabled()):
            return super().forward(x)  # each DenseLayer: torch.cat([x, new], 1)
        # The same concatenations, done once at the end: each layer keeps only its k new maps,
        # so memory grows linearly with depth instead of quadratically.
        features = [x]
        for layer in self:
            features.append(layer.new_features(*features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1x1 (compression) and 2x2 average pooling between dense blocks."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2, stride=2)


# ---------------------------------------------------------------- network


class DenseNet(Network):
    def __init__(
        self,
        growth_rate: int,
        block_config: tuple[int, ...],
        num_init_features: int,
        bn_size: int | None,
        compression: float,
        stem: str,
        num_classes: int = DEFAULT_NUM_CLASSES,
        in_channels: int = 3,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        if stem == "imagenet":
            stem_layers = [
                ("conv0", nn.Conv2d(in_channels, num_init_features, 7, 2, 3, bias=False)),
                ("norm0", nn.BatchNorm2d(num_init_features)),
                ("relu0", nn.ReLU(inplace=True)),
                ("pool0", nn.MaxPool2d(3, stride=2, padding=1)),
            ]
        else:  # CIFAR: one 3x3 conv; the first dense layer's BN-ReLU follows it
            stem_layers = [
                ("conv0", nn.Conv2d(in_channels, num_init_features, 3, padding=1, bias=False))
            ]
        self.features = nn.Sequential(OrderedDict(stem_layers))
        channels = num_init_features
        for index, num_layers in enumerate(block_config):
            block = DenseBlock(num_layers, channels, growth_rate, bn_size, memory_efficient)
            self.features.add_module(f"denseblock{index + 1}", block)
            channels += num_layers * growth_rate
            if index != len(block_config) - 1:
                out_channels = int(channels * compression)
                transition = Transition(channels, out_channels)
                self.features.add_module(f"transition{index + 1}", transition)
                channels = out_channels
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

        # torchvision's init (from the authors' Torch code): fan-in He init, zero biases.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        self._register_load_state_dict_pre_hook(self._remap_legacy_keys_hook)

    @staticmethod
    def _remap_legacy_keys_hook(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        remap_legacy_keys(state_dict)

    # forward_features / forward_head / depth_units have the same shape in every family file on
    # purpose: each file reads alone (the `duplicates` tool lists these pairs; they are deliberate).
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.features(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(x), 1))

    def depth_units(self) -> list[DepthUnit]:
        stem = [module for name, module in self.features.named_children() if name.endswith("0")]
        units = [DepthUnit("features.conv0", "stem", nn.ModuleList(stem))]
        for name, module in self.features.named_children():
            if name.startswith("denseblock"):
                stage = f"dense{name[len('denseblock') :]}"
                for layer_name, layer in module.named_children():
                    units.append(DepthUnit(f"features.{name}.{layer_name}", stage, layer))
            elif name.startswith("transition"):
                units.append(DepthUnit(f"features.{name}", name, module))
        head = nn.ModuleList([self.features.norm5, self.classifier])
        units.append(DepthUnit("classifier", "head", head))
        return units


# ---------------------------------------------------------------- variants


def _cifar_bc(depth: int, growth_rate: int) -> dict[str, Any]:
    layers = (depth - 4) // 6  # each bottleneck layer is two convs: 3 blocks x 2 + 4 = depth
    return {
        "growth_rate": growth_rate,
        "block_config": (layers, layers, layers),
        "num_init_features": 2 * growth_rate,
        "bn_size": 4,
        "compression": 0.5,
        "stem": "cifar",
    }


def _imagenet(growth_rate: int, block_config: tuple[int, ...], init: int) -> dict[str, Any]:
    return {
        "growth_rate": growth_rate,
        "block_config": block_config,
        "num_init_features": init,
        "bn_size": 4,
        "compression": 0.5,
        "stem": "imagenet",
    }


VARIANTS: dict[str, dict[str, Any]] = {
    "densenet121": _imagenet(32, (6, 12, 24, 16), 64),
    "densenet161": _imagenet(48, (6, 12, 36, 24), 96),
    "densenet169": _imagenet(32, (6, 12, 32, 32), 64),
    "densenet201": _imagenet(32, (6, 12, 48, 32), 64),
    "densenet40_12": {
        "growth_rate": 12,
        "block_config": (12, 12, 12),  # (40 - 4) / 3 single-conv layers per block
        "num_init_features": 16,
        "bn_size": None,
        "compression": 1.0,
        "stem": "cifar",
    },
    "densenet_bc_100_12": _cifar_bc(100, 12),
    "densenet_bc_250_24": _cifar_bc(250, 24),
    "densenet_bc_190_40": _cifar_bc(190, 40),
}
# One family, two datasets: the CIFAR nets default to 10 classes, not the family's 1000. The
# registry reads this per-variant key when present (build ignores it).
for _name in ("densenet40_12", "densenet_bc_100_12", "densenet_bc_250_24", "densenet_bc_190_40"):
    VARIANTS[_name].update(default_num_classes=10, input_size=32)


def depth_of(variant: dict[str, Any]) -> int:
    """Weighted layers as the paper counts them: one conv per dense layer (two with a
    bottleneck), one per transition, the stem conv and the classifier."""
    per_layer = 2 if variant["bn_size"] else 1
    blocks = variant["block_config"]
    return per_layer * sum(blocks) + len(blocks) - 1 + 2


for _variant in VARIANTS.values():
    _variant["depth"] = depth_of(_variant)
_BC_NAME = re.compile(r"^densenet_bc_(\d+)_(\d+)$")


def resolve(name: str) -> dict[str, Any] | None:
    """DenseNet-BC for CIFAR at any depth 6n+4 and growth rate k: ``densenet_bc_{depth}_{k}``."""
    match = _BC_NAME.match(name)
    if match is None:
        return None
    depth, growth_rate = int(match.group(1)), int(match.group(2))
    if depth < 10 or (depth - 4) % 6 or growth_rate < 1:
        raise ValueError(f"{name}: DenseNet-BC depths are 6n+4 (10, 16, ..., 40, 64, 100, ...) "
                         "and growth rates >= 1")
    return {**_cifar_bc(depth, growth_rate), "default_num_classes": 10, "input_size": 32,
            "depth": depth}


def skip_type(arguments: dict[str, Any]) -> str:
    return "concat"


# build(): the registry's entry point (zoo/models/__init__.py), the same few lines in every family
# file on purpose, so that each file reads alone.
def build(
    variant: dict[str, Any],
    num_classes: int,
    in_channels: int,
    memory_efficient: bool = False,
) -> DenseNet:
    return DenseNet(
        variant["growth_rate"],
        variant["block_config"],
        variant["num_init_features"],
        variant["bn_size"],
        variant["compression"],
        variant["stem"],
        num_classes=num_classes,
        in_channels=in_channels,
        memory_efficient=memory_efficient,
    )
