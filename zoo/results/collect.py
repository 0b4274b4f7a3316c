"""Committed results: the tidy files of a training sweep, collected from its run directories.

    python -m zoo.results collect multirun/2026-11-28/10-00-00 --out docs/results/degradation
    python -m zoo.results redraw                  # docs/results/* -> docs/figures/*

``collect`` reads the run directories (through :mod:`zoo.runs.reader`) and writes three files
that hold every number a figure or table of the experiment shows:

    runs.csv    one row per run: model, depth, family, seed, setting, status, steps,
                train_eval_err, test_acc, best_val_acc, fit_seconds, parameters
    curves.csv  one row per logged point: run, setting, seed, metric (train_loss per step;
                val_err and train_eval_err per evaluation), step (optimizer steps done), epoch,
                value
    meta.json   how they were made: command, machine, torch, wall time, git commit

``depth`` and ``family`` (plain, residual or dense) are the registry's (``zoo.describe``).
``redraw`` (:mod:`zoo.results.redraw`) draws every figure and table from those files alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from zoo.experiments.tidy import as_typed
from zoo.results.style import depth_of, family_of

RUNS_FILE, CURVES_FILE, META_FILE, TABLE_FILE = "runs.csv", "curves.csv", "meta.json", "summary.md"
RUN_COLUMNS = ["run", "model", "depth", "family", "data", "seed", "setting", "status", "steps",
               "train_eval_err", "test_acc", "best_val_acc", "fit_seconds", "parameters", "lr"]
CURVE_COLUMNS = ["run", "setting", "model", "seed", "metric", "step", "epoch", "value"]
# metric in curves.csv -> (the logged key, whether the value is 1 - the logged one, and what to
# add to the CSV's step to count steps done: Lightning logs a step's metrics at its index, the
# train-eval pass after the step, at trainer.global_step).
CURVE_METRICS = {"train_loss": ("train/loss_step", False, 1), "val_err": ("val/acc", True, 1),
                 "train_eval_err": ("train_eval/err", False, 0)}
DEFAULT_RESULTS, DEFAULT_FIGURES = Path("docs/results"), Path("docs/figures")


# ---------------------------------------------------------------------------- collect


Row = dict[str, Any]


def run_rows(paths: Sequence[Path | str]) -> tuple[list[Row], list[Row], list[Any]]:
    """The rows of runs.csv and curves.csv for the runs at or below ``paths``, and the runs."""
    from zoo.results.report import parameters, steps_trained
    from zoo.runs.reader import read_runs, setting_labels

    runs = read_runs(paths, skip_unreadable=True)  # a bad file: one line, the run left out
    if not runs:
        raise FileNotFoundError(f"no runs under {', '.join(map(str, paths))} could be read: pass "
                                "run directories or the sweep folder above them")
    rows, curves = [], []
    for run, setting in zip(runs, setting_labels(runs, ignore=("seed",)), strict=True):
        val = run.series("val/acc")
        best_val = run.record.get("best_val_acc")
        rows.append({
            "run": run.name, "model": run.model, "depth": depth_of(run.model),
            "family": family_of(run.model), "data": run.data, "seed": run.seed, "setting": setting,
            "status": run.status, "steps": steps_trained(run),
            "train_eval_err": run.last("train_eval/err"), "test_acc": run.last("test/acc"),
            "best_val_acc": best_val if best_val is not None
            else (max(val.values()) if val else None),
            "fit_seconds": run.record.get("fit_seconds"), "parameters": parameters(run),
            "lr": _reference_lr(run.path),
        })
        for metric, (key, complement, offset) in CURVE_METRICS.items():
            for row in run.metrics():
                if key in row and "step" in row:
                    curves.append({"run": run.name, "setting": setting, "model": run.model,
                                   "seed": run.seed, "metric": metric,
                                   "step": int(row["step"]) + offset,
                                   "epoch": int(row["epoch"]) if "epoch" in row else None,
                                   "value": 1.0 - row[key] if complement else row[key]})
    return rows, curves, runs


def _reference_lr(run_dir: Path) -> float | None:
    """``optim.lr`` as the run's config holds it (the rate per 128 images, before scaling); read
    as data, so an interpolation there (``${oc.env:...}``) is never resolved: None."""
    from zoo.runs.files import plain_config
    from zoo.runs.reader import HYDRA_CONFIG_FILE

    path = run_dir / HYDRA_CONFIG_FILE
    optim = plain_config(path).get("optim") if path.is_file() else None
    lr = optim.get("lr") if isinstance(optim, dict) else None
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None


def wall_seconds(runs: Sequence[Any]) -> float | None:
    """Seconds during which at least one of the runs was running: from the first start to the
    last end of a sweep, but without the gaps between runs collected from different sessions."""
    spans = sorted((datetime.fromisoformat(r.record["started"]),
                    datetime.fromisoformat(r.record["ended"]))
                   for r in runs if r.record.get("started") and r.record.get("ended"))
    if not spans:
        return None
    total, (start, end) = 0.0, spans[0]
    for next_start, next_end in spans[1:]:
        if next_start > end:  # a gap: close the busy stretch so far
            total += (end - start).total_seconds()
            start = next_start
        end = max(end, next_end)
    return round(total + (end - start).total_seconds(), 1)


def collect(paths: Sequence[Path | str], out_dir: Path | str,
            argv: Sequence[str] | None = None, memory: Path | None = None) -> list[Path]:
    """Write runs.csv, curves.csv and meta.json for the runs at or below ``paths``; ``memory``:
    a ``zoo.experiments memory`` folder measuring the same nets, which the figures then read
    (its path goes into meta.json, relative to ``out_dir``)."""
    import torch

    from zoo.experiments.memory import MEMORY_FILE
    from zoo.experiments.tidy import git_commit, machine, write_csv

    started = time.perf_counter()
    out_dir = Path(out_dir)
    if memory is not None and not (memory / MEMORY_FILE).is_file():
        raise FileNotFoundError(f"{memory}: no {MEMORY_FILE}; measure it first with "
                                f"python -m zoo.experiments memory --out {memory}")
    rows, curves, runs = run_rows(paths)
    written = [write_csv(out_dir / RUNS_FILE, rows, RUN_COLUMNS),
               write_csv(out_dir / CURVES_FILE, curves, CURVE_COLUMNS)]
    argv = list(sys.argv[1:] if argv is None else argv)
    meta = {
        "experiment": out_dir.name,
        "command": shlex.join(["python", "-m", "zoo.results", *as_typed(argv)]),
        "runs": len(rows),
        "run_hosts": sorted({str(r.record["hostname"]) for r in runs if r.record.get("hostname")}),
        "machine": machine(),
        "torch": sorted({str(r.record["torch"]) for r in runs if r.record.get("torch")})
        or [torch.__version__],
        "wall_seconds": wall_seconds(runs),  # while any run was running
        "fit_seconds_total": round(sum(row["fit_seconds"] or 0.0 for row in rows), 1),
        "git_commit": git_commit(),
        "collect_seconds": round(time.perf_counter() - started, 2),
        "files": [path.name for path in written],
        # relative to this folder, so that a redraw from anywhere finds it
        **({"memory": os.path.relpath(memory, out_dir)} if memory is not None else {}),
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return [*written, out_dir / META_FILE]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m zoo.results",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    collect_parser = commands.add_parser("collect", help="tidy files from run directories")
    collect_parser.add_argument("runs", nargs="+", type=Path,
                                help="run directories or sweep folders")
    collect_parser.add_argument("--out", type=Path, required=True, help="docs/results/<experiment>")
    collect_parser.add_argument("--memory", type=Path, default=None,
                                help="a `zoo.experiments memory` folder of the same nets: the "
                                     "error-against-cost figure gets a memory panel")
    redraw_parser = commands.add_parser("redraw", help="figures and tables from the tidy files")
    redraw_parser.add_argument("results", nargs="?", type=Path, default=DEFAULT_RESULTS)
    redraw_parser.add_argument("--figures", type=Path, default=DEFAULT_FIGURES)
    args = parser.parse_args(argv)
    from zoo.results.redraw import GENERATED_DOCS, redraw, refresh_generated  # it imports this

    try:
        if args.command == "collect":
            written = collect(args.runs, args.out, argv, args.memory)
        else:
            written = redraw(args.results, args.figures)
            if args.figures == DEFAULT_FIGURES:  # the docs' generated tables follow the figures
                written += [page for page in GENERATED_DOCS
                            if page.is_file() and refresh_generated(page)]
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
