"""Figures of the lesion experiment, drawn from its tidy rows (``lesion_single.csv``,
``lesion_random.csv``): accuracy with each block deleted, with k random blocks deleted, and
each block's residual gain against the accuracy its deletion costs.

Runs of one model (its seeds) are pooled: a point is the mean over runs (and draws), its bar the
sample standard deviation (n - 1), the convention of every table and figure of the zoo.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Rows = Sequence[dict[str, Any]]


def _by_model(rows: Rows) -> dict[str, list[dict[str, Any]]]:
    return {model: [r for r in rows if r["model"] == model]
            for model in dict.fromkeys(r["model"] for r in rows)}


def _label(model: str, rows: Rows) -> str:
    runs = len({r["run"] for r in rows})
    return model if runs == 1 else f"{model} ({runs} seeds)"


def _number(value: Any) -> float:
    """A CSV cell as a float: empty or missing cells (older files, plain blocks) are NaN."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else math.nan


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (n - 1; 0 for one value); NaN when a value is NaN."""
    if not values or any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def per_block(mine: Rows, column: str = "accuracy") -> tuple[float, list[dict[str, Any]]]:
    """Mean intact accuracy and, per deleted block in depth order, mean ± std over runs."""
    intact = statistics.fmean(_number(r.get(column)) for r in mine if r["deleted"] == "intact")
    blocks = list(dict.fromkeys(r["unit_name"] for r in mine if r["deleted"] != "intact"))
    points = []
    for name in blocks:
        rows = [r for r in mine if r["unit_name"] == name]
        mean, std = mean_std([_number(r.get(column)) for r in rows])
        points.append({"name": name, "mean": mean, "std": std,
                       "downsampling": rows[0]["downsampling"]})
    return intact, points


def kept_fraction(mine: Rows, share: float = 0.9) -> tuple[int, int]:
    """(blocks, of all deletable non-downsampling blocks) whose deletion alone keeps at least
    ``share`` of the intact accuracy, on the mean over runs."""
    intact, points = per_block(mine)
    deletable = [p for p in points if not p["downsampling"] and not math.isnan(p["mean"])]
    return sum(p["mean"] >= share * intact for p in deletable), len(deletable)


def lesion_finding(single_rows: Rows) -> str:
    """Per model: how many non-downsampling blocks, deleted alone, keep 90% of its accuracy."""
    parts = []
    for model, mine in _by_model(single_rows).items():
        kept, deletable = kept_fraction(mine)
        if deletable:
            parts.append(f"{model} {kept}/{deletable}")
    return ("Blocks whose deletion keeps 90% of intact accuracy (mean over seeds): "
            + ", ".join(parts))


def _draw_single(axis: Any, single_rows: Rows) -> None:
    from zoo.results.style import style_for

    for model, mine in _by_model(single_rows).items():
        style = style_for(model)
        intact, points = per_block(mine)
        xs = list(range(1, len(points) + 1))
        axis.errorbar(xs, [p["mean"] for p in points], yerr=[p["std"] for p in points],
                      marker=".", label=f"{_label(model, mine)}, intact {intact:.3f}", **style)
        _, control = per_block(mine, "accuracy_bn_reestimated")
        if any(not math.isnan(p["mean"]) for p in control):
            axis.plot(xs, [p["mean"] for p in control], marker="^", markersize=3, linewidth=0.8,
                      alpha=0.6, label=f"{model}, BN statistics re-estimated", **style)
        axis.axhline(intact, color=style["color"], linestyle=":", linewidth=1)
        down = [(x, p["mean"]) for x, p in zip(xs, points, strict=True)
                if p["downsampling"] and not math.isnan(p["mean"])]
        axis.plot([x for x, _ in down], [a for _, a in down], "o", fillstyle="none",
                  color=style["color"])
        refused = [x for x, p in zip(xs, points, strict=True) if math.isnan(p["mean"])]
        axis.plot(refused, [0.0] * len(refused), "x", color=style["color"])
    axis.set(xlabel="deleted block (1 = first after the stem; o: downsampling, x: not deletable)",
             ylabel=f"{single_rows[0]['split']} accuracy ({single_rows[0]['images']} images)",
             ylim=(0, 1.02), title="one block deleted")


def _draw_random(axis: Any, random_rows: Rows) -> None:
    from zoo.results.style import style_for

    for model, mine in _by_model(random_rows).items():
        ks = sorted({r["k"] for r in mine})
        points = [mean_std([_number(r["accuracy"]) for r in mine if r["k"] == k]) for k in ks]
        axis.errorbar(ks, [m for m, _ in points], yerr=[s for _, s in points], marker=".",
                      capsize=2, label=_label(model, mine), **style_for(model))
    counts = [(r["model"], r["k"]) for r in random_rows if r["k"] > 0]
    most = max(counts.count(key) for key in set(counts)) if counts else 1
    axis.set(xlabel="k: non-downsampling blocks deleted at random", ylim=(0, 1.02),
             ylabel=f"accuracy ({random_rows[0]['images']} images; ± std over {most} "
                    "seeds x draws)", title="k random blocks deleted")


def plot_lesion(single_rows: Rows, out_dir: Path, random_rows: Rows = ()) -> Path:
    """Accuracy with each block deleted (left) and with k random blocks deleted (right, when
    there are k-random rows); chance level drawn in both, the finding in the title."""
    from zoo.results.style import legend, plt, save

    panels = 2 if random_rows else 1
    figure, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 5.2), squeeze=False,
                                layout="constrained")
    _draw_single(axes[0, 0], single_rows)
    if random_rows:
        _draw_random(axes[0, 1], random_rows)
    for axis in axes[0]:
        axis.xaxis.get_major_locator().set_params(integer=True)  # blocks and k are counts
        axis.axhline(single_rows[0]["chance"], color="0.5", linestyle="-.", linewidth=1,
                     label="chance")
        legend(axis, fontsize=7)
    figure.suptitle(f"Lesion (Veit et al. 2016). {lesion_finding(single_rows)}", fontsize=10)
    return save(figure, out_dir / "lesion.png")


def gain_and_cost(single_rows: Rows) -> list[dict[str, Any]]:
    """One point per residual block and run: its residual gain and the accuracy (points) its
    deletion costs; downsampling blocks and blocks without a gain are left out."""
    points = []
    for run in dict.fromkeys(r["run"] for r in single_rows):
        mine = [r for r in single_rows if r["run"] == run]
        intact = next(_number(r["accuracy"]) for r in mine if r["deleted"] == "intact")
        for row in mine:
            gain, lesioned = _number(row.get("residual_gain")), _number(row["accuracy"])
            if row["deleted"] == "intact" or row["downsampling"] or math.isnan(gain):
                continue
            points.append({"model": row["model"], "run": run, "unit_name": row["unit_name"],
                           "gain": gain, "cost": 100 * (intact - lesioned)})
    return points


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank)."""
    import numpy as np
    from scipy.stats import rankdata

    rx, ry = rankdata(xs), rankdata(ys)
    return float(np.corrcoef(rx, ry)[0, 1])


