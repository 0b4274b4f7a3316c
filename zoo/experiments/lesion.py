"""Lesion: a trained residual net can do without a block; a plain net cannot.

Veit, Wilber, Belongie 2016, "Residual Networks Behave Like Ensembles of Relatively Shallow
Networks": deleting one block of a trained ResNet-110 barely changes its CIFAR-10 error
(Figure 3, except the downsampling blocks), and the error grows smoothly with the number k of
blocks deleted at random (Figure 5); the same deletion ruins a plain (VGG-style) net.

Measured on a trained checkpoint in eval mode (optionally in bf16 autocast), by default on the
whole test split:

* every block deleted in turn (:func:`lesion_network`);
* k of the non-downsampling blocks deleted at once, several seeded random draws per k
  (:func:`random_deletions`, :func:`lesion_random`), seeded by the run's own training seed so
  that the seeds of a sweep are independent samples; a plain and a residual net of the same
  depth and seed get the same draws, since the blocks that can be deleted are at the same places.

Two additions per block: a control that re-estimates the BatchNorm statistics after the
deletion on training images (:func:`reestimated_batchnorm`: is the block's computation needed, or
were the layers after it only calibrated to its output statistics?), and the block's residual
gain ``||f(x)|| / ||x||``, to set "a block that learned to do little" against its deletion's cost.

A deleted residual block keeps its shortcut (``relu(shortcut(x))``, :class:`ShortcutOnly`); a
deleted plain block is bypassed (the identity), which only a block that keeps the shape allows.
Figures: :mod:`zoo.experiments.lesion_figures`.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from zoo.measure.gradients import residual_gains
from zoo.models.common import DepthUnit, SkipBlock

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]
SINGLE_COLUMNS = ["run", "model", "skip", "seed", "split", "images", "chance", "unit_index",
                  "unit_name", "stage", "downsampling", "deleted", "residual_gain", "accuracy",
                  "control_images", "accuracy_bn_reestimated"]
RANDOM_COLUMNS = ["run", "model", "skip", "seed", "split", "images", "chance", "k", "draw",
                  "deleted_units", "accuracy"]


class LesionError(ValueError):
    """The unit cannot be deleted (it changes the shape, or it is the stem or the head)."""


class ShortcutOnly(nn.Module):
    """A residual block with its residual branch deleted: ``post(shortcut(x))``.

    ``post`` is what the block applies after its addition: a ReLU for the post-activation
    blocks of He et al. 2015 (``relu(f(x) + x)``), nothing for pre-activation blocks (He et al.
    2016, ``x + f(x)``). For an identity shortcut the ReLU changes nothing, since ``x`` is the
    output of the previous block's ReLU and so already non-negative; for a projection shortcut
    (option B, ImageNet ``downsample``) it is the same ReLU the intact block would apply.
    The original block is referenced, not registered: the lesioned network's state dict holds
    only what is still in use.
    """

    def __init__(self, block: SkipBlock, relu_after_addition: bool) -> None:
        super().__init__()
        self.__dict__["block"] = block
        self.relu_after_addition = relu_after_addition

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block.shortcut_branch(x)
        if hasattr(self.block, "after_addition"):  # a block that says what follows its sum:
            return self.block.after_addition(out)  # a ViT sub-block (post-LN's norm, or nothing)
        return torch.relu(out) if self.relu_after_addition else out


def keeps_shape(module: nn.Module) -> bool:
    """True when the block maps its input to an output of the same shape (stride 1, same width)."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return True
    strided = any(s != 1 for conv in convs for s in conv.stride)
    return not strided and convs[0].in_channels == convs[-1].out_channels


def replacement_for(unit: DepthUnit) -> nn.Module:
    """What a deleted unit becomes: the shortcut alone (residual) or the identity (plain)."""
    module = unit.module
    if unit.stage in ("stem", "head"):
        raise LesionError(f"{unit.name}: the {unit.stage} cannot be deleted")
    if isinstance(module, SkipBlock):
        if module.skip:
            # the block says what follows its sum (its family's RELU_AFTER_ADDITION)
            return ShortcutOnly(module, module.relu_after_addition)
        if keeps_shape(module):
            return nn.Identity()  # the plain block is bypassed
        raise LesionError(f"{unit.name}: a plain block that changes the shape cannot be bypassed")
    raise LesionError(f"{unit.name}: {type(module).__name__} changes the number of channels "
                      f"(a dense layer or transition) and cannot be deleted")


@contextmanager
def lesioned(net: nn.Module, *unit_names: str) -> Iterator[nn.Module]:
    """Delete the depth units ``unit_names`` of ``net`` for the duration of the ``with`` block;
    yields the (last) replacement module.

    Each unit's module is swapped in its parent for :func:`replacement_for`'s module and put
    back on exit (also on an exception): weights, buffers and outputs are as before.
    """
    units = {unit.name: unit for unit in net.depth_units()}
    missing = [name for name in unit_names if name not in units]
    if missing or not unit_names:
        raise KeyError(f"{missing or 'nothing'} to delete; depth units: {', '.join(units)}")
    replacements = [replacement_for(units[name]) for name in unit_names]  # refuse before swapping
    with ExitStack() as undo:
        for name, replacement in zip(unit_names, replacements, strict=True):
            parent_name, _, child_name = name.rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
            original = parent._modules[child_name]
            parent._modules[child_name] = replacement
            undo.callback(parent._modules.__setitem__, child_name, original)
        yield replacements[-1]


def deletable_blocks(net: nn.Module) -> list[str]:
    """The blocks Veit et al. delete at random: skip blocks (or their plain twins) that keep the
    shape -- every block but the downsampling ones -- in depth order."""
    return [u.name for u in net.depth_units()
            if isinstance(u.module, SkipBlock) and keeps_shape(u.module)]


