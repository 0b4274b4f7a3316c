"""CIFAR ResNets and their plain twins.

He, Zhang, Ren, Sun (2015), "Deep Residual Learning for Image Recognition", section 4.2 and
Table 6: 6n+2 layers (a 3x3 stem, three stages of n basic blocks with 16/32/64 filters on
32/16/8 px maps, global average pooling and a linear classifier).

Shortcut options of the paper:
  * ``"A"`` (default, the paper's CIFAR choice): identity; where the shape changes, subsample
    with stride 2 and zero-pad the new channels, *equally on both sides* of the channel axis
    (planes // 4 before and after) as the widely used community checkpoints do. No parameters,
    so ``plainN`` and ``resnetN`` have exactly the same parameter count.
  * ``"B"``: a 1x1 convolution + BN where the shape changes.

``plainN`` is the same network built by the same code with ``skip=False``.

``norm="none"`` removes every BatchNorm (the convolutions get biases instead) for the
exploding-gradient experiment: without normalisation the He-initialised ResNet's activations
double in variance at every block (Zhang, Dauphin, Ma 2019, "Fixup Initialization", section 2),
and ``init_gain > 1`` scales every convolution's initial weights so that a plain net's signal
grows by that factor per layer. ``zero_init_residual`` is the remedy of Fixup and of Goyal et al.
2017: the last layer of every residual branch starts at zero (BN scale, or the convolution when
there is no BN), so that every block starts as the identity and the depth adds no variance.
Without normalisation it also applies Fixup's rescaling (each branch's first convolution times
L^-1/2, the classifier at zero); ``fixup_rescale=False`` leaves that out, zeroing the last layer
alone -- the control that shows the rescaling is needed at the recipe's learning rate.

Layer names follow the community checkpoints (``conv1``, ``bn1``, ``layer1.0.conv1``,
``linear``) so that they load as they are.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
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
PAPER = "He et al. 2015"
INPUT_SIZE = 32
RELU_AFTER_ADDITION = True  # post-activation: relu(f(x) + x)

# ---------------------------------------------------------------- helpers


class PadShortcut(nn.Module):
    """Option A: stride-2 subsampling and zero channels padded equally on both sides."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_before = (planes - in_planes) // 2
        self.pad_after = planes - in_planes - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


NORMS = ("batch", "none")
SHORTCUTS = ("A", "B")  # A: zero-padded identity (the paper's CIFAR nets), B: 1x1 projection


def make_norm(planes: int, norm: str) -> nn.Module:
    return nn.BatchNorm2d(planes) if norm == "batch" else nn.Identity()


def make_conv(in_planes: int, planes: int, kernel: int, stride: int, norm: str) -> nn.Conv2d:
    # A bias before BatchNorm is cancelled by its mean subtraction; without BN it is needed.
    return nn.Conv2d(
        in_planes, planes, kernel, stride=stride, padding=kernel // 2, bias=norm == "none"
    )


def make_shortcut(
    in_planes: int, planes: int, stride: int, option: str, norm: str = "batch"
) -> nn.Module:
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    if option == "A":
        return PadShortcut(in_planes, planes, stride)
    return nn.Sequential(make_conv(in_planes, planes, 1, stride, norm), make_norm(planes, norm))


# ---------------------------------------------------------------- block


class BasicBlock(SkipBlock):
    """Two 3x3 conv-BN layers; ``relu(f(x) + x)`` with the skip, ``relu(f(x))`` without."""

    relu_after_addition = RELU_AFTER_ADDITION

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        skip: bool = True,
        shortcut: str = "A",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.skip = skip
        self.conv1 = make_conv(in_planes, planes, 3, stride, norm)
        self.bn1 = make_norm(planes, norm)
        self.conv2 = make_conv(planes, planes, 3, 1, norm)
        self.bn2 = make_norm(planes, norm)
        self.relu = nn.ReLU(inplace=True)
        # The plain twin has no shortcut module at all: nothing differs but the skip.
        self.shortcut = make_shortcut(in_planes, planes, stride, shortcut, norm) if skip else None

    def zero_init_last(self) -> None:
        """Start as the identity: zero the branch's last scale (BN), or its last conv without BN."""
        last = self.bn2 if isinstance(self.bn2, nn.BatchNorm2d) else self.conv2
        nn.init.zeros_(last.weight)

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def shortcut_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual_branch(x)
        if self.skip:
            out = out + self.shortcut(x)  # the skip connection: f(x) + x
        return self.relu(out)


