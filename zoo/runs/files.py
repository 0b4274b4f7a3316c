"""A run folder's files read as data: checked value by value, never executed or resolved.

A run folder can come from anywhere (a colleague's sweep, a copied archive, a disk that filled
up mid-write), so its files are untrusted input to :mod:`zoo.runs.reader`:

* ``.hydra/config.yaml`` is read with ``yaml.safe_load``, not OmegaConf: references to other
  keys (``${data.num_classes}``) are looked up, but resolvers (``${oc.env:HOME}``,
  ``${now:...}``) stay as text and never run, so no environment variable leaks into a report;
* ``run.json`` is checked field by field against the types :class:`zoo.runs.reader.RunRecorder`
  writes: wrong types, ``null`` where a number belongs, huge or non-finite counts are one
  ``ValueError`` naming the file, the key and the value (cut to 80 characters);
* ``csv/metrics.csv`` rows must be numbers, steps and epochs whole numbers; a bad cell is one
  ``ValueError`` naming the file and its line;
* a run logged only to TensorBoard (``logger=tensorboard``) has its scalars read from the event
  files, as rows like the CSV's.
"""

from __future__ import annotations

import csv
import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from zoo.weights.predict import cut

REFERENCE = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")  # ${a.b}: a key, no resolver
LARGEST_COUNT = 2**53  # steps, epochs, parameters: beyond it a float cannot hold the count
LARGEST_CONFIG = 100_000  # values in a run's config.yaml; Hydra writes a few hundred


def plain_config(path: Path) -> dict[str, Any]:
    """A Hydra config file as plain data, ``${a.b}`` references looked up, resolvers left as
    text (see the module's docstring)."""
    import yaml

    try:
        config = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"{path} is not valid YAML ({cut(str(error))})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds {type(config).__name__}, not a config (a mapping)")

    visited = [0]  # YAML aliases can nest a "billion laughs" into a few lines: bounded walk

    def look_up(value: Any, depth: int = 0) -> Any:
        visited[0] += 1
        if visited[0] > LARGEST_CONFIG:
            raise ValueError(f"{path} holds more than {LARGEST_CONFIG:,} values (nested YAML "
                             "aliases?); not a config of a run")
        if isinstance(value, dict):
            return {key: look_up(item, depth) for key, item in value.items()}
        if isinstance(value, list):
            return [look_up(item, depth) for item in value]
        found = REFERENCE.match(value) if isinstance(value, str) and depth < 8 else None
        if found is None:
            return value
        target: Any = config
        for part in found.group(1).split("."):
            target = target.get(part) if isinstance(target, dict) else None
        return value if target is None else look_up(target, depth + 1)

    return look_up(config)


# ---------------------------------------------------------------------------- run.json


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < LARGEST_COUNT


def _number(value: Any) -> bool:  # NaN allowed: a diverged run's metric is a result
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _number(value) and math.isfinite(value) and abs(value) < LARGEST_COUNT


def _metrics(value: Any) -> bool:
    return isinstance(value, dict) and all(_number(v) for v in value.values())


def _moment(value: Any) -> bool:
    try:
        datetime.fromisoformat(value)
        return True
    except (TypeError, ValueError):
        return False


# key -> (check of a value that is not null, what the value should be)
RECORD_FIELDS = {
    "status": (lambda v: isinstance(v, str), "a text"),
    "message": (lambda v: isinstance(v, str), "a text"),
    "global_step": (_count, "a whole number >= 0"),
    "epoch": (_count, "a whole number >= 0"),
    "diverged": (lambda v: isinstance(v, dict) and (v.get("step") is None or _count(v["step"])),
                 "{step, unit}"),
    "fit_seconds": (lambda v: _finite(v) and v >= 0, "a finite number of seconds"),
    "parameters": (_count, "a whole number >= 0"),
    "test": (_metrics, "a mapping of metric names to numbers"),
    "train_eval": (_metrics, "a mapping of metric names to numbers"),
    "best_val_acc": (_number, "a number"),
    "checkpoints": (lambda v: isinstance(v, dict), "a mapping"),
    "overrides": (lambda v: isinstance(v, list) and all(isinstance(o, str) for o in v),
                  "a list of texts"),
    "model": (lambda v: isinstance(v, dict) and isinstance(v.get("name", ""), str),
              "a mapping with a name"),
    "data": (lambda v: isinstance(v, dict) and isinstance(v.get("name", ""), str),
             "a mapping with a name"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "started": (_moment, "an ISO date and time"),
    "ended": (_moment, "an ISO date and time"),
}


def checked_record(record: Any, path: Path) -> dict[str, Any]:
    """``record`` (``run.json`` as parsed) if every field the readers use has its type."""
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds {type(record).__name__}, not a run record (a mapping)")
    for key, (valid, meaning) in RECORD_FIELDS.items():
        value = record.get(key)
        if value is not None and not valid(value):
            raise ValueError(f"{path}: {key}={cut(value)} is not {meaning}")
    return record


# ---------------------------------------------------------------------------- metrics


def _metric_row(row: dict[Any, Any], path: Path, line: int) -> dict[str, float]:
    if None in row:  # csv.DictReader's key for cells beyond the header
        raise ValueError(f"{path} line {line} has more cells than the header")
    numbers = {}
    for key, value in row.items():
        if value in (None, ""):  # not logged at this row, or a row cut short
            continue
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{path} line {line}: {key}={cut(value)} is not a number") from None
        if key in ("step", "epoch") and not (math.isfinite(number) and number.is_integer()
                                             and 0 <= number < LARGEST_COUNT):
            raise ValueError(f"{path} line {line}: {key}={cut(value)} is not a whole number >= 0")
        if not math.isnan(number):  # NaN: a value not logged at this row (Lightning's CSV)
            numbers[key] = number
    return numbers


def read_metrics_csv(path: Path) -> list[dict[str, float]]:
    """Rows of a Lightning ``metrics.csv``, empty cells left out; one ValueError for a bad one."""
    try:
        with path.open(newline="") as handle:
            return [_metric_row(row, path, line)
                    for line, row in enumerate(csv.DictReader(handle), start=2)]
    except (csv.Error, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a readable CSV file ({cut(str(error))})") from None


def read_tensorboard(folder: Path) -> list[dict[str, float]]:
    """Scalars of the TensorBoard event files under ``folder``, one row per step (with its
    epoch, as Lightning logs it), like the rows of ``metrics.csv``; [] without event files."""
    files = sorted(folder.rglob("events.out.tfevents.*")) if folder.is_dir() else []
    if not files:
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows: dict[int, dict[str, float]] = {}
    for file in files:
        try:
            events = EventAccumulator(str(file), size_guidance={"scalars": 0}).Reload()
            for tag in events.Tags().get("scalars", []):
                for event in events.Scalars(tag):
                    if not math.isnan(event.value):
                        rows.setdefault(event.step, {"step": float(event.step)})[tag] = event.value
        except Exception as error:  # noqa: BLE001 - a damaged file fails anywhere in its reader
            raise ValueError(f"{file} is not a readable TensorBoard event file "
                             f"({type(error).__name__}: {cut(str(error))})") from None
    return [rows[step] for step in sorted(rows)]
