"""Pre-activation ResNets for CIFAR.

He, Zhang, Ren, Sun (2016), "Identity Mappings in Deep Residual Networks", Figure 1(b) and
Tables 2-3: BN and ReLU move *before* each convolution, so the shortcut is a clean identity
``x_{l+1} = x_l + F(x_l)`` with nothing after the addition. Sizes (CIFAR, 32 px):

  * ``preact_resnet110``: basic blocks (two 3x3), 6n+2 layers with n = 18, widths 16/32/64.
  * ``preact_resnet164`` / ``preact_resnet1001``: bottleneck blocks (1x1, 3x3, 1x1 x4), 9n+2
    layers with n = 18 / 111, output widths 64/128/256 (paper: 1.7M and 10.2M parameters).

Where the shape changes (stride 2, or more channels) the shortcut is a 1x1 convolution applied
to the *pre-activated* input, as in the authors' code (fb.resnet.torch ``preresnet.lua``,
"both_preact"), without a BN: the next block's own pre-activation normalises the sum. The
identity path of every other block carries no BN and no ReLU.

After the last stage comes the extra BN-ReLU the paper adds before pooling (``final_bn``).

Plain twins (the same nets without the addition) are not registered by default but resolve by
name: ``preact_plain110``, ``preact_plain164``, ``preact_plain1001``. They have no projection
shortcuts, so fewer parameters (a few thousand) than the residual nets.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from zoo.models.common import (
    DepthUnit,
    Network,
    SkipBlock,
    run_blocks,
    stage_widths,
    staged_depth_units,
)

DEFAULT_NUM_CLASSES = 10
# The family's facts, read by the registry's describe(): paper, native input (px per side)
PAPER = "He et al. 2016"
INPUT_SIZE = 32
RELU_AFTER_ADDITION = False  # pre-activation: x + f(x), nothing after the sum

# ---------------------------------------------------------------- helpers


def make_projection(in_planes: int, out_planes: int, stride: int, skip: bool) -> nn.Module | None:
    if not skip or (stride == 1 and in_planes == out_planes):
        return None
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


# ---------------------------------------------------------------- blocks


class PreActBasicBlock(SkipBlock):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3; the sum is the output, nothing applied after it."""

    relu_after_addition = RELU_AFTER_ADDITION

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, skip: bool = True) -> None:
        super().__init__()
        self.skip = skip
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.projection = make_projection(in_planes, planes, stride, skip)

    def _branch_from_preactivated(self, pre: torch.Tensor) -> torch.Tensor:
        out = self.conv1(pre)
        return self.conv2(self.relu(self.bn2(out)))

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self._branch_from_preactivated(torch.relu(self.bn1(x)))

    def shortcut_branch(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.projection is None else self.projection(torch.relu(self.bn1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))  # not in place: x itself is the identity path
        out = self._branch_from_preactivated(pre)
        if self.skip:
            identity = x if self.projection is None else self.projection(pre)
            out = out + identity  # the skip connection: x + F(x), a clean identity
        return out


# Written out in full beside the basic block rather than sharing code with it: each block
# shows its whole branch and its skip in one place.
class PreActBottleneck(SkipBlock):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3 (stride), BN-ReLU-conv1x1 (x4 channels)."""

    relu_after_addition = RELU_AFTER_ADDITION

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, skip: bool = True) -> None:
        super().__init__()
        self.skip = skip
        out_planes = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.projection = make_projection(in_planes, out_planes, stride, skip)

    def _branch_from_preactivated(self, pre: torch.Tensor) -> torch.Tensor:
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return self.conv3(self.relu(self.bn3(out)))

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self._branch_from_preactivated(torch.relu(self.bn1(x)))

    def shortcut_branch(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.projection is None else self.projection(torch.relu(self.bn1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))  # not in place: x itself is the identity path
        out = self._branch_from_preactivated(pre)
        if self.skip:
            identity = x if self.projection is None else self.projection(pre)
            out = out + identity  # the skip connection: x + F(x), a clean identity
        return out


BLOCKS: dict[str, type[PreActBasicBlock | PreActBottleneck]] = {
    "basic": PreActBasicBlock,
    "bottleneck": PreActBottleneck,
}
LAYERS_PER_BLOCK = {"basic": 2, "bottleneck": 3}

# ---------------------------------------------------------------- network


class PreActResNet(Network):
    def __init__(
        self,
        block: str,
        depth: int,
        num_classes: int = DEFAULT_NUM_CLASSES,
        in_channels: int = 3,
        skip: bool = True,
        memory_efficient: bool = False,
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        per_block = LAYERS_PER_BLOCK[block]
        if (depth - 2) % (3 * per_block) != 0:
            raise ValueError(
                f"pre-activation ResNet depth with {block} blocks must be "
                f"{3 * per_block}n+2, got {depth}"
            )
        blocks_per_stage = (depth - 2) // (3 * per_block)
        block_class = BLOCKS[block]
        self.memory_efficient = memory_efficient
        # No BN-ReLU after the stem conv: the first block pre-activates its input.
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        in_planes = widths[0]
        stages = []
        for stage_index, planes in enumerate(widths):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage_index > 0 and index == 0 else 1
                blocks.append(block_class(in_planes, planes, stride, skip))
                in_planes = planes * block_class.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.final_bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # forward_features / forward_head / depth_units have the same shape in every family file on
    # purpose: each file reads alone (the `duplicates` tool lists these pairs; they are deliberate).
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for stage in (self.layer1, self.layer2, self.layer3):
            x = run_blocks(stage, x, self.memory_efficient)
        return self.relu(self.final_bn(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.pool(x), 1))

    def depth_units(self) -> list[DepthUnit]:
        return staged_depth_units(
            self,
            stem=DepthUnit("conv1", "stem", self.conv1),
            stage_names=("layer1", "layer2", "layer3"),
            head=DepthUnit("linear", "head", nn.ModuleList([self.final_bn, self.linear])),
        )


# ---------------------------------------------------------------- variants

_DEPTHS = {110: "basic", 164: "bottleneck", 1001: "bottleneck"}
VARIANTS: dict[str, dict[str, Any]] = {
    f"preact_resnet{depth}": {"block": block, "depth": depth, "skip": True}
    for depth, block in _DEPTHS.items()
}
_NAME = re.compile(r"^preact_(resnet|plain)(\d+)$")


def resolve(name: str) -> dict[str, Any] | None:
    """The plain twins ``preact_plain110/164/1001``; a wrong depth gets the valid ones."""
    match = _NAME.match(name)
    if match is None:
        return None
    depth = int(match.group(2))
    if depth not in _DEPTHS:
        raise ValueError(
            f"{name}: pre-activation ResNets are preact_resnet110 (basic blocks, 6n+2), "
            f"preact_resnet164 and preact_resnet1001 (bottleneck, 9n+2), and their plain twins "
            f"preact_plain110/164/1001."
        )
    return {"block": _DEPTHS[depth], "depth": depth, "skip": match.group(1) == "resnet"}


def skip_type(arguments: dict[str, Any]) -> str:
    return "add" if arguments["skip"] else "none"


# build(): the registry's entry point (zoo/models/__init__.py), the same few lines in every family
# file on purpose, so that each file reads alone.
def build(
    variant: dict[str, Any],
    num_classes: int,
    in_channels: int,
    memory_efficient: bool = False,
    widths: tuple[int, int, int] | list[int] = (16, 32, 64),
) -> PreActResNet:
    # widths: a bottleneck's output is 4x its stage's width
    return PreActResNet(
        variant["block"],
        variant["depth"],
        num_classes=num_classes,
        in_channels=in_channels,
        skip=variant["skip"],
        memory_efficient=memory_efficient,
        widths=stage_widths(widths),
    )
