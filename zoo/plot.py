"""Local plots from the tidy files the measurement callbacks write, for runs side by side.

    python -m zoo.plot gradflow outputs/plain56 outputs/resnet56 --out plots
        gradient_flow_depth.png: gradient norm against depth (log y), one line per run at its
                                 first and last logged step (or --at mean / first / last);
        gradient_flow_ratio.png: stem-over-head gradient norm ratio over training (log y).
    python -m zoo.plot gain outputs/resnet20 outputs/resnet110 --out plots
        residual_gain.png:       ||f(x)|| / ||x|| per block at the first and last epoch.

Each RUN_DIR is a run directory (Hydra's ``outputs/...``) holding ``gradient_flow.csv`` /
``residual_gain.csv`` (see :mod:`zoo.callbacks`). Lines are labelled ``model.name/data.name``
from ``RUN_DIR/.hydra/config.yaml`` when it exists, else with the directory name.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines
import matplotlib.pyplot as plt
import numpy as np
import yaml

GRADIENT_FLOW_FILE = "gradient_flow.csv"
RESIDUAL_GAIN_FILE = "residual_gain.csv"


def _run_config(run_dir: Path) -> dict:
    """The run's saved Hydra config (``.hydra/config.yaml``), or {} without one."""
    config_path = run_dir / ".hydra" / "config.yaml"
    return (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}


def run_label(run_dir: Path, config: dict | None = None) -> str:
    """``model.name/data.name`` from the run's saved Hydra config, else the directory name."""
    config = _run_config(run_dir) if config is None else config
    model = (config.get("model") or {}).get("name")
    data = (config.get("data") or {}).get("name")
    parts = [str(p) for p in (model, data) if p is not None and "${" not in str(p)]
    return "/".join(parts) if parts else run_dir.resolve().name


def _labels(run_dirs: Sequence[Path]) -> list[str]:
    from zoo.report import run_settings, sibling_suffixes

    # Runs of one model that differ in a setting (model.norm=batch,none) are named by it ...
    configs = [_run_config(run_dir) for run_dir in run_dirs]
    models = [c.get("model") or {} for c in configs]
    suffixes = sibling_suffixes([str(m.get("name")) for m in models],
                                [run_settings(d, m) for d, m in zip(run_dirs, models)])
    labels = [run_label(d, c) + suffix for d, c, suffix in zip(run_dirs, configs, suffixes)]
    # ... and a seed sweep, which gives the same label twice, the directory.
    return [
        f"{label} ({run_dir.name})" if labels.count(label) > 1 else label
        for label, run_dir in zip(labels, run_dirs)
    ]


def _read_tidy(run_dir: Path, file_name: str) -> list[dict[str, str]]:
    path = run_dir / file_name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: was the run made with the measurement callbacks on "
            f"(callbacks=default)?"
        )
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def read_gradient_flow(run_dir: Path) -> dict[int, dict[int, float]]:
    """{step: {unit_index: grad_norm}} from a run's ``gradient_flow.csv``."""
    table: dict[int, dict[int, float]] = defaultdict(dict)
    for row in _read_tidy(run_dir, GRADIENT_FLOW_FILE):
        table[int(row["step"])][int(row["unit_index"])] = float(row["grad_norm"])
    return dict(table)


def read_residual_gain(run_dir: Path) -> dict[int, dict[int, float]]:
    """{epoch: {unit_index: residual_gain}} from a run's ``residual_gain.csv``."""
    table: dict[int, dict[int, float]] = defaultdict(dict)
    for row in _read_tidy(run_dir, RESIDUAL_GAIN_FILE):
        table[int(row["epoch"])][int(row["unit_index"])] = float(row["residual_gain"])
    return dict(table)


