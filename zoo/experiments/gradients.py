"""Gradient at initialisation: without skips the gradient at the stem loses touch with the loss.

He et al. 2015, section 4.1; Glorot & Bengio 2010. One forward/backward pass of a freshly
initialised net in training mode (BatchNorm on batch statistics, as in the first step of
training) on a small batch of N(0, 1) images with random labels; the L2 gradient norm of every
depth unit (``net.depth_units()``: stem, blocks / dense layers, head), per seed.

The number to watch is the **stem / head ratio**: the stem and the head have the same
parameters at every depth, so their ratio says how much the path between them distorts the
gradient. Without BatchNorm a plain net's ratio falls towards 0 with depth (vanishing); with
BatchNorm it grows instead (Yang et al. 2019, "A Mean Field Theory of Batch Normalization");
a ResNet's stays near 1. The ratio is taken per seed, then averaged (mean ± std over seeds).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo.measure.gradients import GradientNormMeter

# plainN / resnetN depths (6n+2); 1202 is the paper's deepest.
GRADIENT_DEPTHS = (8, 20, 32, 44, 56, 110, 218, 1202)
# (model name, curve label, depth) of the comparison nets, which exist with BatchNorm only.
OTHER_NETS = (
    ("preact_plain110", "pre-act plain", 110),
    ("preact_resnet110", "pre-act ResNet", 110),
    ("preact_resnet164", "pre-act ResNet", 164),
    ("densenet40_12", "DenseNet (concat)", 40),
    ("densenet_bc_100_12", "DenseNet (concat)", 100),
)
GRADIENT_COLUMNS = ["model", "family", "norm", "depth", "seed", "unit_index", "unit_name", "stage",
                    "grad_norm"]
SUMMARY_COLUMNS = ["model", "family", "norm", "depth", "seeds", "first_unit_grad_norm",
                   "first_unit_grad_norm_std", "head_grad_norm", "first_over_head",
                   "stem_over_head_mean", "stem_over_head_std"]
# The CIFAR nets' ``norm`` option: without BatchNorm the textbook picture returns -- the plain
# net's gradient vanishes toward the input and the ResNet's activations (and gradients) grow by
# about 2x in variance per block (Zhang et al. 2019, "Fixup", section 2).
NORM_SUFFIX = {"batch": "", "none": " (no norm)"}

Net = tuple[str, str, int] | tuple[str, str, int, dict[str, Any]]


def gradient_nets(
    depths: Sequence[int], others: bool = True, norms: Sequence[str] = ("batch",)
) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(registry name, curve label, depth, ``zoo.create`` options) of the nets to measure."""
    nets = []
    for norm in norms:
        options = {} if norm == "batch" else {"norm": norm}
        for depth in depths:
            nets.append((f"plain{depth}", "plain" + NORM_SUFFIX[norm], depth, options))
            nets.append((f"resnet{depth}", "ResNet" + NORM_SUFFIX[norm], depth, options))
    return nets + ([(*net, {}) for net in OTHER_NETS] if others else [])


def net_label(name: str, options: dict[str, Any]) -> str:
    return name + "".join(f" {key}={value}" for key, value in options.items())


