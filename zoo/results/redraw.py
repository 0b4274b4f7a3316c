"""Every figure and table of the committed results, redrawn from their tidy files alone.

    python -m zoo.results redraw                  # docs/results/* -> docs/figures/*
    python -m zoo.results redraw docs/results/degradation --figures /tmp/figures

Each experiment folder goes to ``docs/figures/<folder>/``. A training sweep (``runs.csv``, written
by :mod:`zoo.results.collect`) gets its curves, a Markdown table (mean ± std over seeds, sample
std) and the figures its runs call for -- decided from the rows, never from the folder's name:

* runs of one model that differ only in ``optim.lr``: error against the learning rate;
* addition beside concatenation (residual and dense nets): error against parameters and time;
* a kind of net (plain, residual) at two depths or more: training and test error against depth,
  plain nets dashed, residual nets solid (He et al. 2015, Fig. 6).

``train_eval_err`` is the training error as He et al. 2015 mean it: the trained net in eval mode
over the whole training set, no augmentation. Folders of copied run directories get their
gradient-flow panels; other experiments (gradient_at_init, lesion, memory, the ViT measurements)
are redrawn by ``zoo.experiments``'s own redraw, named by their ``meta.json``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoo.results.collect import (
    CURVES_FILE,
    DEFAULT_FIGURES,
    DEFAULT_RESULTS,
    META_FILE,
    RUNS_FILE,
    TABLE_FILE,
    Row,
)
from zoo.results.sweep_figures import (
    _setting_groups,
    depth_series,
    mean_std,
    plot_against_cost,
    plot_against_depth,
    plot_curves,
    plot_lr_control,
)

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



def depth_table(rows: Sequence[dict[str, Any]]) -> str:
    """Training and test error (percent, mean ± std over seeds) per depth, one column pair per
    series (plain, residual, ...): the depth sweeps' table in docs/RESULTS.md."""
    errors = [depth_series(rows, "train_eval_err"), depth_series(rows, "test_acc", complement=True)]
    series = list(errors[0])
    names = [" ".join(part for part in key if part) for key in series]
    header = ["depth"] + [f"{name}: {what} error"
                          for what in ("training", "test") for name in names]
    cells: dict[int, dict[int, str]] = defaultdict(dict)
    for column, (by_series, key) in enumerate(
            (table, key) for table in errors for key in series):
        for depth, mean, std, _, _ in by_series.get(key, []):
            cells[depth][column] = "-" if mean is None else f"{mean:.1f} ± {std:.1f}%"
    lines = ["| " + " | ".join(header) + " |", "|---:" * len(header) + "|"]
    lines += ["| " + " | ".join([str(depth)] + [cells[depth].get(c, "-")
                                                for c in range(len(header) - 1)]) + " |"
              for depth in sorted(cells)]
    return "\n".join(lines) + "\n"


def _meta_line(results_dir: Path) -> str:
    path = results_dir / META_FILE
    if not path.is_file():
        return ""
    meta = read_meta(path)
    cpu = meta["machine"].get("cpu", "?") if isinstance(meta.get("machine"), dict) else "?"
    # runs collected later into the same folder (their rows appended) keep their own command
    later = "".join(f" Then `{added.get('command')}`: {added.get('runs', '?')} runs, wall time "
                    f"{added.get('wall_seconds')} s, commit {str(added.get('git_commit'))[:10]}."
                    for added in meta.get("appended", []))
    return (f"\n\nCommand: `{meta.get('command')}`; {meta.get('runs', '?')} runs, wall time "
            f"{meta.get('wall_seconds')} s on {cpu}, torch {', '.join(map(str, meta['torch']))}, "
            f"commit {str(meta.get('git_commit', '?'))[:10]}.{later}")


def is_lr_control(rows: Sequence[Row]) -> bool:
    """Runs of one model at several learning rates, and nothing else changed between them."""
    rates = defaultdict(set)
    for row in rows:
        options = row["setting"][len(row["model"]):].split()
        if any(not option.startswith("optim.lr=") for option in options):
            return False
        rates[row["model"]].add(row.get("lr"))
    return any(len(values) > 1 for values in rates.values())


def compares_add_and_concat(rows: Sequence[Row]) -> bool:
    """Residual (addition) and dense (concatenation) nets side by side."""
    kinds = {row.get("family") for row in rows}
    return {"residual", "dense"} <= kinds


def spans_depths(rows: Sequence[Row]) -> bool:
    """A kind of net (plain, residual, dense) at two depths or more."""
    depths = defaultdict(set)
    for row in rows:
        if row.get("depth") not in (None, ""):
            depths[row.get("family")].add(row["depth"])
    return any(len(values) > 1 for values in depths.values())


