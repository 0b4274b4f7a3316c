"""Transformers at initialisation: gradients by depth and rank collapse, with and without skips.

Two measurements of freshly initialised ViTs (``zoo/models/vit.py``: ViT-Tiny, patch 4, on a
small batch of N(0, 1) 32 px images with random labels), no training:

* **Gradients** (Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
  Theorem 1 and Figure 3): post-LN's gradients of the last layers' parameters are large at
  initialisation and do not shrink with depth, which is why post-LN needs warm-up; pre-LN's are
  the same size in every layer and shrink like 1/sqrt(L) with the number of layers L. Measured
  with :func:`zoo.experiments.gradients.gradient_at_init` (one cross-entropy backward, the
  gradient norm of every depth unit); a Transformer block's norm is that of its attention and
  MLP sub-blocks together.
* **Rank collapse** (Dong, Cordonnier, Loukas 2021, "Attention is not all you need"): the
  relative residual of the token matrix from rank one (:func:`zoo.measure.rank.rank_one_residual`)
  after every block of one deep net (at initialisation the first l blocks of a deep net *are* a
  net of depth l), with and without skips, with and without the MLPs.

Tidy rows in, figures out: :func:`plot_vit_gradients` and :func:`plot_vit_rank` redraw from the
CSV files (``python -m zoo.experiments redraw DIR``).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import zoo
from zoo.experiments.gradients import mean_and_std, unit_gradient_norms
from zoo.measure.rank import rank_one_residual
from zoo.models.common import SkipBlock
from zoo.models.vit import INITS

VIT_DEPTHS = (2, 4, 8, 16, 32, 64)  # Transformer blocks
VIT_NORMS = ("pre", "post", "none")
RANK_DEPTH = 64
NORM_LABELS = {"pre": "pre-LN", "post": "post-LN", "none": "no norm"}
NORM_COLOURS = {"pre": "#1f77b4", "post": "#d62728", "none": "#2ca02c"}
GRADIENT_COLUMNS = ["model", "family", "norm", "init", "skip", "depth", "seed", "unit_index",
                    "unit_name", "stage", "grad_norm"]
BLOCK_COLUMNS = ["model", "family", "norm", "init", "skip", "depth", "seeds",
                 "first_block_grad_norm", "last_block_grad_norm", "last_block_grad_norm_std",
                 "first_over_last_mean", "first_over_last_std"]
RANK_COLUMNS = ["norm", "init", "skip", "mlp", "depth", "seed", "layer", "rank_residual"]


def vit_name(depth: int, skip: bool, size: str = "tiny", patch: int = 4) -> str:
    return f"{'' if skip else 'plain_'}vit_{size}_p{patch}_d{depth}"


def label(norm: str, skip: bool) -> str:
    return NORM_LABELS[norm] + ("" if skip else ", no skip")


def fresh_vit(depth: int, skip: bool, norm: str, init: str, mlp_ratio: float = 4.0) -> nn.Module:
    """A freshly initialised ViT-Tiny/4 for 32 px; ``init`` one of :data:`INITS`."""
    return zoo.create(vit_name(depth, skip), norm=norm, mlp_ratio=mlp_ratio, init=init)


# ---------------------------------------------------------------- gradients


def vit_gradients(depths: Sequence[int] = VIT_DEPTHS, norms: Sequence[str] = VIT_NORMS,
                  seeds: Sequence[int] = (0, 1, 2), batch_size: int = 8,
                  inits: Sequence[str] = INITS) -> list[dict[str, Any]]:
    """Tidy rows: the gradient norm of every depth unit after one cross-entropy backward pass,
    per net (every init, norm, skip and depth) and seed; 32 px, 3 channels, 10 classes."""
    rows = []
    for init, norm, skip, depth, seed in itertools.product(inits, norms, (True, False), depths,
                                                           seeds):
        torch.manual_seed(seed)  # one seed: the same weights and the same batch
        net = fresh_vit(depth, skip, norm, init)
        images = torch.randn(batch_size, 3, 32, 32)
        labels = torch.randint(0, 10, (batch_size,))
        units = net.depth_units()
        unit_norms = unit_gradient_norms(net, images, labels)
        rows += [{"model": f"{vit_name(depth, skip)} norm={norm} init={init}",
                  "family": label(norm, skip), "norm": norm, "init": init, "skip": skip,
                  "depth": depth, "seed": seed, "unit_index": index,
                  "unit_name": units[index].name, "stage": units[index].stage, "grad_norm": value}
                 for index, value in enumerate(unit_norms)]
    return rows


def block_norms(rows: Sequence[dict[str, Any]]) -> dict[int, list[float]]:
    """Per seed: each Transformer block's gradient norm, sqrt(attention^2 + MLP^2), in order."""
    per_seed: dict[int, dict[int, float]] = {}
    for row in rows:
        if row["stage"] in ("attn", "mlp"):
            block = int(row["unit_name"].split(".")[1])
            squares = per_seed.setdefault(row["seed"], {})
            squares[block] = squares.get(block, 0.0) + row["grad_norm"] ** 2
    return {seed: [math.sqrt(squares[b]) for b in sorted(squares)]
            for seed, squares in per_seed.items()}


