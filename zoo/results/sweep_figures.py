"""Every figure of a training sweep, drawn from the rows of its ``runs.csv`` and ``curves.csv``
(``zoo.results.collect`` writes them, ``zoo.results.redraw`` reads them). Seeds of one setting
are averaged: mean ± std (sample std); every number in a title is computed from the rows.

* :func:`plot_against_depth`: a metric against depth, plain nets dashed, residual nets solid
  (the degradation problem, section 2 of docs/RESULTS.md; over 1000 layers, section 7).
* :func:`plot_curves`: training loss and validation error against optimizer steps.
* :func:`plot_against_cost`: test error against parameters and against training seconds, one
  point per model with error bars over seeds on both axes (addition against concatenation,
  section 6). The title compares the best net of each family.
* :func:`plot_lr_control`: training and test error against the learning rate, a line per model
  (the control that a result is not an artefact of the rate, sections 2 and 6).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from zoo.results.style import (
    FAMILY_NAMES,
    LINESTYLES,
    band,
    family_of,
    legend,
    plt,
    pre_activation,
    save,
    style_for,
)

Row = dict[str, Any]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (0 for one value) and count of the values present."""
    present = [float(v) for v in values if v not in (None, "")]
    if not present:
        return None, None, 0
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return statistics.fmean(present), std, len(present)


