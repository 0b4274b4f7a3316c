"""One look for every figure of the zoo: one matplotlib set-up, one colour per depth, one save.

Every figure module (``zoo.results.report``, ``.plot``, ``.collect``, the experiments) draws
through this file, so that a reader learns the code of one figure and reads all of them:

- the colour says the **depth**: ResNet-56 and plain-56 share a colour in every figure, and a
  DenseNet has colours of its own (:data:`DEPTH_COLOURS`, :data:`DENSE_COLOURS`);
- the line says the **skip**: plain nets dashed, residual (and dense) nets solid
  (:data:`LINESTYLES`).

    from zoo.results.style import plt, save, style_for
    figure, axis = plt.subplots()
    axis.plot(steps, errors, label="plain56", **style_for("plain56"))
    save(figure, "docs/figures/degradation/train_error.png")

Importing this module selects the Agg backend (files only: training machines have no display).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the backend is chosen

__all__ = ["FAMILY_NAMES", "LINESTYLES", "band", "depth_of", "family_of", "legend", "plt",
           "pre_activation", "save", "style_for"]

RC_PARAMS = {
    "figure.figsize": (7.5, 4.5),
    "figure.dpi": 100,
    "savefig.dpi": 130,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.grid": True,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
    "errorbar.capsize": 3,
}
plt.rcParams.update(RC_PARAMS)

# One colour per depth across every figure (CIFAR and ImageNet depths, shallow to deep).
DEPTH_COLOURS = {
    8: "#17becf", 18: "#bcbd22", 20: "#1f77b4", 32: "#2ca02c", 34: "#98df8a", 44: "#9467bd",
    50: "#e377c2", 56: "#d62728", 101: "#7f7f7f", 110: "#ff7f0e", 152: "#c49c94",
    164: "#c5b0d5", 218: "#8c564b", 1001: "#393b79", 1202: "#000000",
}
# DenseNets by depth: greens and purples no ResNet depth uses.
DENSE_COLOURS = {
    40: "#637939", 100: "#8ca252", 121: "#b5cf6b", 161: "#7b4173", 169: "#a55194",
    190: "#ce6dbd", 201: "#de9ed6", 250: "#843c39",
}
LINESTYLES = {"plain": "--", "residual": "-", "dense": "-"}
FAMILY_NAMES = {"plain": "plain (no skip)", "residual": "residual (addition)",
                "dense": "dense (concatenation)"}
_FALLBACK = plt.get_cmap("tab20").colors  # for depths not in the tables above


# describe()'s skip in the figures' words: the legend's kinds and runs.csv's "family" column
KIND_OF_SKIP = {"none": "plain", "add": "residual", "concat": "dense"}


@cache
def _facts(model: str) -> dict[str, Any] | None:
    """The registry's facts of ``model``; None for a name it does not build (a model since
    renamed or removed: committed results still redraw, solid, in a colour of the name's own)."""
    from zoo.models import describe

    try:
        return describe(model)
    except ValueError:  # UnknownModelError, or a depth the family cannot build
        return None


def family_of(model: str) -> str:
    """``plain``, ``residual`` or ``dense``: the registry's skip of ``model`` (no skip, addition,
    concatenation), in the words of the figures and of runs.csv's ``family`` column."""
    facts = _facts(model)
    return KIND_OF_SKIP[facts["skip"]] if facts else "residual"


def depth_of(model: str) -> int | None:
    """The registry's depth of ``model`` (weighted layers; a ViT's blocks)."""
    facts = _facts(model)
    return facts["depth"] if facts else None


def colour_for(model: str) -> str:
    """The model's colour: its depth's (its DenseNet depth's), the same in every figure."""
    depth = depth_of(model)
    table = DENSE_COLOURS if family_of(model) == "dense" else DEPTH_COLOURS
    if depth in table:
        return table[depth]
    # Stable across processes (unlike hash()): the same unknown name gets the same colour.
    return matplotlib.colors.to_hex(_FALLBACK[zlib.crc32(model.encode()) % len(_FALLBACK)])


def style_for(model: str) -> dict[str, Any]:
    """``dict(color=..., linestyle=...)`` for ``axis.plot(..., **style_for(name))``:
    colour by depth, dashed for plain nets, solid for nets with skips -- dash-dot for He et al.
    2016's pre-activation nets and their plain twins, so that preact-110 and ResNet-110 (one
    colour: one depth), preact_plain110 and plain110, stay apart."""
    linestyle = "-." if pre_activation(model) else LINESTYLES[family_of(model)]
    return {"color": colour_for(model), "linestyle": linestyle}


def pre_activation(model: str) -> bool:
    """He et al. 2016's nets (``preact_resnet1001``, and their plain twins ``preact_plain*``)."""
    facts = _facts(model)
    return bool(facts) and facts["family"] == "preact_resnet"


def band(axis: Any, x: Sequence[float], mean: Sequence[float], std: Sequence[float],
         model: str, label: str | None = None, color: Any = None, **plot_options: Any) -> None:
    """A mean line in the model's style with a shaded ± std band (seeds) around it; ``color``
    replaces the depth's colour where several settings of one model share a panel."""
    import numpy as np

    style = {**style_for(model), **({"color": color} if color is not None else {})}
    mean, std = np.asarray(mean, dtype=float), np.nan_to_num(np.asarray(std, dtype=float))
    axis.plot(x, mean, label=label, **style, **plot_options)
    axis.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.18, linewidth=0)


def legend(axis: Any, **options: Any) -> None:
    """A legend only when something labelled was drawn (no empty legend boxes)."""
    if axis.get_legend_handles_labels()[0]:
        axis.legend(**options)


def save(figure: Any, path: Path | str) -> Path:
    """Write ``figure`` to ``path`` (folders made as needed) and free it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