def unit_gradient_norms(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Gradient norm of every depth unit after one cross-entropy backward pass (train mode)."""
    net.train()
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(images), labels).backward()
    norms = GradientNormMeter(net).measure()
    return [float(v) for v in norms.units.cpu()]


def gradient_at_init(
    nets: Sequence[Net],
    seeds: Sequence[int] = (0, 1, 2),
    batch_size: int = 8,
    image_size: int = 32,
    in_channels: int = 3,
    num_classes: int = 10,
) -> list[dict[str, Any]]:
    """Tidy rows (one per model, seed and depth unit) of gradient norms at initialisation.

    Each net is ``(registry name, curve label, depth)`` with optional ``zoo.create`` options as a
    fourth element; the ``model`` column names the options (``"plain110 norm=none"``).
    """
    rows: list[dict[str, Any]] = []
    for name, family, depth, *rest in nets:
        options = rest[0] if rest else {}
        for seed in seeds:
            torch.manual_seed(seed)  # the same seed gives the same weights and the same batch
            net = zoo.create(name, num_classes=num_classes, in_channels=in_channels, **options)
            images = torch.randn(batch_size, in_channels, image_size, image_size)
            labels = torch.randint(0, num_classes, (batch_size,))
            units = net.depth_units()
            for index, norm in enumerate(unit_gradient_norms(net, images, labels)):
                rows.append({"model": net_label(name, options), "family": family,
                             "norm": options.get("norm", "batch"), "depth": depth, "seed": seed,
                             "unit_index": index, "unit_name": units[index].name,
                             "stage": units[index].stage, "grad_norm": norm})
            del net
    return rows


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (n - 1) over seeds; the std is NaN when a value overflowed (inf/NaN),
    0 for a single seed."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, statistics.stdev(values) if all(map(math.isfinite, values)) else math.nan


def summarise_gradients(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: the stem's norm, the head's norm, and the stem / head ratio (per seed, then
    mean ± std over seeds); ``first_over_head`` is the ratio of the means, as before."""
    summary = []
    for model in dict.fromkeys(row["model"] for row in rows):
        mine = [row for row in rows if row["model"] == model]
        last = max(row["unit_index"] for row in mine)
        seeds = sorted({row["seed"] for row in mine})
        stem = {row["seed"]: row["grad_norm"] for row in mine if row["unit_index"] == 0}
        head = {row["seed"]: row["grad_norm"] for row in mine if row["unit_index"] == last}
        ratios = [stem[s] / head[s] if head[s] > 0 else math.nan for s in seeds]
        stem_mean, stem_std = mean_and_std([stem[s] for s in seeds])
        head_mean = statistics.fmean(head[s] for s in seeds)
        ratio_mean, ratio_std = mean_and_std(ratios)
        summary.append({
            "model": model, "family": mine[0]["family"], "depth": mine[0]["depth"],
            # rows written before the norm column existed name the option in the model label
            "norm": mine[0].get("norm") or ("none" if "norm=none" in model else "batch"),
            "seeds": len(seeds), "first_unit_grad_norm": stem_mean,
            "first_unit_grad_norm_std": stem_std, "head_grad_norm": head_mean,
            "first_over_head": stem_mean / head_mean if head_mean > 0 else math.nan,
            "stem_over_head_mean": ratio_mean, "stem_over_head_std": ratio_std,
        })
    return summary


def _scientific(value: float) -> str:
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _mean_and_std_text(mean: float, std: float) -> str:
    """Two significant figures on the mean, the std to the same decimals: 0.42 ± 0.20,
    4.2 ± 0.9, 1,826 ± 632; scientific outside 0.001-100,000 (1.6e7 ± 2.2e6)."""
    if mean != 0 and not 1e-3 <= abs(mean) < 1e5:
        return f"{_scientific(mean)} ± {_scientific(std)}"
    decimals = max(0, 1 - math.floor(math.log10(abs(mean)))) if mean else 2
    return f"{mean:,.{decimals}f} ± {std:,.{decimals}f}"


def summary_markdown(summary: Sequence[dict[str, Any]]) -> str:
    """The stem/head ratio (mean ± sample std over seeds) per depth, one column per family: the
    table of docs/RESULTS.md section 1. "float32 overflow": a seed's gradient was inf or NaN."""
    families = list(dict.fromkeys(row["family"] for row in summary))
    cells = {(row["depth"], row["family"]): row for row in summary}
    lines = ["| depth | " + " | ".join(families) + " |", "|---:" * (len(families) + 1) + "|"]
    for depth in sorted({row["depth"] for row in summary}):
        line = [str(depth)]
        for family in families:
            row = cells.get((depth, family))
            if row is None:
                line.append("")
            elif not math.isfinite(row["stem_over_head_mean"]):
                line.append("float32 overflow")
            else:
                line.append(_mean_and_std_text(row["stem_over_head_mean"],
                                               row["stem_over_head_std"]))
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figures (from tidy rows)

SKIPS = {"plain": "plain", "ResNet": "residual"}  # curve label prefix -> zoo.results.style family
SKIP_LABELS = {"plain": "plain (no skip)", "ResNet": "ResNet (identity skip)"}


def _drift(rows: Sequence[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[int]]:
    """The row whose ratio is furthest from 1 (in orders of magnitude) and the depths whose
    ratio overflowed float32."""
    finite = [r for r in rows
              if math.isfinite(r["stem_over_head_mean"]) and r["stem_over_head_mean"] > 0]
    worst = max(finite, key=lambda r: abs(math.log10(r["stem_over_head_mean"])), default=None)
    return worst, sorted(r["depth"] for r in rows if r not in finite)


def _finding(summary: Sequence[dict[str, Any]], norm: str) -> str:
    """One panel's title: how far the plain and the residual ratios get from 1, one line each."""
    lines = ["with BatchNorm" if norm == "batch" else "without normalisation"]
    for skip in SKIPS:
        worst, overflow = _drift([r for r in summary
                                  if r["family"].startswith(skip) and r["norm"] == norm])
        parts = []
        if worst is not None:
            ratio = worst["stem_over_head_mean"]
            parts.append(f"{ratio:.2g} at depth {worst['depth']}" if skip == "plain"
                         else f"within {max(ratio, 1 / ratio):.2g}x of 1")
        if overflow:
            parts.append(f"overflow at {', '.join(map(str, overflow))}")
        if parts:
            lines.append(f"{skip}: {', '.join(parts)}")
    return "\n".join(lines)


def _headline(nets: Sequence[dict[str, Any]]) -> str:
    """The figure's title: the finding when the plain nets drift at least 100x further from 1
    than the ResNets, a plain description otherwise. A plain net's overflow counts as furthest;
    a norm-free ResNet's overflow is its whole forward signal's (every unit at once), which no
    ratio describes, so it is left to the panel title."""
    def orders(skip: str) -> float:
        ratios = [r["stem_over_head_mean"] for r in nets if r["family"].startswith(skip)]
        overflow = math.inf if skip == "plain" else 0.0
        return max((abs(math.log10(r)) if math.isfinite(r) and r > 0 else overflow for r in ratios),
                   default=0.0)

    seeds = max((r["seeds"] for r in nets), default=0)
    if orders("plain") >= orders("ResNet") + 2:
        return (f"At initialisation, without skips the stem's gradient drifts from the head's by "
                f"orders of magnitude as depth grows;\nwith skips it stays near 1 ({seeds} seeds)")
    return f"Stem / head gradient ratio at initialisation against depth ({seeds} seeds)"


def plot_gradient_ratio(summary: Sequence[dict[str, Any]], out_dir: Path) -> Path:
    """Stem / head gradient ratio against depth, mean ± std over seeds; one panel per norm,
    plain dashed, ResNet solid, markers in each depth's colour; overflow drawn as x at the top."""
    from zoo.results.style import LINESTYLES, colour_for, legend, plt, save

    nets = [r for r in summary if r["family"].startswith(("plain", "ResNet"))]
    norms = [n for n in NORM_SUFFIX if any(r["norm"] == n for r in nets)]
    figure, axes = plt.subplots(1, len(norms), figsize=(6.2 * len(norms), 5.0), sharey=True,
                                squeeze=False, layout="constrained")
    finite = [r["stem_over_head_mean"] for r in nets if math.isfinite(r["stem_over_head_mean"])]
    top = max([*finite, 1.0]) * 1e3  # where an overflowed ratio is marked
    for axis, norm in zip(axes[0], norms, strict=True):
        for skip in SKIPS:
            mine = sorted((r for r in nets if r["family"].startswith(skip) and r["norm"] == norm),
                          key=lambda r: r["depth"])
            shown = [r for r in mine if math.isfinite(r["stem_over_head_mean"])]
            means = [r["stem_over_head_mean"] for r in shown]
            stds = [0.0 if math.isnan(r["stem_over_head_std"]) else r["stem_over_head_std"]
                    for r in shown]
            # a log axis has no 0
            lower = [min(s, 0.999 * m) for m, s in zip(means, stds, strict=True)]
            axis.errorbar([r["depth"] for r in shown], means, yerr=[lower, stds], color="0.25",
                          linestyle=LINESTYLES[SKIPS[skip]], label=SKIP_LABELS[skip], zorder=1)
            for row in shown:
                axis.plot(row["depth"], row["stem_over_head_mean"], "o" if skip == "plain" else "s",
                          color=colour_for(row["model"].split()[0]), zorder=2)
            for row in (r for r in mine if r not in shown):
                axis.plot(row["depth"], top, "x", markersize=9,
                          color=colour_for(row["model"].split()[0]))
                axis.annotate(f"{skip}{row['depth']}: overflow", (row["depth"], top), fontsize=7,
                              textcoords="offset points", xytext=(-6, -14), ha="right")
        axis.axhline(1.0, color="0.6", linewidth=1, linestyle=":")
        axis.set(xscale="log", yscale="log", xlabel="depth (layers)", title=_finding(summary, norm))
        depths = sorted({r["depth"] for r in nets})
        axis.set_xticks(depths, [str(d) for d in depths], minor=False)
        axis.set_xticks([], minor=True)
        legend(axis, loc="best")
    axes[0, 0].set_ylabel("stem / head gradient norm (mean ± std over seeds)")
    figure.suptitle(_headline(nets))
    return save(figure, out_dir / "gradient_at_init_ratio.png")


def plot_gradient_profile(rows: Sequence[dict[str, Any]], out_dir: Path) -> Path:
    """Gradient norm per unit (mean over seeds) from stem to head, one panel per curve label."""
    from zoo.results.style import legend, plt, save, style_for

    summary = summarise_gradients(rows)
    panels = list(dict.fromkeys(r["family"] for r in summary
                                if r["family"].startswith(("plain", "ResNet"))))
    columns = max(1, min(2, len(panels)))
    grid_rows = max(1, math.ceil(len(panels) / columns))
    figure, axes = plt.subplots(grid_rows, columns, figsize=(5.5 * columns, 4.2 * grid_rows),
                                sharey=True, squeeze=False, layout="constrained")
    for axis, family in zip(axes.flat, panels, strict=False):  # a full grid: spare axes unused
        for row in (r for r in summary if r["family"] == family):
            mine = [r for r in rows if r["model"] == row["model"]]
            count = max(r["unit_index"] for r in mine) + 1
            profile = [statistics.fmean(r["grad_norm"] for r in mine if r["unit_index"] == i)
                       for i in range(count)]
            xs = [i / max(1, count - 1) for i in range(count)]
            axis.plot(xs, [max(v, 1e-45) for v in profile], label=row["model"],
                      **style_for(row["model"].split()[0]))
        axis.set(yscale="log", xlabel="relative depth of the unit (0 = stem, 1 = head)",
                 title=f"{family}: gradient norm per unit at init")
        legend(axis)
    for axis in axes[:, 0]:
        axis.set_ylabel("gradient norm (mean over seeds)")
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    return save(figure, out_dir / "gradient_at_init_profile.png")


def plot_gradient_at_init(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Both figures from the tidy per-unit rows: the ratio against depth and the profiles."""
    return [plot_gradient_ratio(summarise_gradients(rows), out_dir),
            plot_gradient_profile(rows, out_dir)]