def _setting_groups(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows per setting, ordered plain, residual, dense, then by depth."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["setting"]].append(row)
    families = list(FAMILY_NAMES)
    return dict(sorted(groups.items(), key=lambda item: (
        families.index(item[1][0]["family"]), item[1][0]["depth"] or 0, item[0])))


def _suffix(row: dict[str, Any]) -> str:
    """The setting without its model (``optim.lr=0.01``): series of one family share it.
    Pre-activation ResNets are a series of their own beside the original ResNets: a depth both
    have (110) is two points, not one mean over two architectures."""
    options = str(row["setting"])[len(str(row["model"])):].strip()
    preact = pre_activation(str(row["model"]))
    return " ".join(["pre-activation"] * preact + [options] * bool(options))


def setting_label(suffix: str) -> str:
    """A setting's options by their last key: ``model.norm=post scheduler.warmup_fraction=0.0``
    -> ``norm=post, warmup_fraction=0.0``."""
    return ", ".join(f"{option.split('=', 1)[0].rsplit('.', 1)[-1]}={option.split('=', 1)[1]}"
                     if "=" in option else option for option in suffix.split())


def depth_unit(rows: Sequence[dict[str, Any]]) -> str:
    """What a sweep's depth counts: weighted layers, or a Transformer's blocks (zoo.describe)."""
    from zoo.models import describe

    families = set()
    for model in {str(row["model"]) for row in rows}:
        try:
            families.add(describe(model)["family"])
        except ValueError:  # a name the registry no longer builds: counted in layers
            families.add(None)
    return "blocks" if families == {"vit"} else "layers"


def depth_series(rows: Sequence[dict[str, Any]], key: str, complement: bool = False
                 ) -> dict[tuple[str, str], list[tuple[int, float, float, int, str]]]:
    """{(family, setting suffix): [(depth, mean, std, seeds, model)]} of a runs.csv column, in
    percent."""
    values: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    models: dict[tuple[tuple[str, str], int], str] = {}
    for row in rows:
        if row[key] not in (None, "") and row["depth"] not in (None, ""):
            value = 1.0 - float(row[key]) if complement else float(row[key])
            series = (row["family"], _suffix(row))
            values[series][int(row["depth"])].append(100 * value)
            models[(series, int(row["depth"]))] = str(row["model"])
    return {series: [(depth, *mean_std(by_depth[depth]), models[(series, depth)])
                     for depth in sorted(by_depth)] for series, by_depth in values.items()}


def depth_finding(series: dict[tuple[str, str], list[tuple[Any, ...]]], what: str,
                  unit: str = "layers") -> str:
    """A title that states what the data show: does the error rise from the shallowest to the
    deepest net, by more than the seed std, in each family? Default settings only, unless a
    family has fewer than two depths of them (a sweep over an option, pre-activation nets beside
    one original ResNet): then each of its settings, named."""
    parts, rises = [], {}
    for family in ("plain", "residual", "dense"):
        default = series.get((family, ""), [])
        suffixes = [""] if len(default) > 1 else sorted(
            suffix for fam, suffix in series if fam == family)
        for suffix in suffixes:
            points = series.get((family, suffix))
            if not points or len(points) < 2:
                continue
            (d0, e0, s0, *_), (d1, e1, s1, *_) = points[0], points[-1]
            rose = e1 - e0 > max(s0, s1, 0.0)
            rises[family] = rises.get(family, False) or rose
            label = " ".join([family, setting_label(suffix)]).strip()
            parts.append(f"{label} {e0:.1f}% at {d0} → {e1:.1f}% at {d1} {unit}")
    if not parts:
        return f"{what} against depth"
    worse = [family for family, rose in rises.items() if rose]
    if worse == ["plain"]:
        head = f"Deeper plain nets have a higher {what}; residual nets do not"
    elif worse:
        head = f"Deeper {' and '.join(worse)} nets have a higher {what}"
    else:
        head = f"No family's {what} rises with depth"
    details = "; ".join(parts)
    if len(details) > 90:  # one setting per line rather than a title wider than the figure
        details = ";\n".join(parts)
    return f"{head}\n({details})"


def _series_colours(series: dict[tuple[str, str], Any]) -> dict[tuple[str, str], Any]:
    """A colour per series where a family has three settings or more (a sweep over options,
    where dotted black lines could not be told apart); else none (colour by depth)."""
    per_family = defaultdict(int)
    for family, _ in series:
        per_family[family] += 1
    if max(per_family.values(), default=0) < 3:
        return {}
    palette = plt.get_cmap("tab10")
    return {key: palette(index % 10) for index, key in enumerate(sorted(series))}


def plot_against_depth(rows: Sequence[dict[str, Any]], key: str, what: str, path: Path,
                       complement: bool = False) -> Path:
    """Mean ± std over seeds of ``key`` against depth: a line per family (plain dashed,
    residual solid), each depth's point in its colour."""
    series = depth_series(rows, key, complement)
    # two nets of one family and depth (ResNet-110, preact-110) share colour and marker: named
    nets_at: dict[tuple[str, int], set[str]] = defaultdict(set)
    for (family, _), points in series.items():
        for depth, *_, model in points:
            nets_at[(family, depth)].add(model)
    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    line_colours = _series_colours(series)
    for (family, suffix), points in sorted(series.items()):
        depths, means, stds, _, models = zip(*points, strict=True)
        line = line_colours.get((family, suffix))
        # The line says the family (plain dashed, residual solid); each point's colour its depth.
        # Settings of one family after the first: dotted, so that the lines stay apart -- or,
        # in a sweep over options (several settings per family), a colour per setting.
        first = line is not None or not any(f == family and k < (family, suffix) for f, k in
                                            ((f, (f, x)) for f, x in series))
        own = style_for(models[0])["linestyle"]  # pre-activation nets: dash-dot of their own
        linestyle = own if first or own not in LINESTYLES.values() else ":"
        axis.errorbar(depths, means, yerr=stds, linestyle=linestyle, linewidth=1.4, zorder=1,
                      color=line or ("0.3" if family == "plain" else "black"),
                      label=" ".join([FAMILY_NAMES[family], setting_label(suffix)]).strip())
        axis.scatter(depths, means, zorder=2, s=42, marker="s" if family == "plain" else "o",
                     color=line or [style_for(model)["color"] for model in models])
        for depth, mean, model in zip(depths, means, models, strict=True):
            if len(nets_at[(family, depth)]) > 1:
                axis.annotate(model, (depth, mean), textcoords="offset points", xytext=(7, -3),
                              fontsize=8)
    all_depths = sorted({depth for points in series.values() for depth, *_ in points})
    if all_depths and all_depths[-1] / max(1, all_depths[0]) > 8:
        axis.set_xscale("log")
    axis.set_xticks(all_depths, [str(d) for d in all_depths])
    axis.minorticks_off()
    unit = depth_unit(rows)
    axis.set_xlabel(f"depth ({unit})")
    seeds = max((point[3] for points in series.values() for point in points), default=0)
    axis.set_ylabel(f"{what} (%), mean ± std over {seeds} seed{'s' * (seeds != 1)}")
    axis.set_ylim(bottom=0)
    diverged = defaultdict(int)
    for row in rows:
        diverged[row["model"]] += row.get("status") == "diverged"
    stopped = [f"{model}: diverged in {n} of {sum(r['model'] == model for r in rows)} runs"
               for model, n in sorted(diverged.items()) if n]
    axis.set_title(depth_finding(series, what, unit)
                   + (f"\n({'; '.join(stopped)})" if stopped else ""))
    legend(axis)
    return save(figure, path)


def _mean_curve(points: dict[int, list[float]]) -> tuple[list[int], list[float], list[float]]:
    steps = sorted(points)
    return steps, [mean_std(points[s])[0] for s in steps], [mean_std(points[s])[1] for s in steps]


def setting_colours(groups: dict[str, list[Row]]) -> dict[str, Any]:
    """The depth's colour per setting; where two settings share a model (and so a depth), one
    colour per setting instead, so that every line of the panel can be told apart."""
    models = [mine[0]["model"] for mine in groups.values()]
    if len(set(models)) == len(models):
        return {setting: style_for(mine[0]["model"])["color"] for setting, mine in groups.items()}
    palette = plt.get_cmap("tab10")
    return {setting: palette(index % 10) for index, setting in enumerate(groups)}


def stopped_steps(mine: Sequence[Row]) -> list[int]:
    """The step at which each stopped (diverged) run of a setting was stopped."""
    return sorted(int(row["steps"]) for row in mine
                  if row["status"] == "diverged" and row.get("steps") not in (None, ""))


def curves_finding(groups: dict[str, list[Row]]) -> str:
    """The title: which settings the explosion guard stopped, and the best final error."""
    stopped = {setting: steps for setting, mine in groups.items()
               if (steps := stopped_steps(mine))}
    finished = {setting: mean_std([100 * (1 - float(row["test_acc"])) for row in mine
                                   if row.get("test_acc") not in (None, "")])
                for setting, mine in groups.items()}
    finished = {setting: stats for setting, stats in finished.items() if stats[0] is not None}
    parts = []
    if stopped:
        parts.append(f"{len(stopped)} of {len(groups)} settings stopped by the explosion guard "
                     f"(steps {min(min(s) for s in stopped.values())}-"
                     f"{max(max(s) for s in stopped.values())})")
    if finished:
        best, (mean, std, _) = min(finished.items(), key=lambda item: item[1][0])
        parts.append(f"lowest test error: {best.replace('model.', '')}, {mean:.1f} ± {std:.1f}%")
    best_of = {family: min((stats for setting, stats in finished.items()
                            if groups[setting][0]["family"] == family), default=None)
               for family in ("plain", "residual")}
    one_depth = len({str(mine[0].get("depth")) for mine in groups.values()}) == 1
    # plain beside residual at one depth: the contrast first (across depths: the depth figure's)
    if not stopped and one_depth and None not in best_of.values():
        (plain, plain_std, _), (residual, residual_std, _) = best_of["plain"], best_of["residual"]
        return (f"Best test error without skips {plain:.1f} ± {plain_std:.1f}%, with skips "
                f"{residual:.1f} ± {residual_std:.1f}%;\n" + "; ".join(parts))
    return "; ".join(parts) or "Training curves"


def plot_curves(rows: Sequence[Row], curves: Sequence[Row], path: Path) -> Path:
    """Training loss and validation error against optimizer steps, a line per setting with a
    band of ± std over its seeds; stars: the eval-mode training error at its step; crosses on
    the loss panel's top edge: the steps at which the explosion guard stopped a run."""
    by_setting: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(
        lambda: defaultdict(list))
    for point in curves:
        by_step = by_setting[(point["setting"], point["metric"])]
        by_step[int(point["step"])].append(float(point["value"]))
    groups = _setting_groups(rows)
    figure, (loss_axis, error_axis) = plt.subplots(
        1, 2, figsize=(12.5, 5.2 + 0.22 * len(groups)), layout="constrained")
    colours = setting_colours(groups)
    seeds = 0
    for setting, mine in groups.items():
        model, seeds, colour = mine[0]["model"], max(seeds, len(mine)), colours[setting]
        stopped = stopped_steps(mine)
        label = setting.replace("model.", "") + (
            f" (stopped at step {', '.join(map(str, stopped))})" if stopped else "")
        drawn = False
        for axis, metric, scale in ((loss_axis, "train_loss", 1.0), (error_axis, "val_err", 100.0)):
            steps, mean, std = _mean_curve(by_setting.get((setting, metric), {}))
            if steps:
                band(axis, steps, [scale * m for m in mean], [scale * s for s in std], model,
                     label=None if drawn else label, color=colour)
                drawn = drawn or axis is loss_axis
        if stopped:  # a stopped run has no curve worth the name: mark where it stopped
            loss_axis.plot(stopped, [1.0] * len(stopped), "x", color=colour, markersize=10,
                           markeredgewidth=2.5, clip_on=False,
                           transform=loss_axis.get_xaxis_transform(),
                           label=None if drawn else label)
        steps, mean, std = _mean_curve(by_setting.get((setting, "train_eval_err"), {}))
        if steps:
            error_axis.errorbar(steps, [100 * m for m in mean], yerr=[100 * s for s in std],
                                fmt="*", markersize=10, color=colour)
    any_stopped = any(stopped_steps(mine) for mine in groups.values())
    loss_axis.set(yscale="log", xlabel="optimizer step", ylabel="training loss (logged steps)",
                  title="Training loss" + (" (x: run stopped by the explosion guard)"
                                           if any_stopped else ""))
    error_axis.set(xlabel="optimizer step", ylabel="error (%)",
                   title="Validation error (lines), eval-mode training error (stars)")
    if loss_axis.get_legend_handles_labels()[0]:
        figure.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    figure.suptitle(f"{curves_finding(groups)}\nmean ± std over {seeds} "
                    f"seed{'s' * (seeds != 1)} per setting (dashed: plain, solid: residual)")
    return save(figure, path)


def _present(rows: Sequence[Row], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key) not in (None, "")]


