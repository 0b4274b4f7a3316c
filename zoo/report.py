"""Collect training runs into error-curve figures and a Markdown summary table.

    python -m zoo.report multirun/2026-11-28/07-10-00 --out reports/degradation
    python -m zoo.report outputs/.../RUN_A outputs/.../RUN_B --out reports/mine

Each argument is a run directory (it holds ``.hydra/config.yaml`` and ``csv/metrics.csv``, as
``train.py logger=csv`` or the default loggers write them) or any folder above run
directories, e.g. a Hydra multirun sweep directory; its runs are found recursively.

The figure follows He et al. 2015, Figure 6: training error (thin dashed) and validation error
(bold) against epochs, one panel per kind of network (no skip / addition / concatenation), so
that the plain nets' and the ResNets' curves can be compared at equal depth. The training error
is ``1 - train/acc``, the accuracy over the epoch's augmented training batches as they were
trained on (as in the paper). A second figure draws the training loss against optimizer steps
(as logged, ``trainer.log_every_n_steps``) for short runs and for runs that diverged; the
table's ``status`` says which runs the explosion guard stopped (their ``diverged.txt``). Runs of
the same model in one sweep are told apart by the model options that differ (``resnet56
norm=none``). Seconds are the run's wall time read from its files: from the creation of
``.hydra/config.yaml`` to the last write of ``metrics.csv`` (test included).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zoo

SKIP_PANELS = {"none": "plain (no skip)", "add": "residual (addition)", "concat": "dense (concatenation)"}
TABLE_COLUMNS = ["run", "model", "params", "epochs", "steps", "final train loss", "final train error",
                 "best val acc", "test acc", "seconds", "status"]
DIVERGED_FILE = "diverged.txt"  # written by zoo.run when the explosion guard stops a run


@dataclass
class Run:
    """One training run read back from its directory."""

    path: Path
    model: str
    data: str
    config: dict[str, Any]
    epochs: list[int] = field(default_factory=list)
    train_error: list[float] = field(default_factory=list)  # per epoch, in epoch order
    val_epochs: list[int] = field(default_factory=list)
    val_error: list[float] = field(default_factory=list)
    steps: int | None = None  # optimizer steps trained, as the training metrics' step column says
    loss_steps: list[int] = field(default_factory=list)  # optimizer steps with a logged train loss
    train_loss: list[float] = field(default_factory=list)
    test_acc: float | None = None
    seconds: float | None = None
    diverged: str | None = None  # the explosion guard's message when it stopped the run
    label: str = ""  # the model, and the model options that tell it from a sweep sibling

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        if self.diverged is None:
            return "done" if self.test_acc is not None else "unfinished"
        step = self.diverged.split("diverged at step ", 1)[-1].split(":", 1)[0]
        return f"diverged at step {step}" if step.isdigit() else "diverged"

    @property
    def skip(self) -> str:
        try:
            return zoo.describe(self.model)["skip"]
        except ValueError:
            return "none" if self.model.startswith("plain") else "add"

    @property
    def best_val_acc(self) -> float | None:
        return 1.0 - min(self.val_error) if self.val_error else None

    @property
    def final_train_error(self) -> float | None:
        return self.train_error[-1] if self.train_error else None

    def parameters(self) -> int | None:
        from zoo.module import create_arguments

        data = self.config.get("data") or {}
        # The model's own options change the count (norm=none adds biases); the class and
        # channel counts are interpolations of data.* in the saved config.
        options = {key: value for key, value in create_arguments(self.config.get("model") or {}).items()
                   if key not in ("num_classes", "in_channels") and not str(value).startswith("${")}
        try:
            net = zoo.create(self.model, num_classes=int(data.get("num_classes", 10)),
                             in_channels=int(data.get("in_channels", 3)), **options)
        except (ValueError, TypeError):
            return None
        return zoo.count_parameters(net)


def find_run_dirs(paths: Sequence[Path | str]) -> list[Path]:
    """Run directories at or below ``paths``, in the order given, each found once."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if (path / ".hydra" / "config.yaml").exists():
            candidates = [path]
        else:
            candidates = sorted(config.parent.parent for config in path.rglob(".hydra/config.yaml"))
        for candidate in candidates:
            if (candidate / "csv" / "metrics.csv").exists() and candidate not in found:
                found.append(candidate)
    return found