def _profile(by_index: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    indices = sorted(by_index)
    return np.array(indices), np.array([by_index[i] for i in indices])


def plot_gradient_flow(run_dirs: Sequence[Path], out_dir: Path, at: str = "both") -> list[Path]:
    """Write gradient_flow_depth.png and gradient_flow_ratio.png; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = _labels(run_dirs)
    depth_figure, depth_axes = plt.subplots(figsize=(8, 5))
    ratio_figure, ratio_axes = plt.subplots(figsize=(8, 5))
    for color, (run_dir, label) in zip(plt.cm.tab10.colors * 10, zip(run_dirs, labels)):
        table = read_gradient_flow(run_dir)
        steps = sorted(table)
        if not steps:
            continue
        if at == "mean":
            units = sorted({i for step in steps for i in table[step]})
            # Geometric mean: norms span orders of magnitude on a log axis.
            mean = {i: float(np.exp(np.mean([np.log(table[s][i]) for s in steps if table[s].get(i, 0) > 0])))
                    for i in units}
            x, y = _profile(mean)
            depth_axes.plot(x, y, color=color, label=f"{label}, mean over {len(steps)} steps")
        else:
            picks = {"first": [steps[0]], "last": [steps[-1]], "both": [steps[0], steps[-1]]}[at]
            for step in dict.fromkeys(picks):
                x, y = _profile(table[step])
                style = "--" if step == steps[0] and len(steps) > 1 and at == "both" else "-"
                depth_axes.plot(x, y, style, color=color, marker=".", label=f"{label}, step {step}")
        ratios = []
        for step in steps:
            x, y = _profile(table[step])
            ratios.append(y[0] / y[-1] if y[-1] > 0 else np.nan)
        ratio_axes.plot(steps, ratios, color=color, marker=".", label=label)
    depth_axes.set(yscale="log", xlabel="unit index (stem → head)", ylabel="gradient L2 norm",
                   title="Gradient flow through depth")
    ratio_axes.set(yscale="log", xlabel="training step", ylabel="first unit / last unit",
                   title="Stem-over-head gradient norm ratio")
    ratio_axes.axhline(1.0, color="grey", linewidth=0.8)
    paths = [out_dir / "gradient_flow_depth.png", out_dir / "gradient_flow_ratio.png"]
    for figure, axes, path in ((depth_figure, depth_axes, paths[0]), (ratio_figure, ratio_axes, paths[1])):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)
    return paths


def plot_residual_gain(run_dirs: Sequence[Path], out_dir: Path, at: str = "both") -> list[Path]:
    """Write residual_gain.png (gain per block at the first and/or last epoch); return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(8, 5))
    for color, (run_dir, label) in zip(plt.cm.tab10.colors * 10, zip(run_dirs, _labels(run_dirs))):
        table = read_residual_gain(run_dir)
        epochs = sorted(table)
        if not epochs:
            continue
        picks = {"first": [epochs[0]], "last": [epochs[-1]], "both": [epochs[0], epochs[-1]]}[at]
        for epoch in dict.fromkeys(picks):
            x, y = _profile(table[epoch])
            style = "--" if epoch == epochs[0] and len(epochs) > 1 and at == "both" else "-"
            axes.plot(x, y, style, color=color, marker=".", label=f"{label}, epoch {epoch}")
    axes.set(xlabel="unit index (stem → head)", ylabel="||f(x)|| / ||x||",
             title="Residual gain per block (near 0: the block passes its input through)")
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path = out_dir / "residual_gain.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return [path]


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m zoo.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["gradflow", "gain"])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, default=Path("plots"), help="folder for the PNGs")
    parser.add_argument("--at", choices=["both", "first", "last", "mean"], default="both",
                        help="which logged step (epoch for gain) to draw; mean: gradflow only")
    args = parser.parse_args(argv)
    if args.kind == "gradflow":
        paths = plot_gradient_flow(args.run_dirs, args.out, args.at)
    else:
        if args.at == "mean":
            parser.error("--at mean is for gradflow only")
        paths = plot_residual_gain(args.run_dirs, args.out, args.at)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
