"""ImageNet ResNets and their plain twins.

He, Zhang, Ren, Sun (2015), "Deep Residual Learning for Image Recognition", Table 1 (18, 34,
50, 101, 152 layers) and Figure 4 / Table 2 (the plain 18- and 34-layer twins).

Layout and names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0/1``, ``fc``), so a torchvision state dict loads as it is and gives the
same logits. Deviations from the paper, all as torchvision has them:
  * ResNet V1.5: in the bottleneck the stride-2 sits on the 3x3 conv, not on the first 1x1
    (about +0.5% top-1; the paper put it on the 1x1).
  * Shortcuts are option B: identity, and a 1x1 conv + BN where the shape changes.

Plain twins (``plain18/34/50/101/152``) are built by the same code with ``skip=False``. As in the
paper's plain nets they have no shortcut at all, so no projection either: their parameter count
is the residual net's minus the ``downsample`` convs and BNs (plain18/34 = resnet18/34 - 173,824;
plain50/101/152 = resnet50/101/152 - 2,776,576).

Options beyond the paper, each because an experiment needs it:
  * ``stem="cifar"``: a 3x3 stride-1 conv and no max-pool, for 32 px inputs (keys unchanged,
    only ``conv1.weight`` has another shape).
  * ``zero_init_residual``: each block zeroes its last BN's scale, so every block starts as the
    identity (Goyal et al. 2017, timm's per-block ``zero_init_last``).
  * ``drop_path``: stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic Depth"):
    in training each sample drops a block's residual branch with a probability rising linearly
    from ``drop_path / L`` at the first block to ``drop_path`` at the last (their linear decay
    rule); the identity always passes.
  * ``memory_efficient``: activation checkpointing of every block (Chen et al. 2016).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from zoo.models.common import DepthUnit, Network, SkipBlock, run_blocks, staged_depth_units

DEFAULT_NUM_CLASSES = 1000
# The family's facts, read by the registry's describe(): paper, native input (px per side)
PAPER = "He et al. 2015"
INPUT_SIZE = 224
RELU_AFTER_ADDITION = True  # post-activation: relu(f(x) + x)
STEMS = ("imagenet", "cifar")

# ---------------------------------------------------------------- helpers


def make_downsample(in_planes: int, planes: int, stride: int, skip: bool) -> nn.Module | None:
    if not skip or (stride == 1 and in_planes == planes):
        return None
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
    )


# ---------------------------------------------------------------- blocks


class BasicBlock(SkipBlock):
    """Two 3x3 conv-BN layers (ResNet-18/34)."""

    relu_after_addition = RELU_AFTER_ADDITION

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int, skip: bool = True, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.skip = skip
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = make_downsample(in_planes, planes, stride, skip)
        # torchvision's stochastic depth, per sample ("row"); survivors scaled by 1 / (1 - p), so
        # eval mode needs no rescaling (the paper scales at test time: equal in expectation)
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def shortcut_branch(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop_path(self.residual_branch(x))
        if self.skip:
            out = out + self.shortcut_branch(x)  # the skip connection: f(x) + x
        return self.relu(out)


# Written out in full beside the basic block rather than sharing code with it: each block
# shows its whole branch and its skip in one place.
class Bottleneck(SkipBlock):
    """1x1 reduce, 3x3 (stride here: V1.5), 1x1 expand by 4 (ResNet-50/101/152)."""

    relu_after_addition = RELU_AFTER_ADDITION

    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int, skip: bool = True, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.skip = skip
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_downsample(in_planes, out_planes, stride, skip)
        # torchvision's stochastic depth, per sample ("row"); survivors scaled by 1 / (1 - p), so
        # eval mode needs no rescaling (the paper scales at test time: equal in expectation)
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def shortcut_branch(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop_path(self.residual_branch(x))
        if self.skip:
            out = out + self.shortcut_branch(x)  # the skip connection: f(x) + x
        return self.relu(out)


BLOCKS: dict[str, type[BasicBlock | Bottleneck]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}


def make_stage(
    block_class: type[BasicBlock | Bottleneck], in_planes: int, planes: int, stride: int,
    skip: bool, drop_rates: list[float],
) -> nn.Sequential:
    """One block per drop-path rate; the first takes the stride and the new width."""
    blocks = []
    for index, rate in enumerate(drop_rates):
        blocks.append(block_class(in_planes, planes, stride if index == 0 else 1, skip, rate))
        in_planes = planes * block_class.expansion
    return nn.Sequential(*blocks)


# ---------------------------------------------------------------- network


class ResNet(Network):
    def __init__(
        self,
        block: str,
        layers: tuple[int, int, int, int],
        num_classes: int = DEFAULT_NUM_CLASSES,
        in_channels: int = 3,
        skip: bool = True,
        stem: str = "imagenet",
        zero_init_residual: bool = False,
        drop_path: float = 0.0,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path is a probability in [0, 1), got {drop_path}")
        if not skip and (drop_path > 0.0 or zero_init_residual):
            # Both rely on the identity carrying the signal; a plain net would output zeros.
            raise ValueError(
                "drop_path and zero_init_residual need the skip connection; "
                "use them with resnetN, not plainN"
            )
        block_class = BLOCKS[block]
        self.memory_efficient = memory_efficient
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:  # 32 px inputs: a 7x7/2 conv and a max-pool would leave 8x8 maps for layer1
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)

        # Huang et al.'s linear decay: block i of L drops its residual branch with drop_path * i / L
        total_blocks = sum(layers)
        rates = [drop_path * index / total_blocks for index in range(1, total_blocks + 1)]
        in_planes = 64
        stages = []
        widths = (64, 128, 256, 512)
        for stage_index, (planes, count) in enumerate(zip(widths, layers, strict=True)):
            stride = 2 if stage_index > 0 else 1  # every stage but the first halves the map
            stage_rates, rates = rates[:count], rates[count:]
            stages.append(make_stage(block_class, in_planes, planes, stride, skip, stage_rates))
            in_planes = planes * block_class.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    module.zero_init_last()

    # forward_features / forward_head / depth_units have the same shape in every family file on
    # purpose: each file reads alone (the `duplicates` tool lists these pairs; they are deliberate).
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = run_blocks(stage, x, self.memory_efficient)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def depth_units(self) -> list[DepthUnit]:
        return staged_depth_units(
            self,
            stem=DepthUnit("conv1", "stem", nn.ModuleList([self.conv1, self.bn1])),
            stage_names=("layer1", "layer2", "layer3", "layer4"),
            head=DepthUnit("fc", "head", self.fc),
        )


# ---------------------------------------------------------------- variants

# He et al. 2015, Table 1: blocks per stage.
_LAYERS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
VARIANTS: dict[str, dict[str, Any]] = {}
for _depth, (_block, _layers) in _LAYERS.items():
    VARIANTS[f"resnet{_depth}"] = {"block": _block, "layers": _layers, "skip": True,
                                   "depth": _depth}
    VARIANTS[f"plain{_depth}"] = {"block": _block, "layers": _layers, "skip": False,
                                  "depth": _depth}


def skip_type(arguments: dict[str, Any]) -> str:
    return "add" if arguments["skip"] else "none"


# build(): the registry's entry point (zoo/models/__init__.py), the same few lines in every family
# file on purpose, so that each file reads alone.
def build(
    variant: dict[str, Any],
    num_classes: int,
    in_channels: int,
    stem: str = "imagenet",
    zero_init_residual: bool = False,
    drop_path: float = 0.0,
    memory_efficient: bool = False,
) -> ResNet:
    return ResNet(
        variant["block"],
        variant["layers"],
        num_classes=num_classes,
        in_channels=in_channels,
        skip=variant["skip"],
        stem=stem,
        zero_init_residual=zero_init_residual,
        drop_path=drop_path,
        memory_efficient=memory_efficient,
    )