def make_stage(
    in_planes: int, planes: int, blocks: int, stride: int, skip: bool, shortcut: str, norm: str
) -> nn.Sequential:
    """``blocks`` basic blocks of width ``planes``; the first takes the stride and the new width."""
    layers = [BasicBlock(in_planes, planes, stride, skip, shortcut, norm)]
    layers += [BasicBlock(planes, planes, 1, skip, shortcut, norm) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- network


def check_options(
    depth: int, skip: bool, shortcut: str, norm: str, init_gain: float, zero_init_residual: bool,
    fixup_rescale: bool = True,
) -> None:
    """One clear error for an option the network cannot be built with."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, 1202...), got {depth}"
        )
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if isinstance(init_gain, bool) or not isinstance(init_gain, (int, float)) or not (
        0 < init_gain <= 100
    ):
        raise ValueError(f"init_gain must be a number in (0, 100], got {init_gain!r}")
    if zero_init_residual and not skip:
        raise ValueError(
            "zero_init_residual needs the skip connection: a plain net whose blocks start at "
            "zero outputs zero; use a resnetN model"
        )
    if not isinstance(fixup_rescale, bool):
        raise ValueError(f"fixup_rescale must be true or false, got {fixup_rescale!r}")
    if not fixup_rescale and not (zero_init_residual and norm == "none"):
        raise ValueError(
            "fixup_rescale=false only changes a net with norm=none and zero_init_residual=true "
            "(Fixup's rescaling applies to no other net); set both, or leave fixup_rescale out"
        )


class CifarResNet(Network):
    def __init__(
        self,
        depth: int,
        num_classes: int = DEFAULT_NUM_CLASSES,
        in_channels: int = 3,
        skip: bool = True,
        shortcut: str = "A",
        widths: tuple[int, int, int] = (16, 32, 64),
        memory_efficient: bool = False,
        norm: str = "batch",
        init_gain: float = 1.0,
        zero_init_residual: bool = False,
        fixup_rescale: bool = True,
    ) -> None:
        super().__init__()
        check_options(depth, skip, shortcut, norm, init_gain, zero_init_residual, fixup_rescale)
        blocks_per_stage = (depth - 2) // 6
        self.memory_efficient = memory_efficient
        self.conv1 = make_conv(in_channels, widths[0], 3, 1, norm)
        self.bn1 = make_norm(widths[0], norm)
        self.relu = nn.ReLU(inplace=True)
        # 32, 16, 8 px: every stage but the first halves the map in its first block
        self.layer1 = make_stage(widths[0], widths[0], blocks_per_stage, 1, skip, shortcut, norm)
        self.layer2 = make_stage(widths[0], widths[1], blocks_per_stage, 2, skip, shortcut, norm)
        self.layer3 = make_stage(widths[1], widths[2], blocks_per_stage, 2, skip, shortcut, norm)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[2], num_classes)
        self._init_weights(init_gain, zero_init_residual, norm, fixup_rescale)

    def _init_weights(
        self, init_gain: float, zero_init_residual: bool, norm: str, fixup_rescale: bool
    ) -> None:
        for module in self.modules():
            # He et al. 2015 (their ref. [13]) initialisation for the convolutions; the
            # classifier keeps PyTorch's default so that the initial loss is about ln(classes).
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                with torch.no_grad():
                    module.weight.mul_(init_gain)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if not zero_init_residual:
            return
        blocks = [block for block in self.modules() if isinstance(block, BasicBlock)]
        for block in blocks:
            block.zero_init_last()
        if norm == "none" and fixup_rescale:
            # Fixup (Zhang et al. 2019, section 3): without normalisation, zeroing the last
            # layer is not enough -- every branch starts to grow at the same step. Fixup
            # also scales the branch's other layers by L^(-1/(2m-2)) (L blocks of m = 2
            # layers: L^-1/2) and starts the classifier at zero.
            with torch.no_grad():
                for block in blocks:
                    block.conv1.weight.mul_(len(blocks) ** -0.5)
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    # forward_features / forward_head / depth_units have the same shape in every family file on
    # purpose: each file reads alone (the `duplicates` tool lists these pairs; they are deliberate).
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3):
            x = run_blocks(stage, x, self.memory_efficient)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.pool(x), 1))

    def depth_units(self) -> list[DepthUnit]:
        return staged_depth_units(
            self,
            stem=DepthUnit("conv1", "stem", nn.ModuleList([self.conv1, self.bn1])),
            stage_names=("layer1", "layer2", "layer3"),
            head=DepthUnit("linear", "head", self.linear),
        )


# ---------------------------------------------------------------- variants

NAMED_DEPTHS = (8, 20, 32, 44, 56, 110, 1202)  # 8: the smallest, for quick runs and tests
VARIANTS: dict[str, dict[str, Any]] = {}
for _depth in NAMED_DEPTHS:
    VARIANTS[f"resnet{_depth}"] = {"depth": _depth, "skip": True}
    VARIANTS[f"plain{_depth}"] = {"depth": _depth, "skip": False}

_DEPTH_NAME = re.compile(r"^(resnet|plain)(\d+)$")


def resolve(name: str) -> dict[str, Any] | None:
    """Any 6n+2 depth (``resnet8``, ``plain26``); a wrong depth gets an error naming the rule."""
    match = _DEPTH_NAME.match(name)
    if match is None:
        return None
    depth = int(match.group(2))
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            f"{name}: CIFAR {match.group(1)} depths are 6n+2 (8, 14, 20, 26, 32, 44, 56, 110, "
            f"1202, ...); ImageNet ResNets are resnet18/34/50/101/152."
        )
    return {"depth": depth, "skip": match.group(1) == "resnet"}


def skip_type(arguments: dict[str, Any]) -> str:
    return "add" if arguments["skip"] else "none"


# build(): the registry's entry point (zoo/models/__init__.py), the same few lines in every family
# file on purpose, so that each file reads alone.
def build(
    variant: dict[str, Any],
    num_classes: int,
    in_channels: int,
    shortcut: str = "A",
    memory_efficient: bool = False,
    norm: str = "batch",
    init_gain: float = 1.0,
    zero_init_residual: bool = False,
    fixup_rescale: bool = True,
    widths: tuple[int, int, int] | list[int] = (16, 32, 64),
) -> CifarResNet:
    return CifarResNet(
        variant["depth"],
        num_classes=num_classes,
        in_channels=in_channels,
        skip=variant["skip"],
        shortcut=shortcut,
        memory_efficient=memory_efficient,
        norm=norm,
        init_gain=init_gain,
        zero_init_residual=zero_init_residual,
        fixup_rescale=fixup_rescale,
        widths=stage_widths(widths),
    )
