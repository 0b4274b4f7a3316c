"""What every network in the zoo shares, so that measurement code works on all of them.

Every network built by :func:`zoo.create` is a plain ``torch.nn.Module`` (a :class:`Network`)
that provides

* ``forward_features(x)`` / ``forward_head(x)``: the body and the classifier (timm's split);
* ``depth_units()``: its *layer units in depth order* (stem, every residual block, dense layer or
  transition, head) as :class:`DepthUnit` records. Gradient-flow and residual-gain callbacks,
  the lesion experiment and the benchmarks read the network through this list only.

Blocks with a skip connection (or the plain twin of one) subclass :class:`SkipBlock`, whose
``residual_branch(x)`` is the ``f(x)`` of ``f(x) + x`` and whose ``skip`` flag is the one switch
that turns a residual network into its plain twin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class DepthUnit:
    """One layer unit of a network, in the order the forward pass visits it."""

    name: str  # qualified module name, e.g. "layer2.3"; state-dict keys start with it
    stage: str  # "stem", "layer1".."layer4" / "dense1".., "head"
    module: nn.Module


class Network(nn.Module):
    """A zoo network: ``forward(x) = forward_head(forward_features(x))``, plus ``depth_units()``."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def depth_units(self) -> list[DepthUnit]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class SkipBlock(nn.Module):
    """A block computing ``post(f(x) + shortcut(x))``; ``skip=False`` gives the plain twin."""

    skip: bool
    # True: a ReLU follows the sum (He et al. 2015); False: the block ends in the sum (or, in a
    # ViT, post-LN's norm). The lesion experiment keeps it when it deletes the branch.
    relu_after_addition: bool

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def shortcut_branch(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def run_blocks(blocks: nn.Module, x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """Run ``blocks`` in order; with ``checkpointed`` keep only block inputs for backward.

    Activation checkpointing (Chen et al. 2016) recomputes each block's inside during backward,
    trading about one extra forward pass for the memory of every intermediate activation.
    """
    for block in blocks:
        if checkpointed and torch.is_grad_enabled():
            x = checkpoint_module(block, x, module=block)
        else:
            x = block(x)
    return x


@contextmanager
def _batchnorm_statistics_frozen(module: nn.Module) -> Iterator[None]:
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [
        (m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for m in norms
        if m.track_running_stats and m.running_mean is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


def checkpoint_module(
    function: Callable[..., torch.Tensor], *inputs: torch.Tensor, module: nn.Module
) -> torch.Tensor:
    """``checkpoint(function, *inputs)`` whose backward recomputation leaves BN running stats alone.

    Plain ``torch.utils.checkpoint`` runs a training-mode BatchNorm twice (forward and
    recompute), so running statistics take two momentum steps per batch and a checkpointed
    network drifts from the normal one in eval mode. ``module`` owns the BNs ``function`` uses.
    """
    return checkpoint(
        function,
        *inputs,
        use_reentrant=False,
        context_fn=lambda: (nullcontext(), _batchnorm_statistics_frozen(module)),
    )


def staged_depth_units(
    net: nn.Module, stem: DepthUnit, stage_names: tuple[str, ...], head: DepthUnit
) -> list[DepthUnit]:
    """Stem, every block of each ``nn.Sequential`` stage in order, head: a ResNet's depth units."""
    units = [stem]
    for stage_name in stage_names:
        for index, block in enumerate(getattr(net, stage_name)):
            units.append(DepthUnit(f"{stage_name}.{index}", stage_name, block))
    return units + [head]


def stage_widths(widths: Sequence[int]) -> tuple[int, int, int]:
    """The filters of a CIFAR net's three stages, checked. Narrower nets (e.g. 4/8/16) keep the
    depth -- what the degradation and 1000-layer experiments are about -- at a fraction of the
    cost."""
    if len(widths) != 3 or not all(isinstance(w, int) and w >= 1 for w in widths):
        raise ValueError(
            f"widths must be three whole numbers >= 1 (filters per stage), got {widths!r}"
        )
    return tuple(widths)  # type: ignore[return-value]


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