def gain_finding(rho: float) -> str:
    """The title's sentence, chosen by the data: what the correlation says."""
    if rho >= 0.3:
        return "the smaller a block's residual gain, the less its deletion costs"
    if rho <= -0.3:
        return "blocks with a larger residual gain cost less when deleted"
    return "a block's residual gain does not predict what its deletion costs"


def plot_gain_against_cost(single_rows: Rows, out_dir: Path) -> Path | None:
    """Each block's residual gain ||f(x)||/||x|| against the accuracy lost when it is deleted,
    one point per block and seed; Spearman's correlation in the title. None without gains."""
    from zoo.results.style import legend, plt, save

    points = gain_and_cost(single_rows)
    if len(points) < 3:
        return None
    figure, axis = plt.subplots(figsize=(7.5, 5.2), layout="constrained")
    markers = "osD^v<>"
    for index, run in enumerate(dict.fromkeys(p["run"] for p in points)):
        mine = [p for p in points if p["run"] == run]
        axis.scatter([p["gain"] for p in mine], [p["cost"] for p in mine], s=18, alpha=0.8,
                     marker=markers[index % len(markers)], label=run)
    rho = spearman([p["gain"] for p in points], [p["cost"] for p in points])
    models = ", ".join(dict.fromkeys(p["model"] for p in points))
    axis.set(xscale="log", xlabel="residual gain ||f(x)|| / ||x|| of the block (test images)",
             ylabel="accuracy lost when the block alone is deleted (points)",
             title=f"{models}: {gain_finding(rho)}\n"
                   f"(Spearman rho = {rho:.2f} over {len(points)} blocks x seeds)")
    axis.axhline(0, color="0.5", linewidth=0.8)
    legend(axis, fontsize=7)
    return save(figure, out_dir / "gain_vs_lesion.png")