def summarise_vit_gradients(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per net: the first and last block's gradient norms and their ratio (per seed, then mean
    and std over seeds)."""
    summary = []
    for model in dict.fromkeys(row["model"] for row in rows):
        mine = [row for row in rows if row["model"] == model]
        blocks = block_norms(mine)
        first = [norms[0] for norms in blocks.values()]
        last = [norms[-1] for norms in blocks.values()]
        ratio_mean, ratio_std = mean_and_std([a / b for a, b in zip(first, last, strict=True)])
        last_mean, last_std = mean_and_std(last)
        summary.append({
            "model": model, "family": mine[0]["family"], "norm": mine[0]["norm"],
            "init": mine[0]["init"], "skip": mine[0]["skip"], "depth": mine[0]["depth"],
            "seeds": len(blocks), "first_block_grad_norm": statistics.fmean(first),
            "last_block_grad_norm": last_mean, "last_block_grad_norm_std": last_std,
            "first_over_last_mean": ratio_mean, "first_over_last_std": ratio_std})
    return summary


def depth_exponent(summary: Sequence[dict[str, Any]], init: str, norm: str) -> float | None:
    """The exponent a of ``last block's gradient ~ depth^a`` between the shallowest and the
    deepest net with skips (Xiong et al. 2020, Theorem 1: -1/2 for pre-LN, 0 for post-LN)."""
    mine = sorted((r for r in summary if r["init"] == init and r["norm"] == norm and r["skip"]),
                  key=lambda r: r["depth"])
    if len(mine) < 2:
        return None
    shallow, deep = mine[0], mine[-1]
    return (math.log(deep["last_block_grad_norm"] / shallow["last_block_grad_norm"])
            / math.log(deep["depth"] / shallow["depth"]))


def _gradient_finding(summary: Sequence[dict[str, Any]], init: str) -> str:
    """One row's title, from the numbers: both exponents, and post-LN's last-block gradient
    over pre-LN's in the deepest nets."""
    pre, post = (depth_exponent(summary, init, norm) for norm in ("pre", "post"))
    if pre is None or post is None:
        return f"{init} init"
    deepest = {r["norm"]: r for r in summary if r["init"] == init and r["skip"]
               and r["depth"] == max(x["depth"] for x in summary)}
    ratio = deepest["post"]["last_block_grad_norm"] / deepest["pre"]["last_block_grad_norm"]
    return (f"{init} init: last block's gradient ~ depth^{pre:+.2f} pre-LN, depth^{post:+.2f} "
            f"post-LN; at {deepest['pre']['depth']} blocks post-LN's is {ratio:.2g}x pre-LN's")


