"""Committed results: tidy files from training runs, and every figure and table drawn from them.

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

``redraw`` regenerates, from those files alone, each experiment's figures and Markdown table
into ``docs/figures/<experiment>/``. Seeds of one setting are averaged: mean ± std (sample std).
``train_eval_err`` is the training error as He et al. 2015 (Fig. 6) mean it: the trained net in
eval mode over the whole training set, no augmentation. For a degradation sweep the headline
figure is that error against depth, plain nets dashed, residual nets solid. Folders of
experiments that are not training sweeps (gradient_at_init, lesion, memory) are redrawn by
``zoo.experiments``'s own ``redraw``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from zoo.experiments.tidy import as_typed
from zoo.results.style import depth_of, family_of

# The figures of a sweep (re-exported: zoo.results.collect.plot_against_depth as before).
from zoo.results.sweep_figures import (  # noqa: F401
    _setting_groups,
    depth_finding,
    depth_series,
    mean_std,
    plot_against_cost,
    plot_against_depth,
    plot_curves,
    plot_lr_control,
)

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
            argv: Sequence[str] | None = None) -> list[Path]:
    """Write runs.csv, curves.csv and meta.json for the runs at or below ``paths``."""
    import torch

    from zoo.experiments.tidy import git_commit, machine, write_csv

    started = time.perf_counter()
    out_dir = Path(out_dir)
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
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return [*written, out_dir / META_FILE]


# ---------------------------------------------------------------------------- summaries


def _percent(values: Sequence[Any], complement: bool = False) -> str:
    present = [None if v in (None, "") else (1 - v if complement else v) for v in values]
    mean, std, _ = mean_std(present)
    return "-" if mean is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per setting: mean ± std over its seeds (percent), and how its runs ended."""
    columns = ["setting", "seeds", "train-eval error (%)", "test error (%)", "best val error (%)",
               "steps", "fit seconds", "parameters", "status"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for setting, mine in _setting_groups(rows).items():
        ended = defaultdict(int)
        for row in mine:
            ended[row["status"]] += 1
        seconds, _, _ = mean_std([row["fit_seconds"] for row in mine])
        cells = [setting, str(len(mine)), _percent([r["train_eval_err"] for r in mine]),
                 _percent([r["test_acc"] for r in mine], complement=True),
                 _percent([r["best_val_acc"] for r in mine], complement=True),
                 str(max((int(r["steps"]) for r in mine if r["steps"] not in (None, "")),
                         default="-")),
                 "-" if seconds is None else f"{seconds:.0f}" if seconds >= 100
                 else f"{seconds:.1f}",
                 "-" if mine[0]["parameters"] in (None, "") else f"{int(mine[0]['parameters']):,}",
                 ", ".join(f"{count} {status}" for status, count in ended.items())]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- redraw

RUN_NUMBERS = ("depth", "seed", "steps", "train_eval_err", "test_acc", "best_val_acc",
               "fit_seconds", "parameters", "lr")


def checked_rows(rows: list[Row], path: Path, texts: Sequence[str],
                 numbers: Sequence[str]) -> list[Row]:
    """Rows of a committed tidy file whose columns hold what the figures read: ``texts`` present
    (as text), ``numbers`` empty or finite numbers, ``family`` one the figures know; else one
    ValueError naming the file, the line and the value."""
    from zoo.results.style import FAMILY_NAMES
    from zoo.weights.predict import cut

    for line, row in enumerate(rows, start=2):
        for column in texts:
            if row.get(column) in (None, ""):
                raise ValueError(f"{path} line {line}: no {column}")
            row[column] = str(row[column])  # read_csv reads a name like "56" as a number
        for column in numbers:
            value = row.get(column)
            if value not in (None, "") and not (isinstance(value, (int, float))
                                                and not isinstance(value, bool)
                                                and math.isfinite(value) and abs(value) < 2**53):
                raise ValueError(f"{path} line {line}: {column}={cut(value)} is not a finite "
                                 "number")
        if "family" in row and row["family"] not in FAMILY_NAMES:
            raise ValueError(f"{path} line {line}: family={cut(row['family'])} is not one of "
                             f"{', '.join(FAMILY_NAMES)}")
    return rows


def read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` as a mapping whose ``torch`` is a list; one ValueError naming it if not."""
    try:
        meta = json.loads(path.read_text())
    except (ValueError, RecursionError) as error:  # JSON's errors, over-long numbers, bad bytes
        raise ValueError(f"{path} is not valid JSON ({str(error)[:80]})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds {type(meta).__name__}, not a mapping")
    torch_versions = meta.get("torch") or []
    meta["torch"] = torch_versions if isinstance(torch_versions, list) else [torch_versions]
    return meta



def _meta_line(results_dir: Path) -> str:
    path = results_dir / META_FILE
    if not path.is_file():
        return ""
    meta = read_meta(path)
    cpu = meta["machine"].get("cpu", "?") if isinstance(meta.get("machine"), dict) else "?"
    return (f"\n\nCommand: `{meta.get('command')}`; {meta.get('runs', '?')} runs, wall time "
            f"{meta.get('wall_seconds')} s on {cpu}, torch {', '.join(map(str, meta['torch']))}, "
            f"commit {str(meta.get('git_commit', '?'))[:10]}.")


def redraw_sweep(results_dir: Path, figures_dir: Path) -> list[Path]:
    """The figures and summary table of a training sweep, from its runs.csv and curves.csv."""
    from zoo.experiments.tidy import read_csv

    rows = checked_rows(read_csv(results_dir / RUNS_FILE), results_dir / RUNS_FILE,
                        ("run", "model", "setting", "status"), RUN_NUMBERS)
    curves_file = results_dir / CURVES_FILE
    curves = checked_rows(read_csv(curves_file), curves_file, ("setting", "model", "metric"),
                          ("step", "epoch", "seed")) if curves_file.is_file() else []
    written = []
    if results_dir.name.endswith("_lr"):  # a learning-rate control: error against the rate
        written.append(plot_lr_control(rows, figures_dir / "error_vs_lr.png"))
    elif "add_vs_concat" in results_dir.name:
        written.append(plot_against_cost(rows, figures_dir / "error_vs_cost.png"))
    elif "degradation" in results_dir.name or "depth_1000" in results_dir.name:
        written.append(plot_against_depth(rows, "train_eval_err", "training error",
                                          figures_dir / "train_error_vs_depth.png"))
        written.append(plot_against_depth(rows, "test_acc", "test error",
                                          figures_dir / "test_error_vs_depth.png", complement=True))
    written.append(plot_curves(rows, curves, figures_dir / "curves.png"))
    table = figures_dir / TABLE_FILE
    images = "\n".join(f"![{path.stem}]({path.name})" for path in written)
    table.write_text(f"# {results_dir.name}\n\nMean ± std over seeds.\n\n{summary_table(rows)}"
                     f"{_meta_line(results_dir)}\n\n{images}\n")
    return [*written, table]


def gradient_flow_runs(folder: Path) -> list[Path]:
    """Run folders copied whole under ``folder`` for their gradient-flow measurements."""
    return sorted(d for d in folder.iterdir() if (d / "gradient_flow.csv").is_file())


def redraw_measurement(results_dir: Path, figures_dir: Path) -> list[Path]:
    """An experiment that is not a training sweep: its own redraw (zoo.experiments), its figures
    then copied into ``figures_dir``. Folders no redraw knows are left alone."""
    import inspect
    import shutil

    runs_with_gradient_flow = gradient_flow_runs(results_dir)
    if runs_with_gradient_flow:  # copied run folders: the gradient-flow-during-training panels
        from zoo.results.plot import plot_gradient_flow, plot_ratio_against_training_error

        drawn = plot_gradient_flow(runs_with_gradient_flow, figures_dir)
        ratio = plot_ratio_against_training_error(runs_with_gradient_flow, figures_dir)
        return drawn + ([ratio] if ratio is not None else [])
    try:
        from zoo.experiments.__main__ import EXPERIMENTS
    except ImportError:
        return []
    experiment = read_meta(results_dir / META_FILE).get("experiment") \
        if (results_dir / META_FILE).is_file() else results_dir.name
    if experiment not in EXPERIMENTS:
        print(f"skipped {results_dir}: no redraw for experiment {experiment!r}", file=sys.stderr)
        return []
    draw = EXPERIMENTS[experiment][1]
    figures_dir.mkdir(parents=True, exist_ok=True)
    if len(inspect.signature(draw).parameters) > 1:  # it takes a folder for its figures
        return list(draw(results_dir, figures_dir))
    drawn = draw(results_dir)  # it draws beside its files: copy them where the docs look
    return [Path(shutil.copy2(path, figures_dir / Path(path).name)) for path in drawn]


def redraw(results_root: Path | str = DEFAULT_RESULTS,
           figures_root: Path | str = DEFAULT_FIGURES) -> list[Path]:
    """Every experiment folder of ``results_root`` (or that folder itself) into
    ``figures_root/<experiment>/``."""
    results_root, figures_root = Path(results_root), Path(figures_root)
    if not results_root.is_dir():
        raise FileNotFoundError(f"{results_root} is not a folder of results: run "
                                "`python -m zoo.results collect RUN_DIRS --out DIR` first")
    own = (results_root / RUNS_FILE).is_file() or (results_root / META_FILE).is_file() or \
        bool(gradient_flow_runs(results_root))
    folders = [results_root] if own else sorted(p for p in results_root.iterdir() if p.is_dir())
    written, skipped = [], []
    for folder in folders:
        out = figures_root / folder.name
        is_sweep = (folder / RUNS_FILE).is_file()
        try:
            written += redraw_sweep(folder, out) if is_sweep else redraw_measurement(folder, out)
        except (ValueError, OSError) as error:  # one bad folder: said, and the others drawn
            from zoo.results.style import plt

            plt.close("all")
            skipped.append(folder)
            print(f"warning: skipped {folder}: {error}", file=sys.stderr, flush=True)
    if skipped and not written:
        raise ValueError(f"nothing could be redrawn from {results_root}: every folder was skipped")
    return written


# A table in the docs that is a generated file, copied between two markers:
#   <!-- generated from docs/figures/lesion_long/summary.md -->  ...  <!-- end generated -->
# `redraw` copies the file in again; tests/test_docs_numbers.py fails when they differ.
GENERATED_BLOCK = re.compile(r"(<!-- generated from (?P<source>\S+) -->\n)(?P<body>.*?)"
                             r"(<!-- end generated -->)", re.S)
GENERATED_DOCS = (Path("docs/RESULTS.md"), Path("README.md"))


def generated_blocks(markdown: str) -> list[tuple[str, str]]:
    """(source file, the text between the markers) of every generated block."""
    return [(m["source"], m["body"]) for m in GENERATED_BLOCK.finditer(markdown)]


def refresh_generated(markdown_path: Path, root: Path = Path(".")) -> bool:
    """Copy each block's source file in between its markers; True when the page changed."""
    text = markdown_path.read_text()

    def table(m: re.Match) -> str:
        source = root / m["source"]
        if not source.is_file():  # not drawn yet: the block stays as it is
            print(f"warning: {markdown_path}: {m['source']} does not exist", file=sys.stderr)
            return m.group(0)
        return m.group(1) + source.read_text() + m.group(4)

    new = GENERATED_BLOCK.sub(table, text)
    if new != text:
        markdown_path.write_text(new)
    return new != text


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m zoo.results",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    collect_parser = commands.add_parser("collect", help="tidy files from run directories")
    collect_parser.add_argument("runs", nargs="+", type=Path,
                                help="run directories or sweep folders")
    collect_parser.add_argument("--out", type=Path, required=True, help="docs/results/<experiment>")
    redraw_parser = commands.add_parser("redraw", help="figures and tables from the tidy files")
    redraw_parser.add_argument("results", nargs="?", type=Path, default=DEFAULT_RESULTS)
    redraw_parser.add_argument("--figures", type=Path, default=DEFAULT_FIGURES)
    args = parser.parse_args(argv)
    try:
        if args.command == "collect":
            written = collect(args.runs, args.out, argv)
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