def _per_model(rows: Sequence[Row]) -> dict[str, dict[str, tuple[float, float]]]:
    """{model: {test_err, params, seconds: (mean, std)}} over the seeds of the default setting
    (the rows whose setting is the model's name alone)."""
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if row["setting"] == row["model"] and row.get("test_acc") not in (None, ""):
            groups[row["model"]].append(row)
    return {model: {
        "test_err": _mean_std([100 * (1 - v) for v in _present(mine, "test_acc")]),
        "params": _mean_std([v / 1e6 for v in _present(mine, "parameters")]),
        "seconds": _mean_std(_present(mine, "fit_seconds")),
        "seeds": (len(mine), 0.0),
    } for model, mine in groups.items()}


def cost_finding(points: dict[str, dict[str, tuple[float, float]]]) -> str:
    """The title: the best dense net against the best residual net, error and costs."""
    best = {}
    for family in ("residual", "dense"):
        mine = {m: p for m, p in points.items() if family_of(m) == family}
        if mine:
            best[family] = min(mine.items(), key=lambda item: item[1]["test_err"][0])
    if len(best) < 2:
        return "Test error against parameters and training time"
    (dense, d), (residual, r) = best["dense"], best["residual"]
    gap = r["test_err"][0] - d["test_err"][0]
    spread = max(d["test_err"][1], r["test_err"][1])
    verdict = ("Concatenation beats addition" if gap > spread else
               "Addition beats concatenation" if -gap > spread else
               "Addition and concatenation are level")
    costs = [f"{d['params'][0] / r['params'][0]:.1f}x the parameters",
             f"{d['seconds'][0] / r['seconds'][0]:.1f}x the training seconds"]
    if "memory" in d and "memory" in r:
        costs.append(f"{d['memory'][0] / r['memory'][0]:.1f}x the training memory")
    return (f"{verdict}: {dense} {d['test_err'][0]:.1f}% vs {residual} {r['test_err'][0]:.1f}% "
            f"test error,\nat {', '.join(costs[:-1])} and {costs[-1]}")