def plot_vit_gradients(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One row per init. Left: the last block's gradient norm against depth; middle: first /
    last block against depth; right: the gradient norm of every block of the deepest nets."""
    from zoo.results.style import legend, plt, save

    summary = summarise_vit_gradients(rows)
    inits = list(dict.fromkeys(r["init"] for r in summary))
    figure, axes = plt.subplots(len(inits), 3, figsize=(17, 4.6 * len(inits)), squeeze=False,
                                layout="constrained")
    for panels, init in zip(axes, inits, strict=True):
        _gradient_row(panels, [r for r in summary if r["init"] == init],
                      [r for r in rows if r["init"] == init])
        panels[0].set_title(_gradient_finding(summary, init), loc="left")
    legend(axes[0, 0], fontsize=7)
    seeds = max(r["seeds"] for r in summary)
    exponents = {norm: [depth_exponent(summary, init, norm) for init in inits]
                 for norm in ("pre", "post")}
    if all(e is not None for values in exponents.values() for e in values):
        spans = {norm: f"{min(values):+.2f} to {max(values):+.2f}"
                 for norm, values in exponents.items()}
        figure.suptitle(f"ViT at initialisation: the last block's gradient goes as depth^("
                        f"{spans['pre']}) in pre-LN, depth^({spans['post']}) in post-LN "
                        f"(Xiong et al. 2020: -0.5 and 0) ({seeds} seeds)")
    return [save(figure, out_dir / "vit_gradients_at_init.png")]


def _gradient_row(panels: Any, summary: Sequence[dict[str, Any]],
                  rows: Sequence[dict[str, Any]]) -> None:
    depths = sorted({r["depth"] for r in summary})
    for norm in dict.fromkeys(r["norm"] for r in summary):
        for skip in (True, False):
            mine = sorted((r for r in summary if r["norm"] == norm and r["skip"] == skip),
                          key=lambda r: r["depth"])
            style = {"color": NORM_COLOURS[norm], "linestyle": "-" if skip else "--",
                     "label": label(norm, skip)}
            panels[0].plot(depths, [r["last_block_grad_norm"] for r in mine], marker="o", **style)
            panels[1].plot(depths, [max(r["first_over_last_mean"], 1e-30) for r in mine],
                           marker="o", **style)
            profiles = list(block_norms([r for r in rows if r["model"] == mine[-1]["model"]])
                            .values())
            mean = [statistics.fmean(values) for values in zip(*profiles, strict=True)]
            panels[2].plot(range(1, len(mean) + 1), [max(v, 1e-30) for v in mean], **style)
    panels[0].set(xscale="log", yscale="log", xlabel="depth (Transformer blocks)",
                  ylabel="last block's gradient norm")
    anchor = min((r for r in summary if r["norm"] == "pre" and r["skip"]),
                 key=lambda r: r["depth"], default=None)
    if anchor is not None:  # Xiong et al.'s Theorem 1 for pre-LN, through its shallowest point
        panels[0].plot(depths, [anchor["last_block_grad_norm"] * (anchor["depth"] / d) ** 0.5
                                for d in depths], color="0.6", linestyle=":",
                       label="1/sqrt(depth)")
    panels[1].set(xscale="log", yscale="log", xlabel="depth (Transformer blocks)",
                  ylabel="first block / last block gradient norm")
    panels[1].axhline(1.0, color="0.6", linewidth=1, linestyle=":")
    panels[2].set(yscale="log", xlabel=f"block (of {depths[-1]})",
                  ylabel="gradient norm per block (mean over seeds)")
    for axis in panels[:2]:
        axis.set_xticks(depths, [str(d) for d in depths])
        axis.set_xticks([], minor=True)


# ---------------------------------------------------------------- rank collapse


def token_residuals(net: Any, images: torch.Tensor) -> list[float]:
    """``rank_one_residual`` of the tokens after the patch embedding (layer 0) and after every
    Transformer block (layer l) of a zoo ViT, in eval mode, without gradients."""
    net.eval()
    with torch.no_grad():
        x = net.patch_embed(images)
        residuals = [float(rank_one_residual(x))]
        for block in net.blocks:
            x = block(x)
            residuals.append(float(rank_one_residual(x)))
    return residuals


def vit_rank(depth: int = RANK_DEPTH, norms: Sequence[str] = VIT_NORMS,
             seeds: Sequence[int] = (0, 1, 2), batch_size: int = 8,
             mlps: Sequence[bool] = (True, False),
             inits: Sequence[str] = INITS) -> list[dict[str, Any]]:
    """Tidy rows: the token matrix's residual from rank one after every block, per net (init,
    norm, skip, with or without MLPs) and seed."""
    rows = []
    for init, norm, skip, mlp, seed in itertools.product(inits, norms, (True, False), mlps, seeds):
        torch.manual_seed(seed)  # one seed: the same weights and the same images
        net = fresh_vit(depth, skip, norm, init, mlp_ratio=4.0 if mlp else 0.0)
        images = torch.randn(batch_size, 3, 32, 32)
        rows += [{"norm": norm, "init": init, "skip": skip, "mlp": mlp, "depth": depth,
                  "seed": seed, "layer": layer, "rank_residual": value}
                 for layer, value in enumerate(token_residuals(net, images))]
    return rows


Curve = tuple[str, str, bool, bool]  # init, norm, skip, mlp


def rank_curves(rows: Sequence[dict[str, Any]]) -> dict[Curve, tuple[list[int], list[float]]]:
    """(init, norm, skip, mlp) -> (layers, mean residual over seeds)."""
    def key(row: dict[str, Any]) -> Curve:
        return row["init"], row["norm"], row["skip"], row["mlp"]

    curves = {}
    for curve in dict.fromkeys(map(key, rows)):
        mine = [r for r in rows if key(r) == curve]
        layers = sorted({r["layer"] for r in mine})
        curves[curve] = (layers, [statistics.fmean(r["rank_residual"] for r in mine
                                                   if r["layer"] == layer) for layer in layers])
    return curves


def blocks_to_collapse(layers: Sequence[int], values: Sequence[float],
                       threshold: float = 1e-3) -> int | None:
    """The first block after which the residual is below ``threshold``; None if it never is."""
    return next((layer for layer, value in zip(layers, values, strict=True)
                 if value < threshold), None)


def _rank_finding(curves: dict[Curve, tuple[list[int], list[float]]]) -> str:
    """Two lines from the numbers: when the nets without skips collapse, and how far from rank
    one the nets with skips stay -- naming those with skips that collapse too."""
    depth = max(layers[-1] for layers, _ in curves.values())
    plain = [blocks_to_collapse(*c) for (_, _, skip, _), c in curves.items() if not skip]
    kept = [values[-1] for (_, _, skip, _), (layers, values) in curves.items()
            if skip and blocks_to_collapse(layers, values) is None]
    collapsed = {(norm, init): blocks_to_collapse(*c) for (init, norm, skip, _), c in curves.items()
                 if skip and blocks_to_collapse(*c) is not None}
    if not plain or None in plain or not kept:
        return f"Distance of the tokens from rank one at initialisation ({depth} blocks)"
    line = (f"At initialisation, without skips the tokens come within 0.001 of rank one after "
            f"{max(plain)} blocks or fewer;\nwith skips they stay {min(kept):.2f} or more from it "
            f"after {depth} blocks")
    if collapsed:
        names = ", ".join(f"{NORM_LABELS[norm]} ({init} init)" for norm, init in collapsed)
        line += (f", except {names}: collapsed by block {min(collapsed.values())}-"
                 f"{max(collapsed.values())}")
    return line


def plot_vit_rank(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Residual from rank one against the block: a row per init, a column with MLPs and one
    without."""
    from zoo.results.style import legend, plt, save

    curves = rank_curves(rows)
    inits = list(dict.fromkeys(init for init, *_ in curves))
    mlps = sorted({mlp for *_, mlp in curves}, reverse=True)
    figure, axes = plt.subplots(len(inits), len(mlps), figsize=(6.5 * len(mlps), 4.6 * len(inits)),
                                sharey=True, squeeze=False, layout="constrained")
    for (init, norm, skip, mlp), (layers, values) in curves.items():
        axis = axes[inits.index(init), mlps.index(mlp)]
        axis.plot(layers, [max(v, 1e-12) for v in values], label=label(norm, skip),
                  color=NORM_COLOURS[norm], linestyle="-" if skip else "--")
        axis.set(yscale="log", xlabel="block (0: the patch embedding)",
                 title=f"{init} init, " + ("attention + MLP" if mlp else "attention only"))
    for axis in axes[:, 0]:
        axis.set_ylabel("||X - 1 mean(X)|| / ||X|| (mean over seeds)")
    legend(axes[0, 0])
    seeds = len({r["seed"] for r in rows})
    figure.suptitle(_rank_finding(curves) + f" ({seeds} seeds)")
    return [save(figure, out_dir / "vit_rank_at_init.png")]


