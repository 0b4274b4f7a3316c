"""What every experiment writes beside its figures: tidy CSV rows and ``meta.json``.

A results folder is self-contained: the tidy CSV files hold every number a figure shows, and
``meta.json`` says how they were made (the command line, the machine, torch, the wall time, the
git commit). ``python -m zoo.experiments redraw DIR`` draws the figures again from these files
alone, so that a figure in the docs can be re-derived without recomputing it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from zoo.training.precision import cpu_model

META_FILE = "meta.json"


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    """One row per measurement, the given columns in order (other keys are left out)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _parse(value: str) -> Any:
    """A CSV cell back to the Python value it was written from (int, float, bool, str)."""
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows written by :func:`write_csv`, with numbers and booleans parsed back."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the experiment with --out {path.parent} "
                                "first")
    with path.open(newline="") as handle:
        rows = csv.DictReader(handle)
        return [{key: _parse(value) for key, value in row.items()} for row in rows]


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            if not math.isfinite(value) or value == 0:
                return str(value)
            return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """The CPU (model name from /proc/cpuinfo, usable cores) and the GPU when there is one."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    facts: dict[str, Any] = {"cpu": cpu_model(), "cpu_cores": cores,
                             "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def git_commit(folder: Path | None = None) -> str:
    """``git rev-parse HEAD`` of the code that ran, or "unknown" outside a repository."""
    folder = folder or Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                                text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "unknown"


def git_dirty(folder: Path | None = None) -> bool | None:
    """Whether the working tree had uncommitted changes (None outside a repository)."""
    folder = folder or Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=folder, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(result.stdout.strip()) if result.returncode == 0 else None


def as_typed(argv: Sequence[str], cwd: Path | None = None) -> list[str]:
    """Arguments as a user would type them in the repository: absolute paths under the working
    directory made relative (``/home/me/zoo/multirun/x`` -> ``multirun/x``, also in
    ``key=value``), so that a committed command names no machine's folders."""
    prefix = f"{(cwd or Path.cwd()).resolve()}/"
    return [arg.replace(prefix, "") for arg in argv]


def write_meta(out_dir: Path, experiment: str, wall_seconds: float,
               argv: Sequence[str] | None = None, files: Sequence[str] = ()) -> Path:
    """``meta.json``: how the tidy files beside it were made."""
    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    meta = {
        "experiment": experiment,
        "command": shlex.join(["python", "-m", "zoo.experiments", *as_typed(argv)]),
        "machine": machine(),
        "torch": torch.__version__,
        "wall_seconds": round(wall_seconds, 2),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": list(files),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / META_FILE
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read_meta(out_dir: Path) -> dict[str, Any]:
    path = out_dir / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: pass a folder written by "
                                "`python -m zoo.experiments NAME --out DIR`")
    return json.loads(path.read_text())