def measured_memory(results_dir: Path) -> list[Row]:
    """The memory rows of the nets of a sweep, where its meta.json names a ``zoo.experiments
    memory`` folder (``collect --memory``); else none."""
    from zoo.experiments.memory import MEMORY_FILE
    from zoo.experiments.tidy import read_csv

    meta = results_dir / META_FILE
    folder = read_meta(meta).get("memory") if meta.is_file() else None
    if not folder:
        return []
    if not isinstance(folder, str):
        raise ValueError(f"{meta}: memory should name a folder, not {folder!r}")
    path = results_dir / folder / MEMORY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{results_dir / META_FILE} names {folder} for memory, which has "
                                f"no {MEMORY_FILE}: measure it again or remove the key")
    return read_csv(path)


def redraw_sweep(results_dir: Path, figures_dir: Path) -> list[Path]:
    """The figures and summary table of a training sweep, from its runs.csv and curves.csv."""
    from zoo.experiments.tidy import read_csv

    rows = checked_rows(read_csv(results_dir / RUNS_FILE), results_dir / RUNS_FILE,
                        ("run", "model", "setting", "status"), RUN_NUMBERS)
    curves_file = results_dir / CURVES_FILE
    curves = checked_rows(read_csv(curves_file), curves_file, ("setting", "model", "metric"),
                          ("step", "epoch", "seed")) if curves_file.is_file() else []
    written = []
    if is_lr_control(rows):
        written.append(plot_lr_control(rows, figures_dir / "error_vs_lr.png"))
    elif compares_add_and_concat(rows):
        written.append(plot_against_cost(rows, figures_dir / "error_vs_cost.png",
                                         measured_memory(results_dir)))
    elif spans_depths(rows):
        written.append(plot_against_depth(rows, "train_eval_err", "training error",
                                          figures_dir / "train_error_vs_depth.png"))
        written.append(plot_against_depth(rows, "test_acc", "test error",
                                          figures_dir / "test_error_vs_depth.png", complement=True))
    written.append(plot_curves(rows, curves, figures_dir / "curves.png"))
    table = figures_dir / TABLE_FILE
    images = "\n".join(f"![{path.stem}]({path.name})" for path in written)
    table.write_text(f"# {results_dir.name}\n\nMean ± std over seeds.\n\n{summary_table(rows)}"
                     f"{_meta_line(results_dir)}\n\n{images}\n")
    written.append(table)
    # the docs' generated tables: the summary alone, and per depth where the sweep has depths
    (figures_dir / "table.md").write_text(summary_table(rows) + "\n")
    written.append(figures_dir / "table.md")
    if spans_depths(rows):
        (figures_dir / "depth_table.md").write_text(depth_table(rows))
        written.append(figures_dir / "depth_table.md")
    return written


def gradient_flow_runs(folder: Path) -> list[Path]:
    """Run folders copied whole under ``folder`` for their gradient-flow measurements."""
    return sorted(d for d in folder.iterdir() if (d / "gradient_flow.csv").is_file())


def redraw_measurement(results_dir: Path, figures_dir: Path) -> list[Path]:
    """An experiment that is not a training sweep: its own redraw (zoo.experiments, named by its
    ``meta.json``), into ``figures_dir``. Folders without one are left alone, and said so."""
    runs_with_gradient_flow = gradient_flow_runs(results_dir)
    if runs_with_gradient_flow:  # copied run folders: the gradient-flow-during-training panels
        from zoo.results.plot import plot_gradient_flow, plot_ratio_against_training_error

        drawn = plot_gradient_flow(runs_with_gradient_flow, figures_dir)
        ratio = plot_ratio_against_training_error(runs_with_gradient_flow, figures_dir)
        return drawn + ([ratio] if ratio is not None else [])
    from zoo.experiments.__main__ import EXPERIMENTS

    meta = results_dir / META_FILE
    experiment = read_meta(meta).get("experiment") if meta.is_file() else None
    if experiment not in EXPERIMENTS:
        said = (f"no redraw for experiment {experiment!r}" if meta.is_file()
                else f"no {META_FILE} names its experiment")
        print(f"skipped {results_dir}: {said}", file=sys.stderr)
        return []
    figures_dir.mkdir(parents=True, exist_ok=True)
    return list(EXPERIMENTS[experiment][1](results_dir, figures_dir))


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
GENERATED_DOCS = (Path("docs/RESULTS.md"), Path("README.md"), Path("docs/BENCHMARKS.md"))


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


