"""Publishing measurements: to every attached logger, and to tidy CSV files in the run directory.

* W&B: scalars, histograms, and at the end of training a table + line chart of a value against
  depth; TensorBoard: scalars and histograms; CSV (and any other logger): scalars.
* A *tidy* CSV file in ``trainer.default_root_dir`` (one row per unit and measurement) that
  ``python -m zoo.results gradflow`` draws from without W&B.

A logger that fails to write (W&B's media files on a full disk, a closed TensorBoard writer)
costs one warning and is skipped for the rest of the run: the measurements are a view of the
run, never a reason to lose it. The tidy files are the record and keep being written.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import Logger, TensorBoardLogger, WandbLogger


class TidyCsvFile:
    """A CSV file appended to, one batch of rows at a time, flushed at once (crash-safe)."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns

    def append(self, rows: Iterable[Iterable[Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        # Appending, not truncating: a resumed run (same Hydra run dir) continues its file.
        with self.path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(self.columns)
            writer.writerows(rows)


def tidy_file_path(trainer: pl.Trainer, name: str | None) -> Path | None:
    """``name`` inside the run directory (``trainer.default_root_dir``); None when not wanted."""
    if not name:
        return None
    path = Path(name)
    if not path.is_absolute():
        path = Path(trainer.default_root_dir) / path
    return path


def finite(values: Iterable[float]) -> np.ndarray:
    """The finite values: histograms of NaN/inf raise in W&B and TensorBoard (scalars show them)."""
    array = np.asarray(list(values), dtype=np.float64)
    return array[np.isfinite(array)]


def has_wandb(trainer: pl.Trainer) -> bool:
    return any(isinstance(logger, WandbLogger) for logger in trainer.loggers)


def depth_chart_lines(
    columns: list[str], rows: list[list[Any]], series_column: str, value_column: str,
    max_lines: int, log10: bool,
) -> tuple[list[Any], list[list[int]], list[list[float]], list[list[Any]]]:
    """(series values, xs, ys, rows kept) of a chart of value against unit index, one line per
    series value; at most ``max_lines`` series: first, last and evenly spaced between."""
    series_at = columns.index(series_column)
    series = sorted({row[series_at] for row in rows})
    if len(series) > max_lines:
        picks = np.linspace(0, len(series) - 1, max_lines).round().astype(int)
        series = [series[i] for i in sorted(set(picks.tolist()))]
    kept = set(series)
    rows = [row for row in rows if row[series_at] in kept]
    index_at, value_at = columns.index("unit_index"), columns.index(value_column)
    xs, ys = [], []
    for value in series:
        line = sorted((row[index_at], row[value_at]) for row in rows if row[series_at] == value)
        xs.append([x for x, _ in line])
        # W&B line charts have no log axis: log10 makes a 1000x gradient ratio visible.
        if log10:
            ys.append([math.log10(y) if y > 0 else float("nan") for _, y in line])
        else:
            ys.append([y for _, y in line])
    return series, xs, ys, rows


class LoggerPublisher:
    """Writes one callback's measurements to the trainer's loggers; a logger that raises is
    warned about once and left out from then on."""

    def __init__(self, what: str) -> None:
        self.what = what  # names the measurement in the warning
        self._failed: set[int] = set()

    def _write(self, logger: Logger, write: Any) -> None:
        if id(logger) in self._failed:
            return
        try:
            write()
        except Exception as error:  # noqa: BLE001 - any logger failure: W&B raises many types
            self._failed.add(id(logger))
            warnings.warn(
                f"{type(logger).__name__} could not write the {self.what} measurements "
                f"({type(error).__name__}: {error}); training goes on, the tidy CSV files in the "
                f"run directory keep them.",
                RuntimeWarning, stacklevel=2,
            )

    def publish(self, trainer: pl.Trainer, step: int, scalars: Mapping[str, float],
                distributions: Mapping[str, np.ndarray]) -> None:
        """Scalars to every logger; distributions as W&B / TensorBoard histograms."""
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._write(logger,
                            lambda lg=logger: publish_to_wandb(lg, step, scalars, distributions))
                continue
            self._write(logger, lambda lg=logger: lg.log_metrics(dict(scalars), step=step))
            if isinstance(logger, TensorBoardLogger):
                self._write(logger, lambda lg=logger: add_histograms(lg, step, distributions))

    def publish_depth_chart(
        self, trainer: pl.Trainer, prefix: str, columns: list[str], rows: list[list[Any]],
        series_column: str, value_column: str, max_lines: int, log10: bool,
    ) -> None:
        """A W&B table plus a line chart of value against depth index, one line per series value.

        The chart keeps at most ``max_lines`` series so that it stays readable; the table holds
        the same rows for overlaying runs in the W&B UI.
        """
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not wandb_loggers or not rows:
            return
        import wandb

        series, xs, ys, rows = depth_chart_lines(columns, rows, series_column, value_column,
                                                 max_lines, log10)
        chart = wandb.plot.line_series(
            xs=xs, ys=ys, keys=[f"{series_column} {value}" for value in series],
            title=f"{'log10 ' if log10 else ''}{value_column} against depth",
            xname="unit index (depth order)",
        )
        payload = {f"{prefix}/table": wandb.Table(columns=columns, data=rows),
                   f"{prefix}/chart": chart}
        for logger in wandb_loggers:
            self._write(logger, lambda lg=logger: lg.log_metrics(payload, step=trainer.global_step))


def publish_to_wandb(logger: WandbLogger, step: int, scalars: Mapping[str, float],
                     distributions: Mapping[str, np.ndarray]) -> None:
    import wandb

    payload: dict[str, Any] = dict(scalars)
    for key, values in distributions.items():
        if len(values):
            payload[key] = wandb.Histogram(values)
    # Lightning's WandbLogger records the step as "trainer/global_step" and lets W&B number its
    # own rows, so this never sends a step lower than W&B's current one.
    logger.log_metrics(payload, step=step)


def add_histograms(logger: TensorBoardLogger, step: int,
                   distributions: Mapping[str, np.ndarray]) -> None:
    for key, values in distributions.items():
        if len(values):
            logger.experiment.add_histogram(key, values, global_step=step)
