"""Local plots from the tidy files the measurement callbacks write, for runs side by side.

    python -m zoo.results gradflow outputs/plain56 outputs/resnet56 --out plots
        gradient_flow_depth.png: gradient norm against depth (log y), one line per run at its
                                 first and last logged step (or --at mean / first / last);
        gradient_flow_ratio.png: stem-over-head gradient norm ratio over training (log y).
    python -m zoo.results gain outputs/resnet20 outputs/resnet110 --out plots
        residual_gain.png:       ||f(x)|| / ||x|| per block at the first and last epoch.

Each RUN_DIR is a run directory (Hydra's ``outputs/...``) holding ``gradient_flow.csv`` /
``residual_gain.csv`` (see :mod:`zoo.callbacks`), read through :mod:`zoo.runs.reader`. Lines are
labelled ``model.name/data.name`` (plus the setting that differs between runs of one model) from
the run's record, else with the directory name; colour by depth, plain dashed, residual solid.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zoo.results.style import legend, plt, save, style_for
from zoo.runs.reader import (
    GRADIENT_FLOW_FILE,
    RESIDUAL_GAIN_FILE,
    Run,
    is_run_dir,
    read_run,
    setting_labels,
)


def _read(run_dir: Path) -> Run:
    """The run at ``run_dir``; a bare folder of tidy files is a run without a record."""
    return read_run(run_dir) if is_run_dir(run_dir) else Run(Path(run_dir), {})


def run_label(run: Run) -> str:
    """``model.name/data.name`` from the run's record or saved config, else the directory name."""
    if not run.record.get("model"):
        return run.path.resolve().name
    return f"{run.model}/{run.data}" if run.record.get("data") else run.model


def _labels(run_dirs: Sequence[Path]) -> tuple[list[Run], list[str]]:
    runs = [_read(run_dir) for run_dir in run_dirs]
    # Runs of one model that differ in a setting (model.norm=batch,none) are named by it ...
    suffixes = [label[len(run.model):]
                for run, label in zip(runs, setting_labels(runs), strict=True)]
    labels = [run_label(run) + suffix for run, suffix in zip(runs, suffixes, strict=True)]
    # ... and a seed sweep, which gives the same label twice, by the directory.
    return runs, [f"{label} ({run.name})" if labels.count(label) > 1 else label
                  for label, run in zip(labels, runs, strict=True)]


def read_gradient_flow(run: Run) -> dict[int, dict[int, float]]:
    """{step: {unit_index: grad_norm}} from a run's ``gradient_flow.csv``."""
    table: dict[int, dict[int, float]] = defaultdict(dict)
    for row in run.tidy(GRADIENT_FLOW_FILE):
        table[int(row["step"])][int(row["unit_index"])] = float(row["grad_norm"])
    return dict(table)


def read_residual_gain(run: Run) -> dict[int, dict[int, float]]:
    """{epoch: {unit_index: residual_gain}} from a run's ``residual_gain.csv``."""
    table: dict[int, dict[int, float]] = defaultdict(dict)
    for row in run.tidy(RESIDUAL_GAIN_FILE):
        table[int(row["epoch"])][int(row["unit_index"])] = float(row["residual_gain"])
    return dict(table)