# ---------------------------------------------------------------- rank after training

TRAINED_RANK_COLUMNS = ["run", "model", "norm", "skip", "images", "layer", "rank_residual"]


def trained_rank(checkpoints: Sequence[Path], max_images: int = 256) -> list[dict[str, Any]]:
    """Tidy rows: the tokens' residual from rank one after every block of trained ViTs (run
    directories or ``.ckpt`` files), on the first ``max_images`` test images of each run's data."""
    from zoo.experiments.lesion_sources import (
        checkpoint_path,
        evaluation_batches,
        load_network,
        run_data_config,
    )

    rows = []
    for path in checkpoints:
        checkpoint = checkpoint_path(path)
        if checkpoint.suffix != ".ckpt":  # a sweep's multirun.yaml caught by a glob, say
            raise ValueError(f"{path}: not a run directory or a .ckpt checkpoint")
        net, model_cfg = load_network(checkpoint)
        if not hasattr(net, "blocks") or not hasattr(net, "patch_embed"):
            raise ValueError(f"{checkpoint}: {model_cfg['name']} is not a ViT")
        batches = evaluation_batches(run_data_config(checkpoint), "test", max_images)
        images = torch.cat([batch[0] for batch in batches])
        run = checkpoint.parent.parent.name if checkpoint.parent.name == "checkpoints" else \
            checkpoint.stem
        skip = all(m.skip for m in net.modules() if isinstance(m, SkipBlock))
        rows += [{"run": run, "model": model_cfg["name"], "norm": model_cfg.get("norm", "pre"),
                  "skip": skip, "images": len(images), "layer": layer, "rank_residual": value}
                 for layer, value in enumerate(token_residuals(net, images))]
    return rows


