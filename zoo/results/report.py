"""Collect training runs into error-curve figures and a Markdown summary table.

    python -m zoo.results report multirun/2026-11-28/07-10-00 --out reports/degradation
    python -m zoo.results report outputs/.../RUN_A outputs/.../RUN_B --out reports/mine

Each argument is a run directory (its ``run.json``, or ``.hydra/config.yaml`` for older runs, and
``csv/metrics.csv``, as ``train.py logger=csv`` or the default loggers write them) or any folder
above run directories, e.g. a Hydra multirun sweep directory; runs are found by
:mod:`zoo.runs.reader`.

The figure follows He et al. 2015, Figure 6: training error (thin) and validation error (bold)
against epochs, one panel per kind of network (no skip / addition / concatenation), colour by
depth, plain dashed and residual solid as in every figure of the zoo (:mod:`zoo.results.style`). The
thin line is ``1 - train/acc``, the running accuracy over the epoch's augmented training batches;
the star is the training error as the papers mean it, ``train_eval/err``: an eval-mode pass over
the whole training set after fit. A second figure draws the training loss against optimizer
steps (as logged, ``trainer.log_every_n_steps``). The table's ``status`` is the run record's
(done, diverged at step N, preempted, failed); runs of the same model in one sweep are told apart
by the settings that differ (``resnet56 model.norm=none``). Seconds are the record's fit time
(training and validation); for older runs, the span of the run's files.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoo.results.style import FAMILY_NAMES, family_of, legend, plt, save, style_for
from zoo.runs.reader import HYDRA_CONFIG_FILE, METRICS_FILE, Run, label_runs, read_runs

TABLE_COLUMNS = ["run", "model", "params", "epochs", "steps", "final train loss",
                 "final train error", "train-eval error", "best val acc", "test acc", "seconds",
                 "status"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]  # sweep siblings of one model: same colour and line


def error_curves(run: Run) -> dict[str, dict[int, float]]:
    """Per-epoch running training error and validation error of a run, from its metrics."""
    return {"train": {epoch: 1.0 - acc for epoch, acc in run.series("train/acc").items()
                      if math.isfinite(acc)},
            "val": {epoch: 1.0 - acc for epoch, acc in run.series("val/acc").items()
                    if math.isfinite(acc)}}


def loss_curve(run: Run) -> dict[int, float]:
    """Training loss per logged optimizer step (``train/loss_step``, else ``train/loss``)."""
    return run.series("train/loss_step", by="step") or run.series("train/loss", by="step")


def steps_trained(run: Run) -> int | None:
    if run.record.get("global_step") is not None:
        return int(run.record["global_step"])
    # Older runs: training rows are logged at the step's index.
    steps = [row["step"] for row in run.metrics()
             if "step" in row and any(k.startswith("train/") for k in row)]
    return int(max(steps)) + 1 if steps else None


def status_text(run: Run) -> str:
    diverged = run.record.get("diverged") or {}
    if run.status == "diverged" and diverged.get("step") is not None:
        unit = f" (unit {diverged['unit']})" if diverged.get("unit") else ""
        return f"diverged at step {diverged['step']}{unit}"
    return run.status


def parameters(run: Run) -> int | None:
    """The record's count; for older runs, the run's own net built again from its config."""
    if run.record.get("parameters") is not None:
        return int(run.record["parameters"])
    import zoo
    from zoo.training.module import create_arguments

    data = run.record.get("data") or {}
    # The model's own options change the count (norm=none adds biases).
    options = {key: value for key, value in create_arguments(run.record.get("model") or {}).items()
               if key not in ("num_classes", "in_channels") and not str(value).startswith("${")}
    try:
        net = zoo.create(run.model, num_classes=int(data.get("num_classes", 10)),
                         in_channels=int(data.get("in_channels", 3)), **options)
    except (ValueError, TypeError):
        return None
    return zoo.count_parameters(net)


def seconds(run: Run) -> float | None:
    if run.record.get("fit_seconds") is not None:
        return float(run.record["fit_seconds"])
    metrics, config = run.path / METRICS_FILE, run.path / HYDRA_CONFIG_FILE
    if metrics.is_file() and config.is_file():
        return max(0.0, metrics.stat().st_mtime - config.stat().st_mtime)
    return None


def _markers(runs: Sequence[Run]) -> list[str | None]:
    """A marker per run when its model appears more than once (siblings share colour and line)."""
    models = [run.model for run in runs]
    return [MARKERS[models[:i].count(model) % len(MARKERS)] if models.count(model) > 1 else None
            for i, model in enumerate(models)]


def plot_loss_curves(runs: Sequence[Run], path: Path) -> Path:
    """Training loss against optimizer steps (as logged), every run on one log-scale axis; a run
    the explosion guard stopped ends in an x."""
    figure, axis = plt.subplots(figsize=(7.5, 4.4))
    for run, marker in zip(runs, _markers(runs), strict=True):
        finite = [(step, value) for step, value in sorted(loss_curve(run).items())
                  if math.isfinite(value)]
        diverged = run.status == "diverged"
        label = run.label + (f" ({status_text(run)})" if diverged else "")
        style = style_for(run.model)
        if finite:
            few = len(finite) < 30
            axis.plot(*zip(*finite, strict=True), **style, marker=marker or ("." if few else None),
                      markevery=None if few else max(1, len(finite) // 8), label=label)
            if diverged:
                axis.plot(*finite[-1], "x", markersize=10, color=style["color"])
        elif diverged:  # stopped before a finite loss was logged
            axis.plot([], [], "x", color=style["color"], label=label)
    axis.set_yscale("log")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("training loss (logged steps)")
    data = ", ".join(sorted({run.data for run in runs}))
    axis.set_title(f"Training loss ({data}; dashed: no skip, solid: skip)")
    if axis.get_legend_handles_labels()[0]:
        legend(axis)
    else:  # runs shorter than trainer.log_every_n_steps log no step loss
        axis.text(0.5, 0.5, "no step losses logged:\nrun with a smaller trainer.log_every_n_steps",
                  transform=axis.transAxes, ha="center", va="center")
    return save(figure, path)


def plot_error_curves(runs: Sequence[Run], path: Path) -> Path:
    """Running training error (thin) and validation error (bold) per epoch, a panel per kind of
    skip; the eval-mode training error after fit (``train_eval/err``) as a star."""
    kinds = [kind for kind in FAMILY_NAMES if any(family_of(run.model) == kind for run in runs)]
    figure, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 4.2), sharey=True,
                                squeeze=False)
    for axis, kind in zip(axes[0], kinds, strict=True):
        for run, marker in zip(runs, _markers(runs), strict=True):
            if family_of(run.model) != kind:
                continue
            curves, style = error_curves(run), style_for(run.model)
            # Epochs count from 1 at the end of the first epoch; markers show one-epoch runs.
            train, val = sorted(curves["train"].items()), sorted(curves["val"].items())
            if train:
                axis.plot([e + 1 for e, _ in train], [100 * v for _, v in train], **style,
                          linewidth=0.9, marker=marker or ".")
            if val:
                axis.plot([e + 1 for e, _ in val], [100 * v for _, v in val], **style,
                          linewidth=2.2, marker=marker or "o", label=run.label)
            train_eval = run.last("train_eval/err")
            if train_eval is not None:
                last_epoch = max([e for e, _ in train + val], default=0) + 1
                axis.plot([last_epoch], [100 * train_eval], "*", markersize=11,
                          color=style["color"], label=None if val else run.label)
        axis.set_title(FAMILY_NAMES[kind])
        axis.set_xlabel("epoch")
        legend(axis)
    axes[0][0].set_ylabel("error (%)  thin: training, bold: validation, *: train-eval")
    data = ", ".join(sorted({run.data for run in runs}))
    figure.suptitle(f"Training and validation error ({data})")
    return save(figure, path)


def summary_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        curves, losses = error_curves(run), loss_curve(run)
        train, val = curves["train"], curves["val"]
        best_val = run.record.get("best_val_acc")
        rows.append({
            "run": run.name,
            "model": run.label or run.model,
            "params": parameters(run),
            "epochs": len(train) if run.metrics() else None,  # unknown, not 0
            "steps": steps_trained(run),
            "final train loss": losses[max(losses)] if losses else None,
            "final train error": train[max(train)] if train else None,
            "train-eval error": run.last("train_eval/err"),
            "best val acc": (best_val if best_val is not None
                             else (1.0 - min(val.values()) if val else None)),
            "test acc": run.last("test/acc"),
            "seconds": seconds(run),
            "status": status_text(run),
        })
    return rows


def markdown_summary(rows: Sequence[dict[str, Any]]) -> str:
    def cell(column: str, value: Any) -> str:
        if value is None:
            return "-"
        if column == "params":
            return f"{value:,}"
        if column == "seconds":
            return f"{value:.0f}"
        if column in ("final train error", "train-eval error"):
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
    runs = read_runs(paths, skip_unreadable=True)  # a bad file: one line, the run left out
    runs = [run for run in runs if run.metrics() or run.record.get("status")]
    if not runs:
        raise FileNotFoundError(
            f"no runs under {', '.join(map(str, paths))} could be read (a run holds run.json or "
            f".hydra/config.yaml and csv/metrics.csv: train with logger=csv or the default "
            f"loggers)")
    for run in runs:
        if not run.metrics():  # its record has the numbers, no file has its curves
            print(f"note: {run.path} has no {METRICS_FILE} and no TensorBoard event files "
                  f"(logger=wandb or none?): its curves are left out, its table row comes from "
                  f"run.json", file=sys.stderr, flush=True)
    label_runs(runs)
    figure = plot_error_curves(runs, out_dir / "error_curves.png")
    loss_figure = plot_loss_curves(runs, out_dir / "loss_curves.png")
    table = markdown_summary(summary_rows(runs))
    summary = out_dir / "summary.md"
    sources = "\n".join(f"- `{run.path}`" for run in runs)
    stopped = "\n".join(f"- {run.label}: {run.record.get('message')}" for run in runs
                        if run.status == "diverged")
    summary.write_text(
        f"# Runs\n\n{table}\n\n"
        + (f"Stopped by the explosion guard:\n{stopped}\n\n" if stopped else "")
        + f"![error curves]({figure.name})\n\n![training loss]({loss_figure.name})\n\n"
        f"Run directories:\n{sources}\n")
    return {"figure": figure, "loss_figure": loss_figure, "summary": summary}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.results report",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path,
                        help="run directories or folders above them (multirun dirs)")
    parser.add_argument("--out", type=Path, required=True, help="where the PNG and summary.md go")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.runs, args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(written["summary"].read_text())
    print("written: " + ", ".join(map(str, written.values())), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