# ---------------------------------------------------------------- the tables of docs/RESULTS.md


def _pm(values: Sequence[float], scale: float = 100.0) -> str:
    mean, std = mean_std([scale * v for v in values])
    if math.isnan(mean):
        return "--"
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {std:.1f}"  # one run: no spread


def _kept_control(mine: Rows, share: float = 0.9) -> tuple[int, int]:
    """As :func:`kept_fraction`, with the BatchNorm statistics re-estimated after each deletion
    (measured against the intact net's own re-estimated accuracy, on the control's images)."""
    return kept_fraction([{**r, "accuracy": r.get("accuracy_bn_reestimated")} for r in mine],
                         share)


def single_table(single_rows: Rows) -> str:
    lines = ["| net | intact test acc. (%) | non-downsampling blocks | deleted alone, keep ≥ 90% "
             "of intact (per seed) | median acc. after one such deletion (%, per seed) | with "
             "BatchNorm statistics re-estimated: keep ≥ 90% (per seed) |",
             "|---|---:|---:|---:|---:|---:|"]
    for model, mine in _by_model(single_rows).items():
        runs = [[r for r in mine if r["run"] == run]
                for run in dict.fromkeys(r["run"] for r in mine)]
        intact = [_number(r["accuracy"]) for r in mine if r["deleted"] == "intact"]
        kept = [kept_fraction(run) for run in runs]
        medians = [statistics.median(p["mean"] for p in per_block(run)[1]
                                     if not p["downsampling"] and not math.isnan(p["mean"]))
                   for run in runs]
        control = [_kept_control(run) for run in runs]
        has_control = any(c[1] for c in control)
        lines.append(
            f"| {model} | {_pm(intact)} | {kept[0][1]} | {', '.join(str(k) for k, _ in kept)} "
            f"| {', '.join(f'{100 * m:.1f}' for m in medians)} "
            f"| {', '.join(str(k) for k, _ in control) if has_control else '--'} |")
    return "\n".join(lines)


def random_table(random_rows: Rows) -> str:
    ks = sorted({r["k"] for r in random_rows})
    lines = ["| net | " + " | ".join(f"k = {k}" for k in ks) + " |",
             "|---|" + "---:|" * len(ks)]
    for model, mine in _by_model(random_rows).items():
        cells = [_pm([_number(r["accuracy"]) for r in mine if r["k"] == k]) for k in ks]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gain_table(single_rows: Rows) -> str:
    points = gain_and_cost(single_rows)
    lines = ["| net | run | blocks | residual gain, min-max | accuracy lost, min-max (points) "
             "| Spearman rho |", "|---|---|---:|---:|---:|---:|"]
    for run in dict.fromkeys(p["run"] for p in points):
        mine = [p for p in points if p["run"] == run]
        gains, costs = [p["gain"] for p in mine], [p["cost"] for p in mine]
        lines.append(f"| {mine[0]['model']} | {run} | {len(mine)} | {min(gains):.2f}-"
                     f"{max(gains):.2f} | {min(costs):.1f}-{max(costs):.1f} "
                     f"| {spearman(gains, costs):.2f} |")
    if points:
        rho = spearman([p["gain"] for p in points], [p["cost"] for p in points])
        lines.append(f"| all | | {len(points)} | | | {rho:.2f} |")
    return "\n".join(lines)


def summary_markdown(single_rows: Rows, random_rows: Rows = ()) -> str:
    """The lesion's tables: one block deleted, k random blocks deleted, gain against cost.
    Means ± sample std over seeds (and draws), accuracies in %."""
    first = single_rows[0]
    parts = [f"One block deleted ({first['split']} split, {first['images']} images):\n\n"
             f"{single_table(single_rows)}"]
    if random_rows:
        parts.append(f"k random non-downsampling blocks deleted (accuracy %, first "
                     f"{random_rows[0]['images']} {first['split']} images, mean ± std over "
                     f"seeds x draws):\n\n{random_table(random_rows)}")
    if gain_and_cost(single_rows):
        parts.append("Residual gain of each non-downsampling block against the accuracy its "
                     f"deletion costs:\n\n{gain_table(single_rows)}")
    return "\n\n".join(parts) + "\n"
