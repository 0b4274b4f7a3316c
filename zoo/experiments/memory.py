"""Memory: an identity addition costs no memory, a concatenation does.

For each net, at a fixed batch of random 3x32x32 images (batch 64 by default):

* ``train_peak_mb`` -- peak memory of one SGD training step (forward, backward, update) after a
  warm-up step: parameters + gradients + momentum + everything the step allocates;
* ``inference_peak_mb`` -- peak memory of one forward pass in eval mode under
  ``torch.inference_mode`` (parameters + the activations alive at once; nothing kept for
  backward);
* ``saved_for_backward_mb`` -- the part of the training peak that skips and checkpointing
  change: the bytes of the distinct storages kept from the forward pass for the backward pass
  (what autograd saves, ``torch.autograd.graph.saved_tensors_hooks``, plus the block inputs
  that activation checkpointing keeps), without the weights autograd also saves;
* ``weights_mb`` -- parameters and buffers, for scale.

Peaks are measured as the benchmark measures them (:mod:`zoo.measure.memory`:
``torch.cuda.max_memory_allocated`` on CUDA, torch's dispatch-mode memory tracker on CPU).
Every net is measured as built and with ``memory_efficient=True`` (activation checkpointing,
Pleiss et al. 2017 for DenseNets), and the DenseNet-BC family at several depths (growth rate
12, 6n+4 layers) shows how concatenation's memory grows with depth.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo.measure.memory import MiB, peak_step_memory, saved_tensor_bytes

# Plain vs residual vs dense at comparable size: 56-layer twins (0.85M parameters) against
# DenseNet-40 (1.0M) and DenseNet-BC-100 (0.8M).
MEMORY_MODELS = ("plain56", "resnet56", "densenet40_12", "densenet_bc_100_12")
DENSE_DEPTHS = (40, 64, 100, 136)  # DenseNet-BC-{depth}-12: (depth - 4) / 6 layers per block
MEMORY_FILE = "memory.csv"
MEMORY_COLUMNS = ["model", "skip", "depth", "memory_efficient", "group", "device", "batch_size",
                  "image_size", "parameters", "weights_mb", "train_peak_mb", "inference_peak_mb",
                  "saved_for_backward_mb", "step_time_ms", "measured_by"]


def dense_series_name(depth: int) -> str:
    """The net of the depth series at ``depth``: DenseNet-BC-{depth}-12 (the registry resolves
    any depth 6n+4: n bottleneck layers per dense block)."""
    return f"densenet_bc_{depth}_12"


def in_dense_series(row: dict[str, Any]) -> bool:
    """Whether a row is a point of the depth series: the net the series builds at its depth (the
    comparison's DenseNet-BC-100-12 is one too, measured once)."""
    return row["model"] == dense_series_name(int(row["depth"]))


def build_net(name: str, memory_efficient: bool, in_channels: int = 3) -> nn.Module:
    """A registered net with 10 classes; ``densenet_bc_{depth}_12`` builds DenseNet-BC-k12 at any
    depth 6n+4 (the registry resolves it: n bottleneck layers per dense block)."""
    return zoo.create(name, num_classes=10, in_channels=in_channels,
                      memory_efficient=memory_efficient)


def timed(step: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Median seconds of ``step()`` over ``repeats`` calls, synchronising a GPU around each."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_memory(name: str, memory_efficient: bool, batch_size: int = 64, image_size: int = 32,
                   in_channels: int = 3, steps: int = 3, device: str = "cpu") -> dict[str, Any]:
    """One tidy row: training and inference peaks, activations kept, median step time."""
    from zoo.results.style import depth_of, family_of

    torch.manual_seed(0)
    where = torch.device(device)
    net = build_net(name, memory_efficient, in_channels).to(where).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch_size, in_channels, image_size, image_size, device=where)
    labels = torch.randint(0, 10, (batch_size,), device=where)

    def forward_backward() -> None:
        F.cross_entropy(net(images), labels).backward()

    def step() -> None:
        optimizer.zero_grad()  # gradients are freed and allocated again by backward, as in training
        forward_backward()
        optimizer.step()

    def inference() -> None:
        with torch.inference_mode():
            net(images)

    step()  # warm-up: momentum buffers exist from here on, as in training
    train_peak, measured_by = peak_step_memory(step, net, optimizer, where)
    saved = saved_tensor_bytes(forward_backward, net)
    step_seconds = timed(step, steps, where)
    optimizer.zero_grad(set_to_none=True)  # inference holds no gradients
    net.eval()
    # ... and no optimizer state: an optimizer that never stepped adds nothing to the peak.
    unused = torch.optim.SGD(net.parameters(), lr=0.0)
    inference_peak, _ = peak_step_memory(inference, net, unused, where)
    weights = sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])
    return {
        "model": name, "skip": family_of(name), "depth": depth_of(name),
        "memory_efficient": memory_efficient, "device": where.type, "batch_size": batch_size,
        "image_size": image_size, "parameters": zoo.count_parameters(net),
        "weights_mb": weights / MiB,
        "train_peak_mb": math.nan if train_peak is None else train_peak,
        "inference_peak_mb": math.nan if inference_peak is None else inference_peak,
        "saved_for_backward_mb": saved / MiB, "step_time_ms": 1000 * step_seconds,
        "measured_by": measured_by,
    }