def plot_trained_rank(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Residual from rank one against the block after training, mean over runs (seeds)."""
    from zoo.results.style import legend, plt, save

    figure, axis = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    lowest = {}
    for key in dict.fromkeys((r["model"], r["norm"], r["skip"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["norm"], r["skip"]) == key]
        layers = sorted({r["layer"] for r in mine})
        mean = [statistics.fmean(r["rank_residual"] for r in mine if r["layer"] == layer)
                for layer in layers]
        lowest[key] = mean[-1]
        axis.plot(layers, [max(v, 1e-12) for v in mean], color=NORM_COLOURS[key[1]],
                  linestyle="-" if key[2] else "--", label=f"{key[0]} ({NORM_LABELS[key[1]]})")
    axis.set(yscale="log", xlabel="block (0: the patch embedding)",
             ylabel="||X - 1 mean(X)|| / ||X|| (mean over runs)")
    legend(axis, fontsize=7)
    plain = [v for (_, _, skip), v in lowest.items() if not skip]
    residual = [v for (_, _, skip), v in lowest.items() if skip]
    runs = len({r["run"] for r in rows})
    title = "Distance of the tokens from rank one after training"
    if plain and residual:
        title = (f"After training, the last block's tokens are {min(residual):.2g} or more from "
                 f"rank one with skips,\n{max(plain):.2g} or less without")
    axis.set_title(f"{title} ({runs} runs)")
    return [save(figure, out_dir / "vit_rank_trained.png")]
