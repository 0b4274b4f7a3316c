"""Memory of a training step: what the benchmarks and the memory experiment measure.

* :func:`peak_step_memory` -- peak MiB of one step: parameters + optimizer state + everything the
  step allocates (gradients, activations, workspaces). On CUDA ``torch.cuda.max_memory_allocated``
  over the step; on the CPU, where ``tracemalloc`` does not see torch's allocator, torch's
  ``MemTracker`` (``torch.distributed._tools.mem_tracker``, a dispatch-mode tracker of every
  tensor storage).
* :func:`saved_tensor_bytes` -- the part of that peak that skips and activation checkpointing
  change: the storages kept from the forward pass for the backward pass.
* :func:`static_bytes` -- parameters, buffers and optimizer state: what a step starts from.

Plain functions, no Lightning: callbacks, experiments and benchmarks call them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

MiB = 2**20


def static_bytes(net: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of parameters, buffers and optimizer state: what a step starts from."""
    tensors = list(net.parameters()) + list(net.buffers())
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def cuda_peak_step_memory(step: Callable[[], None], net: nn.Module,
                          optimizer: torch.optim.Optimizer, device: torch.device) -> float:
    """Peak MiB of ``step()`` on a CUDA device, static tensors included."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before + static_bytes(net, optimizer)
    return peak / MiB


def cpu_peak_step_memory(step: Callable[[], None], net: nn.Module,
                         optimizer: torch.optim.Optimizer) -> float | None:
    """Peak MiB of ``step()`` on the CPU by torch's storage tracker; None on torch < 2.5."""
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:  # torch < 2.5
        return None
    tracker = MemTracker()
    # Parameters and optimizer state exist before the step; the tracker must see them too.
    tracker.track_external(net, optimizer)
    with tracker:
        step()
    snapshot = tracker.get_tracker_snapshot("peak")
    total = sum(stats.get("Total", 0) for dev, stats in snapshot.items()
                if torch.device(dev).type == "cpu")
    return total / MiB


def peak_step_memory(step: Callable[[], None], net: nn.Module, optimizer: torch.optim.Optimizer,
                     device: torch.device) -> tuple[float | None, str]:
    """Peak MiB of one training step (parameters + optimizer state + everything the step
    allocates) and how it was measured (None and the reason where it cannot be)."""
    if device.type == "cuda":
        return (cuda_peak_step_memory(step, net, optimizer, device),
                "torch.cuda.max_memory_allocated")
    peak = cpu_peak_step_memory(step, net, optimizer)
    if peak is None:
        return None, "unavailable (torch.distributed._tools.mem_tracker missing)"
    return peak, "torch MemTracker (dispatch-mode storage tracker)"


def saved_tensor_bytes(step: Callable[[], None], net: nn.Module) -> int:
    """Bytes of distinct storages kept for backward while ``step()`` runs forward and backward.

    Counted: every tensor autograd saves (``saved_tensors_hooks``), plus the input of every depth
    unit, which activation checkpointing keeps alive outside autograd's saved tensors (inputs
    already saved are not counted twice: storages are counted once each). Not counted: the
    parameters and buffers that autograd also saves (a convolution keeps its weight), which
    exist whatever the mode -- so the figure is the activation memory alone. ``net`` must have
    ``depth_units()`` (every zoo network has).
    """
    storages: dict[int, int] = {}
    weights = {t.untyped_storage().data_ptr() for t in [*net.parameters(), *net.buffers()]}

    def remember(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        remember(tensor)
        return tensor

    def unit_input(module: nn.Module, args: tuple[Any, ...]) -> None:
        for arg in args:
            for tensor in arg if isinstance(arg, (list, tuple)) else (arg,):
                if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                    remember(tensor)

    handles = [unit.module.register_forward_pre_hook(unit_input) for unit in net.depth_units()]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            step()
    finally:
        for handle in handles:
            handle.remove()
    return sum(storages.values())