def _memory_peaks(memory: Sequence[Row]) -> dict[str, float]:
    """Training peak (MiB) per net as built (not memory-efficient), from memory rows."""
    return {str(row["model"]): float(row["train_peak_mb"]) for row in memory
            if str(row["memory_efficient"]) in ("False", "false", "0")}


def plot_against_cost(rows: Sequence[Row], path: Path, memory: Sequence[Row] = ()) -> Path:
    """Test error (mean ± std over seeds) against parameters, against fit seconds and, where
    ``memory`` rows measure the same nets (``zoo.experiments memory``), against the training
    step's peak memory."""
    points = _per_model(rows)
    peaks = _memory_peaks(memory)
    for model, point in points.items():
        if model in peaks:
            point["memory"] = (peaks[model], 0.0)
    panels = [("params", "parameters (millions)"),
              ("seconds", "training seconds (fit, this machine)")]
    if any("memory" in point for point in points.values()):
        first = memory[0]
        panels.append(("memory", f"training-step peak memory (MiB; batch {first['batch_size']}, "
                                 f"{first['image_size']} px, {first['device']})"))
    figure, axes = plt.subplots(1, len(panels), figsize=(6.25 * len(panels), 4.8), sharey=True)
    for axis, (cost, label) in zip(axes, panels, strict=True):
        for model, point in sorted(points.items()):
            if cost not in point:
                continue
            (x, x_std), (y, y_std) = point[cost], point["test_err"]
            marker = "o" if family_of(model) == "dense" else "s"
            axis.errorbar(x, y, xerr=x_std, yerr=y_std, fmt=marker, markersize=8, capsize=3,
                          color=style_for(model)["color"],
                          label=f"{model} ({FAMILY_NAMES[family_of(model)].split()[0]})")
            axis.annotate(model, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        axis.set_xlabel(label)
        if cost in ("seconds", "memory"):  # spans of 10x: a log axis, labelled in plain numbers
            axis.set_xscale("log")
            axis.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.xaxis.set_major_formatter(ScalarFormatter())
            axis.xaxis.set_minor_formatter(NullFormatter())
    seeds = max((int(p["seeds"][0]) for p in points.values()), default=0)
    axes[0].set_ylabel(f"test error (%), mean ± std over {seeds} seeds")
    legend(axes[1], fontsize=8)
    figure.suptitle(cost_finding(points))
    return save(figure, path)


def plot_lr_control(rows: Sequence[Row], path: Path) -> Path:
    """Training error (eval mode) and test error against the reference learning rate, a line
    per model, mean ± std over seeds: is the model's result the same at every rate tried?"""
    by_model: dict[str, dict[float, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.get("lr") not in (None, ""):
            by_model[row["model"]][float(row["lr"])].append(row)
    figure, axes = plt.subplots(1, 2, figsize=(12.5, 4.6), sharey=True)
    best = {}
    for axis, key, what in ((axes[0], "train_eval_err", "training error"),
                            (axes[1], "test_acc", "test error")):
        for model, by_lr in sorted(by_model.items()):
            # rates where the model left a value (a diverged run has no error to draw)
            rates = sorted(lr for lr in by_lr if _present(by_lr[lr], key))
            if not rates:
                continue
            stats = [_mean_std([100 * (1 - v if key == "test_acc" else v)
                                for v in _present(by_lr[lr], key)]) for lr in rates]
            axis.errorbar(rates, [m for m, _ in stats], yerr=[s for _, s in stats], capsize=3,
                          marker="o", label=model, **style_for(model))
            if key == "train_eval_err":
                best[model] = min((m, lr) for (m, _), lr in zip(stats, rates, strict=True))
        rates = sorted({lr for by_lr in by_model.values() for lr in by_lr})
        axis.set(xscale="log", xlabel="optim.lr (per 128 images; scaled by the batch)",
                 ylabel=f"{what} (%), mean ± std over seeds", title=what)
        axis.set_xticks(rates, [f"{lr:g}" for lr in rates])
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.tick_params(labelleft=True)
        axis.set_ylim(bottom=0)
    legend(axes[0])
    figure.suptitle("Lowest training error over the rates tried: " + "; ".join(
        f"{model} {error:.1f}% at lr {lr:g}" for model, (error, lr) in sorted(best.items())))
    return save(figure, path)