def random_deletions(blocks: Sequence[str], max_deleted: int, draws: int,
                     seed: int | str = 0) -> list[tuple[int, int, tuple[str, ...]]]:
    """``(k, draw, blocks to delete)`` for k = 1..max_deleted: ``draws`` distinct random sets of
    k blocks per k (all of them when there are fewer), each set in depth order.

    Seeded per (seed, k), so that the sets for one k do not depend on ``max_deleted``.
    """
    order = {name: index for index, name in enumerate(blocks)}
    plan = []
    for k in range(1, min(max_deleted, len(blocks)) + 1):
        if math.comb(len(blocks), k) <= draws:
            chosen = list(itertools.combinations(blocks, k))
        else:
            rng, found = random.Random(f"{seed}:{k}"), {}
            while len(found) < draws:
                found[tuple(sorted(rng.sample(list(blocks), k), key=order.__getitem__))] = None
            chosen = list(found)
        plan += [(k, draw, names) for draw, names in enumerate(chosen)]
    return plan


def accuracy(net: nn.Module, batches: Batches, bf16: bool = False) -> float:
    """Top-1 accuracy in eval mode; ``bf16`` runs the forward pass under bf16 autocast."""
    net.eval()
    correct = total = 0
    with torch.inference_mode():
        for images, labels in batches:
            with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = net(images)
            correct += int((logits.argmax(1) == labels).sum())
            total += int(labels.numel())
    return correct / max(1, total)


@contextmanager
def reestimated_batchnorm(net: nn.Module, batches: Batches | None,
                          bf16: bool = False) -> Iterator[None]:
    """BatchNorm running statistics re-estimated on ``batches`` (cumulative averages, train-mode
    forward passes without gradients) for the ``with`` block, then put back with every module's
    mode; weights are untouched. Nothing happens when ``batches`` is None."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if batches is None or not norms:
        yield
        return
    saved = [(m, m.momentum, {k: b.clone() for k, b in m.named_buffers(recurse=False)})
             for m in norms]
    modes = [(module, module.training) for module in net.modules()]
    try:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over all calibration batches
        net.train()
        with torch.no_grad():
            for images, _ in batches:
                with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
                    net(images)
        net.eval()
        yield
    finally:
        for norm, momentum, buffers in saved:
            norm.momentum = momentum
            for key, value in buffers.items():
                getattr(norm, key).copy_(value)
        for module, training in modes:
            module.training = training


def _gains(net: nn.Module, batches: Batches) -> dict[int, float]:
    """Residual gain ||f(x)|| / ||x|| of each block with a skip, by unit index, over ``batches``."""
    totals: dict[int, float] = {}
    for images, _ in batches:
        for index, _unit, gain in residual_gains(net, images):
            totals[index] = totals.get(index, 0.0) + gain * len(images)
    count = sum(len(images) for images, _ in batches)
    return {index: total / count for index, total in totals.items()}


def lesion_network(net: nn.Module, batches: Batches, bf16: bool = False,
                   calibration: Batches | None = None, gain_batches: Batches | None = None,
                   control_batches: Batches | None = None) -> list[dict[str, Any]]:
    """Accuracy with each unit deleted in turn; ``unit_index`` -1 is the intact network.

    With ``calibration`` batches, each row also has ``accuracy_bn_reestimated``: the same
    network (intact or lesioned) with its BatchNorm statistics re-estimated on them, evaluated
    on ``control_batches`` (default ``batches``). With ``gain_batches``, each residual block's
    row has its ``residual_gain`` (NaN otherwise).
    """
    def measure() -> dict[str, float]:
        result = {"accuracy": accuracy(net, batches, bf16), "accuracy_bn_reestimated": math.nan}
        if calibration is not None:
            with reestimated_batchnorm(net, calibration, bf16):
                result["accuracy_bn_reestimated"] = accuracy(net, control_batches or batches,
                                                             bf16)
        return result

    gains = _gains(net, gain_batches) if gain_batches is not None else {}
    rows = [{"unit_index": -1, "unit_name": "none", "stage": "", "downsampling": False,
             "deleted": "intact", "residual_gain": math.nan, **measure()}]
    for index, unit in enumerate(net.depth_units()):
        if unit.stage in ("stem", "head"):
            continue
        row = {"unit_index": index, "unit_name": unit.name, "stage": unit.stage,
               "downsampling": not keeps_shape(unit.module),
               "residual_gain": gains.get(index, math.nan)}
        try:
            with lesioned(net, unit.name) as replacement:
                kind = "shortcut only" if isinstance(replacement, ShortcutOnly) else "bypassed"
                rows.append({**row, "deleted": kind, **measure()})
        except LesionError:
            rows.append({**row, "deleted": "cannot be deleted", "accuracy": math.nan,
                         "accuracy_bn_reestimated": math.nan})
    return rows


def lesion_random(net: nn.Module, batches: Batches, max_deleted: int, draws: int,
                  seed: int | str = 0, bf16: bool = False) -> list[dict[str, Any]]:
    """Accuracy with k random non-downsampling blocks deleted; k = 0 is the intact network."""
    rows = [{"k": 0, "draw": 0, "deleted_units": "", "accuracy": accuracy(net, batches, bf16)}]
    for k, draw, names in random_deletions(deletable_blocks(net), max_deleted, draws, seed):
        with lesioned(net, *names):
            rows.append({"k": k, "draw": draw, "deleted_units": " ".join(names),
                         "accuracy": accuracy(net, batches, bf16)})
    return rows