def _profile(by_index: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    indices = sorted(by_index)
    return np.array(indices), np.array([by_index[i] for i in indices])


def _picks(keys: list[int], at: str) -> list[int]:
    return list(dict.fromkeys(
        {"first": [keys[0]], "last": [keys[-1]], "both": [keys[0], keys[-1]]}[at]))


def _when_style(key: int, keys: list[int], at: str) -> dict:
    """The first logged step thin and faded, the last bold: line styles say plain vs residual."""
    first = at == "both" and len(keys) > 1 and key == keys[0]
    return {"linewidth": 1.0, "alpha": 0.5} if first else {"linewidth": 1.8}


def plot_gradient_flow(run_dirs: Sequence[Path], out_dir: Path, at: str = "both") -> list[Path]:
    """Write gradient_flow_depth.png and gradient_flow_ratio.png; return their paths."""
    runs, labels = _labels(run_dirs)
    medians: dict[str, float] = {}
    depth_figure, depth_axes = plt.subplots(figsize=(8, 5))
    ratio_figure, ratio_axes = plt.subplots(figsize=(8, 5))
    for run, label in zip(runs, labels, strict=True):
        table = read_gradient_flow(run)
        steps = sorted(table)
        if not steps:
            continue
        style = style_for(run.model)
        if at == "mean":
            units = sorted({i for step in steps for i in table[step]})
            # Geometric mean: norms span orders of magnitude on a log axis.
            mean = {i: float(np.exp(np.mean([np.log(table[s][i]) for s in steps
                                             if table[s].get(i, 0) > 0])))
                    for i in units}
            depth_axes.plot(*_profile(mean), **style,
                            label=f"{label}, mean over {len(steps)} steps")
        else:
            for step in _picks(steps, at):
                depth_axes.plot(*_profile(table[step]), **style, **_when_style(step, steps, at),
                                marker=".", label=f"{label}, step {step}")
        ratios = []
        for step in steps:
            _, y = _profile(table[step])
            ratios.append(y[0] / y[-1] if y[-1] > 0 else np.nan)
        ratio_axes.plot(steps, ratios, **style, marker=".", label=label)
        if len(ratios) > 1:  # the title states the finding: the typical ratio after step 0
            medians[run.model] = float(np.nanmedian(ratios[1:]))
    depth_axes.set(yscale="log", xlabel="unit index (stem → head)", ylabel="gradient L2 norm",
                   title="Gradient flow through depth (faded: first logged step)")
    finding = ", ".join(f"{model} {ratio:.2g}" for model, ratio in
                        sorted(medians.items(), key=lambda item: item[1]))
    ratio_axes.set(yscale="log", xlabel="training step", ylabel="first unit / last unit",
                   title="Stem-over-head gradient norm ratio" + (
                       f"\nmedian after the first step: {finding}" if finding else ""))
    ratio_axes.axhline(1.0, color="grey", linewidth=0.8)
    for axes in (depth_axes, ratio_axes):
        axes.grid(True, which="both", alpha=0.3)
        legend(axes)
    return [save(depth_figure, out_dir / "gradient_flow_depth.png"),
            save(ratio_figure, out_dir / "gradient_flow_ratio.png")]


def in_training_ratio(run: Run, skip_fraction: float = 0.1) -> float:
    """Median stem-over-head gradient norm ratio over the logged steps after the first
    ``skip_fraction`` of training (initialisation and warm-up left out); NaN without steps."""
    table = read_gradient_flow(run)
    steps = sorted(table)
    if not steps:
        return float("nan")
    late = [s for s in steps if s >= skip_fraction * steps[-1]] or steps
    ratios = [_profile(table[s])[1] for s in late]
    return float(np.nanmedian([y[0] / y[-1] if y[-1] > 0 else np.nan for y in ratios]))


def ratio_finding(points: Sequence[tuple[str, float, float]]) -> str:
    """The title's sentence from (skip, ratio, training error) points: do the two families'
    ratio ranges overlap while their training errors do not?"""
    ranges = {}
    for skip in ("none", "add"):
        mine = [(r, e) for s, r, e in points if s == skip]
        if mine:
            ranges[skip] = (min(r for r, _ in mine), max(r for r, _ in mine),
                            min(e for _, e in mine), max(e for _, e in mine))
    if len(ranges) < 2:
        return "stem/head gradient ratio during training against final training error"
    plain, residual = ranges["none"], ranges["add"]
    overlap = max(plain[0], residual[0]) <= min(plain[1], residual[1])
    return ("plain and residual nets train with stem/head ratios in the same range"
            if overlap else "plain and residual nets train with different stem/head ratios") + \
        f" (plain {plain[0]:.2g}-{plain[1]:.2g}, residual {residual[0]:.2g}-{residual[1]:.2g})"


def plot_ratio_against_training_error(run_dirs: Sequence[Path], out_dir: Path) -> Path | None:
    """gradient_flow_vs_training_error.png: each run's in-training stem/head ratio against its
    final eval-mode training error (``train_eval/err``); None when no run has both."""
    from zoo.models import describe

    figure, axes = plt.subplots(figsize=(8, 5), layout="constrained")
    points, seen = [], set()
    for run in (_read(run_dir) for run_dir in run_dirs):
        error = (run.record.get("train_eval") or {}).get("train_eval/err")
        ratio = in_training_ratio(run)
        if not isinstance(error, int | float) or not np.isfinite(ratio):
            continue
        skip = describe(run.model)["skip"]
        points.append((skip, ratio, 100 * error))
        axes.plot([ratio], [100 * error], marker="o" if skip == "none" else "s",
                  color=style_for(run.model)["color"], fillstyle="none" if skip == "none" else
                  "full", linestyle="none", label=None if run.model in seen else run.model)
        seen.add(run.model)
    if not points:
        plt.close(figure)
        return None
    axes.axvline(1.0, color="grey", linewidth=0.8)
    ratios = [ratio for _, ratio, _ in points]  # at least 0.1-10: a healthy ratio looks so
    axes.set_xlim(min(0.1, min(ratios) / 2), max(10.0, max(ratios) * 2))
    axes.set(xscale="log", xlabel="stem / head gradient norm, median after the first 10% of steps",
             ylabel="final training error, eval mode (%)",
             title=ratio_finding(points) + f"\n{len(points)} runs (open: plain, filled: residual)")
    axes.grid(True, which="both", alpha=0.3)
    legend(axes)
    return save(figure, out_dir / "gradient_flow_vs_training_error.png")


def plot_residual_gain(run_dirs: Sequence[Path], out_dir: Path, at: str = "both") -> list[Path]:
    """Write residual_gain.png (gain per block at the first and/or last epoch); return its path."""
    figure, axes = plt.subplots(figsize=(8, 5))
    runs, labels = _labels(run_dirs)
    for run, label in zip(runs, labels, strict=True):
        table = read_residual_gain(run)
        epochs = sorted(table)
        for epoch in _picks(epochs, at) if epochs else []:
            axes.plot(*_profile(table[epoch]), **style_for(run.model),
                      **_when_style(epoch, epochs, at), marker=".", label=f"{label}, epoch {epoch}")
    axes.set(xlabel="unit index (stem → head)", ylabel="||f(x)|| / ||x||",
             title="Residual gain per block (near 0: the block passes its input through)")
    axes.set_ylim(bottom=0)
    legend(axes)
    return [save(figure, out_dir / "residual_gain.png")]


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m zoo.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["gradflow", "gain"])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, default=Path("plots"), help="folder for the PNGs")
    parser.add_argument("--at", choices=["both", "first", "last", "mean"], default="both",
                        help="which logged step (epoch for gain) to draw; mean: gradflow only")
    args = parser.parse_args(argv)
    if args.kind == "gain" and args.at == "mean":
        parser.error("--at mean is for gradflow only")
    draw = plot_gradient_flow if args.kind == "gradflow" else plot_residual_gain
    try:
        paths = draw(args.run_dirs, args.out, args.at)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