def _float(value: str | None) -> float | None:
    if value in (None, ""):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def read_run(run_dir: Path | str) -> Run:
    """Read ``.hydra/config.yaml`` and ``csv/metrics.csv`` (Lightning CSVLogger) of one run."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    config_path = run_dir / ".hydra" / "config.yaml"
    metrics_path = run_dir / "csv" / "metrics.csv"
    config = OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)
    run = Run(run_dir, str(config["model"]["name"]), str(config["data"]["name"]), config)
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    loss: dict[int, float] = {}
    with metrics_path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            step = _float(row.get("step"))
            step_loss = _float(row.get("train/loss_step") or row.get("train/loss"))
            if step_loss is not None and step is not None:
                loss[int(step)] = step_loss
            if step is not None and any(_float(v) is not None for k, v in row.items() if k.startswith("train/")):
                run.steps = max(run.steps or 0, int(step) + 1)  # rows are logged at the step's index
            epoch = _float(row.get("epoch"))
            if epoch is None:
                continue
            if (acc := _float(row.get("train/acc"))) is not None:
                train[int(epoch)] = 1.0 - acc
            if (acc := _float(row.get("val/acc"))) is not None:
                val[int(epoch)] = 1.0 - acc
            if (acc := _float(row.get("test/acc"))) is not None:
                run.test_acc = acc
    run.epochs, run.train_error = sorted(train), [train[e] for e in sorted(train)]
    run.val_epochs, run.val_error = sorted(val), [val[e] for e in sorted(val)]
    run.loss_steps, run.train_loss = sorted(loss), [loss[s] for s in sorted(loss)]
    if (run_dir / DIVERGED_FILE).exists():
        run.diverged = (run_dir / DIVERGED_FILE).read_text().strip()
    run.seconds = max(0.0, metrics_path.stat().st_mtime - config_path.stat().st_mtime)
    return run


def run_settings(run_dir: Path, model_config: dict[str, Any]) -> dict[str, str]:
    """What a run was asked for: its model options (``model.norm``: ``none``) and its
    command-line overrides (``.hydra/overrides.yaml``: ``optim.lr``: ``0.01``)."""
    import yaml

    settings = {f"model.{key}": str(value) for key, value in model_config.items() if key != "name"}
    overrides_path = run_dir / ".hydra" / "overrides.yaml"
    if overrides_path.is_file():
        for override in yaml.safe_load(overrides_path.read_text()) or []:
            key, _, value = str(override).lstrip("+~").partition("=")
            settings[key] = value
    return settings


def sibling_suffixes(models: Sequence[str], settings: Sequence[dict[str, str]]) -> list[str]:
    """For each run, `` key=value`` for every setting in which it differs from another run of
    the same model (``" model.norm=none"`` in a sweep over ``model.norm``, ``" optim.lr=0.01"``)."""
    suffixes = []
    for model, mine in zip(models, settings):
        siblings = [other for name, other in zip(models, settings) if name == model]
        keys = dict.fromkeys(key for other in siblings for key in other)
        differing = [key for key in keys if key != "model" and not key.startswith("hydra.")
                     and len({other.get(key) for other in siblings}) > 1]
        suffixes.append("".join(f" {key}={mine[key]}" for key in differing if key in mine))
    return suffixes


def label_runs(runs: Sequence[Run]) -> None:
    """Label each run by its model, plus the settings that differ between runs of the same model
    (``resnet56 model.norm=none``); runs that still share a label are named by their directory."""
    settings = [run_settings(run.path, run.config.get("model") or {}) for run in runs]
    labels = [run.model + suffix for run, suffix in zip(runs, sibling_suffixes([r.model for r in runs], settings))]
    for run, label in zip(runs, labels):
        run.label = label if labels.count(label) == 1 else run.name


def plot_loss_curves(runs: Sequence[Run], path: Path) -> Path:
    """Training loss against optimizer steps (as logged), every run on one log-scale axis; a run
    the explosion guard stopped ends in an x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.4))
    for run in runs:
        finite = [(step, value) for step, value in zip(run.loss_steps, run.train_loss) if math.isfinite(value)]
        label = run.label + (f" ({run.status})" if run.diverged else "")
        style = "--" if run.skip == "none" else "-"
        if finite:
            (line,) = axis.plot(*zip(*finite), style, marker="." if len(finite) < 30 else None, label=label)
            if run.diverged:
                axis.plot(*finite[-1], "x", markersize=10, color=line.get_color())
        elif run.diverged:  # stopped before a finite loss was logged
            axis.plot([], [], "x", label=label)
    axis.set_yscale("log")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("training loss (logged steps)")
    data = ", ".join(sorted({run.data for run in runs}))
    axis.set_title(f"Training loss ({data}; dashed: no skip)")
    axis.grid(True, which="both", alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    else:  # runs shorter than trainer.log_every_n_steps log no step loss
        axis.text(0.5, 0.5, "no step losses logged:\nrun with a smaller trainer.log_every_n_steps",
                  transform=axis.transAxes, ha="center", va="center")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_error_curves(runs: Sequence[Run], path: Path) -> Path:
    """Training error (dashed) and validation error (bold) per epoch, a panel per skip type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [kind for kind in SKIP_PANELS if any(run.skip == kind for run in runs)]
    figure, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 4.2), sharey=True, squeeze=False)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    models = list(dict.fromkeys(run.model for run in runs))
    # The same depth gets the same colour in every panel (plain56 and resnet56 alike).
    depth_colour = {}
    for model in models:
        depth = "".join(ch for ch in model if ch.isdigit())
        depth_colour.setdefault(depth, palette[len(depth_colour) % len(palette)])
    for axis, kind in zip(axes[0], kinds):
        for run in (r for r in runs if r.skip == kind):
            colour = depth_colour["".join(ch for ch in run.model if ch.isdigit())]
            label = run.label or run.name
            # Epochs count from 1 at the end of the first epoch; markers show one-epoch runs.
            axis.plot([e + 1 for e in run.epochs], [100 * v for v in run.train_error], "--",
                      color=colour, linewidth=1, marker=".")
            axis.plot([e + 1 for e in run.val_epochs], [100 * v for v in run.val_error], "-",
                      color=colour, linewidth=2, marker="o", label=label)
        axis.set_title(SKIP_PANELS[kind])
        axis.set_xlabel("epoch")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    axes[0][0].set_ylabel("error (%)  dashed: training, bold: validation")
    data = ", ".join(sorted({run.data for run in runs}))
    figure.suptitle(f"Training and validation error ({data})")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def summary_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    return [{
        "run": run.name,
        "model": run.label or run.model,
        "params": run.parameters(),
        "epochs": len(run.epochs),
        "steps": run.steps,
        "final train loss": run.train_loss[-1] if run.train_loss else None,
        "final train error": run.final_train_error,
        "best val acc": run.best_val_acc,
        "test acc": run.test_acc,
        "seconds": run.seconds,
        "status": run.status,
    } for run in runs]


def markdown_summary(rows: Sequence[dict[str, Any]]) -> str:
    def cell(column: str, value: Any) -> str:
        if value is None:
            return "-"
        if column == "params":
            return f"{value:,}"
        if column == "seconds":
            return f"{value:.0f}"
        if column == "final train error":
            return f"{100 * value:.1f}%"
        if column == "final train loss":
            return f"{value:.4g}"
        if isinstance(value, float):
            return f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(c, row[c]) for c in TABLE_COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def write_report(paths: Sequence[Path | str], out_dir: Path | str) -> dict[str, Path]:
    """Figures and ``summary.md`` for the runs at or below ``paths``; returns what was written."""
    out_dir = Path(out_dir)
    run_dirs = find_run_dirs(paths)
    if not run_dirs:
        raise FileNotFoundError(
            f"no runs under {', '.join(map(str, paths))} (a run holds .hydra/config.yaml and "
            f"csv/metrics.csv: train with logger=csv or the default loggers)")
    runs = [read_run(run_dir) for run_dir in run_dirs]
    label_runs(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = plot_error_curves(runs, out_dir / "error_curves.png")
    loss_figure = plot_loss_curves(runs, out_dir / "loss_curves.png")
    table = markdown_summary(summary_rows(runs))
    summary = out_dir / "summary.md"
    sources = "\n".join(f"- `{run.path}`" for run in runs)
    diverged = "\n".join(f"- {run.label}: {run.diverged}" for run in runs if run.diverged)
    summary.write_text(
        f"# Runs\n\n{table}\n\n" + (f"Stopped by the explosion guard:\n{diverged}\n\n" if diverged else "")
        + f"![error curves]({figure.name})\n\n![training loss]({loss_figure.name})\n\n"
        f"Run directories:\n{sources}\n")
    return {"figure": figure, "loss_figure": loss_figure, "summary": summary}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories or folders above them (multirun dirs)")
    parser.add_argument("--out", type=Path, required=True, help="where the PNG and summary.md go")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.runs, args.out)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(written["summary"].read_text())
    print(f"written: {written['figure']}, {written['summary']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
