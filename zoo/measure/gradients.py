"""Gradient norms per depth unit and the residual gain of every block.

What a skip connection does shows in two numbers measured per *depth unit* (stem, every residual
block / dense layer / transition, head; see ``depth_units()`` in :mod:`zoo.models.common`):

* the gradient norm as a function of depth (He et al. 2015, section 4.1; Glorot & Bengio 2010):
  in a deep plain net the stem's gradient is orders of magnitude away from the head's (smaller
  without normalisation; with BatchNorm, larger), in a ResNet it stays within a small factor;
* the residual gain ||f(x)|| / ||x|| of every block (He et al. 2016, "Identity Mappings"; Veit
  et al. 2016): near 0, a block has learned to pass its input through unchanged.

Gradient norms are computed on the device from ``p.grad`` (no module hooks, so ``torch.compile``
is unaffected), always in fp32 whatever the gradients' dtype, so that bf16 and fp32 training read
the same; nothing here copies to the host. Plain classes and functions, no Lightning: the
callbacks, the experiments and the benchmarks share them.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zoo.models.common import DepthUnit, SkipBlock


def network_of(module: nn.Module) -> nn.Module:
    """The zoo network inside a training module (its ``.net``), unwrapped from torch.compile."""
    net = getattr(module, "net", module)
    # torch.compile returns an OptimizedModule that shares parameters with the original module.
    return getattr(net, "_orig_mod", net)


def depth_units_of(net: nn.Module) -> list[DepthUnit]:
    """``net.depth_units()``; for a network outside the zoo, its top-level children with
    parameters."""
    if hasattr(net, "depth_units"):
        return list(net.depth_units())
    return [
        DepthUnit(name, "body", child)
        for name, child in net.named_children()
        if any(True for _ in child.parameters())
    ]


@dataclass
class GradientNorms:
    """L2 gradient norms in fp32, still on the device: one host copy per measurement happens
    later."""

    units: torch.Tensor  # [num_units], depth order
    parameters: torch.Tensor  # [num_parameters]; 0 for a parameter without a gradient
    total: torch.Tensor  # [] over every parameter of the network


class GradientNormMeter:
    """Per-unit and per-parameter gradient norms of a network, computed without a host sync.

    A unit's norm is sqrt(sum of squared gradient entries over all its parameters). Parameters
    outside every unit (none in the zoo's networks) count in the total only.
    """

    def __init__(self, net: nn.Module) -> None:
        self.units = depth_units_of(net)
        names = {id(parameter): name for name, parameter in net.named_parameters()}
        self.parameter_names: list[str] = []
        self.parameters: list[nn.Parameter] = []
        self.unit_of_parameter: list[int] = []
        seen: set[int] = set()
        for unit_index, unit in enumerate(self.units):
            for parameter in unit.module.parameters():
                if id(parameter) not in seen:
                    seen.add(id(parameter))
                    self.parameters.append(parameter)
                    self.parameter_names.append(names.get(id(parameter), f"{unit.name}.?"))
                    self.unit_of_parameter.append(unit_index)
        for name, parameter in net.named_parameters():
            if id(parameter) not in seen:
                self.parameters.append(parameter)
                self.parameter_names.append(name)
                self.unit_of_parameter.append(len(self.units))  # the "outside" bucket
        self._index_cache: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def measure(self) -> GradientNorms | None:
        """Norms of the current ``p.grad``; None when no parameter has a gradient."""
        present = [i for i, p in enumerate(self.parameters) if p.grad is not None]
        if not present:
            return None
        # fp32 *before* the norm: a bf16 gradient's squared sum in bf16 keeps 3 significant
        # digits and loses the small units. fp32 gradients (fp32 weights, also under
        # bf16-mixed autocast) are used as they are, without a copy.
        grads = [self.parameters[i].grad.float() for i in present]
        device = grads[0].device
        # One fused kernel per device/dtype group, as clip_grad_norm_ does.
        norms = torch.stack([n.to(device) for n in torch._foreach_norm(grads)])
        key = tuple(present)
        if key not in self._index_cache:
            units = torch.tensor([self.unit_of_parameter[i] for i in present], device=device)
            positions = torch.tensor(present, device=device)
            self._index_cache = {key: (units, positions)}  # the present set rarely changes
        units, positions = self._index_cache[key]
        squares = norms.square()
        unit_squares = torch.zeros(len(self.units) + 1, device=device).index_add_(0, units, squares)
        parameter_norms = torch.zeros(len(self.parameters), device=device)
        parameter_norms.index_copy_(0, positions, norms)
        return GradientNorms(unit_squares[:-1].sqrt(), parameter_norms, squares.sum().sqrt())


class SharedGradientNorms:
    """One gradient measurement per backward pass, for every reader of it.

    The gradient-flow view and the explosion guard both need the norms of a step; whoever asks
    first measures, the other reads the same tensors. Whoever sees new gradients (after every
    backward) calls :meth:`gradients_changed`. The meter is rebuilt when asked about another
    network (a new module trained with the same callbacks).
    """

    def __init__(self) -> None:
        self._network: weakref.ref[nn.Module] | None = None
        self._meter: GradientNormMeter | None = None
        self._norms: GradientNorms | None = None
        self._fresh = False  # whether ``_norms`` belong to the gradients of the latest backward

    def meter(self, net: nn.Module) -> GradientNormMeter:
        """The meter of ``net`` (built on first use)."""
        if self._meter is None or self._network is None or self._network() is not net:
            self._network, self._meter, self._fresh = (weakref.ref(net), GradientNormMeter(net),
                                                       False)
        return self._meter

    def gradients_changed(self) -> None:
        """Forget the measurement: new gradients exist."""
        self._fresh = False

    def current(self, net: nn.Module) -> tuple[GradientNormMeter, GradientNorms | None]:
        """The meter of ``net`` and the norms of its current gradients, measured once."""
        meter = self.meter(net)
        if not self._fresh:
            self._norms, self._fresh = meter.measure(), True
        return meter, self._norms


def residual_gains(net: nn.Module, probe: torch.Tensor) -> list[tuple[int, DepthUnit, float]]:
    """(unit index, unit, ||f(x)|| / ||x||) of every block with an active skip connection.

    ``x`` is the block's input as the forward pass delivers it, ``f`` its
    ``residual_branch``; the ratio is taken per sample and averaged over the probe batch, so
    that a few large-norm images do not dominate it. Runs ``net`` once in eval mode under
    ``no_grad`` (batch-norm running statistics untouched) and restores every module's mode.
    Plain blocks (``skip=False``) and concatenation blocks have no gain and are left out.
    """
    units = depth_units_of(net)
    blocks = [
        (index, unit)
        for index, unit in enumerate(units)
        if isinstance(unit.module, SkipBlock) and unit.module.skip
    ]
    if not blocks:
        return []
    gains: dict[int, torch.Tensor] = {}

    def capture(index: int):
        def hook(block: SkipBlock, args: tuple[Any, ...]) -> None:
            x = args[0]
            # A clone: a branch that starts with an in-place op must not change the real input.
            branch = block.residual_branch(x.clone())
            # fp32 norms, as for gradients: bf16 and fp32 runs read the same gains.
            branch_norm = branch.flatten(1).float().norm(dim=1)
            input_norm = x.flatten(1).float().norm(dim=1).clamp_min(1e-12)
            gains[index] = (branch_norm / input_norm).mean()

        return hook

    handles = [unit.module.register_forward_pre_hook(capture(index)) for index, unit in blocks]
    modes = [(module, module.training) for module in net.modules()]
    try:
        net.eval()
        with torch.no_grad():
            net(probe)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    values = torch.stack([gains[index] for index, _ in blocks]).tolist()
    return [(index, unit, value) for (index, unit), value in zip(blocks, values, strict=True)]