def memory_rows(models: Sequence[str], dense_depths: Sequence[int],
                report: Callable[[dict], None] = print, **sizes: Any) -> list[dict[str, Any]]:
    """Every net of ``models`` (group ``comparison``) and DenseNet-BC-{depth}-12 for each depth
    (group ``densenet_depth``), each as built and memory-efficient; a net in both is measured
    once."""
    plan = [(name, "comparison") for name in models]
    plan += [(dense_series_name(d), "densenet_depth") for d in dense_depths
             if dense_series_name(d) not in models]
    rows = []
    for name, group in plan:
        for efficient in (False, True):
            rows.append({**measure_memory(name, efficient, **sizes), "group": group})
            report(rows[-1])
    return rows


# ---------------------------------------------------------------- figure (from tidy rows)


def memory_finding(rows: Sequence[dict[str, Any]]) -> str:
    """Training peak of each comparison net relative to the first one (as built)."""
    built = [r for r in rows if r["group"] == "comparison" and not r["memory_efficient"]]
    if not built:
        return "Peak memory"
    base = built[0]
    parts = [f"{r['model']} {r['train_peak_mb'] / base['train_peak_mb']:.2f}x" for r in built[1:]]
    return f"Training peak against {base['model']}: " + ", ".join(parts)


def _draw_comparison(axis: Any, rows: Sequence[dict[str, Any]]) -> None:
    from zoo.results.style import colour_for

    compared = [r for r in rows if r["group"] == "comparison"]
    labels = [r["model"] + (" (mem-eff)" if r["memory_efficient"] else "") for r in compared]
    positions = range(len(compared))
    for offset, key, hatch in ((-0.2, "train_peak_mb", ""), (0.2, "inference_peak_mb", "//")):
        axis.barh([p + offset for p in positions], [r[key] for r in compared], height=0.4,
                  hatch=hatch, color=[colour_for(r["model"]) for r in compared], edgecolor="white",
                  alpha=0.55 if hatch else 1.0, label=key.replace("_mb", "").replace("_", " "))
    axis.set_yticks(list(positions), labels)
    axis.invert_yaxis()
    axis.set(xlabel="peak memory (MiB)", title=memory_finding(rows))


def _draw_dense_depth(axis: Any, rows: Sequence[dict[str, Any]]) -> None:
    dense = sorted((r for r in rows if in_dense_series(r)), key=lambda r: r["depth"])
    for efficient, style in ((False, "-"), (True, ":")):
        mine = [r for r in dense if r["memory_efficient"] == efficient]
        name = "memory-efficient" if efficient else "as built"
        axis.plot([r["depth"] for r in mine], [r["saved_for_backward_mb"] for r in mine],
                  marker="o", linestyle=style, color="#637939", label=f"activations kept, {name}")
        axis.plot([r["depth"] for r in mine], [r["train_peak_mb"] for r in mine], marker="s",
                  linestyle=style, color="#843c39", label=f"training peak, {name}")
    title = "DenseNet-BC-k12 memory against depth"
    if len(dense) >= 2:
        built = [r for r in dense if not r["memory_efficient"]]
        low, high = built[0], built[-1]
        title = (f"DenseNet-BC-k12, depth {low['depth']} -> {high['depth']}: activations kept "
                 f"x{high['saved_for_backward_mb'] / low['saved_for_backward_mb']:.2g}")
    axis.set(xlabel="depth (layers)", ylabel="MiB", title=title)


def plot_memory(rows: Sequence[dict[str, Any]], out_dir: Path) -> Path:
    """Training and inference peaks of the comparison nets (left); DenseNet-BC memory against
    depth, as built (solid) and memory-efficient (dotted) (right, when measured)."""
    from zoo.results.style import legend, plt, save

    has_depths = len({r["depth"] for r in rows if in_dense_series(r)}) >= 2
    panels = 1 + has_depths
    figure, axes = plt.subplots(1, panels, figsize=(7.0 * panels, 5.0), squeeze=False,
                                layout="constrained")
    _draw_comparison(axes[0, 0], rows)
    if has_depths:
        _draw_dense_depth(axes[0, 1], rows)
    for axis in axes[0]:
        legend(axis)
    first = rows[0]
    figure.suptitle(f"Memory of one training step and one inference forward pass, batch "
                    f"{first['batch_size']} x {first['image_size']} px, {first['device']}")
    return save(figure, out_dir / "memory.png")
