"""Run directories: the one record a run leaves (``run.json``) and the one reader of runs.

A run directory holds what ``train.py`` (through :func:`zoo.runs.train.train`) wrote:

    run.json              how the run ended and what it measured (:class:`RunRecorder`)
    .hydra/config.yaml    Hydra's composed config (the only source for runs older than run.json)
    .hydra/overrides.yaml the command-line overrides
    csv/metrics.csv       Lightning's CSVLogger (logger=csv, on by default)
    gradient_flow.csv, residual_gain.csv   the measurement callbacks' tidy files

``zoo.results`` (report, plot, collect) and the experiments find runs, read them and name them
here; nothing else opens these files by hand. Reading builds no network and starts no
Lightning; :class:`RunRecorder` writes the record at the end of :func:`zoo.runs.train.train`.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.runs.files import checked_record, plain_config
from zoo.weights.predict import cut

RUN_RECORD_FILE = "run.json"
STATUSES = ("done", "diverged", "preempted", "failed")
METRICS_FILE = Path("csv") / "metrics.csv"
HYDRA_CONFIG_FILE = Path(".hydra") / "config.yaml"
HYDRA_OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
TENSORBOARD_FOLDER = "tensorboard"  # logger=tensorboard's event files (zoo/runs/trainer.py)
GRADIENT_FLOW_FILE = "gradient_flow.csv"
RESIDUAL_GAIN_FILE = "residual_gain.csv"

# Settings that never name a run: the model is the label's first word, Hydra's own keys say
# where files go, and the seed tells repeats of one setting apart (results average over it).
_NOT_A_SETTING = ("model", "experiment")
_NOT_A_SETTING_PREFIX = "hydra."


def write_json_atomic(path: Path | str, content: Any) -> Path:
    """Write JSON so that a reader never sees half a file (a kill mid-write leaves the old one)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def is_run_dir(path: Path) -> bool:
    return (path / RUN_RECORD_FILE).is_file() or (path / HYDRA_CONFIG_FILE).is_file()


def find_run_dirs(paths: Iterable[Path | str]) -> list[Path]:
    """Run directories at or below ``paths`` (a run, or a sweep folder above runs), in the order
    given, sorted within a folder, each found once."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist: pass a run directory or a folder above runs"
            )
        if is_run_dir(path):
            candidates = [path]
        else:
            marks = [*path.rglob(RUN_RECORD_FILE), *path.rglob(str(HYDRA_CONFIG_FILE))]
            candidates = sorted({mark.parent if mark.name == RUN_RECORD_FILE else mark.parent.parent
                                 for mark in marks})
        found.extend(candidate for candidate in candidates if candidate not in found)
    return found


# ---------------------------------------------------------------------------- one run


def read_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides Hydra saved for the run (``.hydra/overrides.yaml``), or []."""
    import yaml

    path = run_dir / HYDRA_OVERRIDES_FILE
    if not path.is_file():
        return []
    try:
        overrides = yaml.safe_load(path.read_text()) or []
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid YAML ({cut(str(error))})") from None
    if not isinstance(overrides, list):
        raise ValueError(f"{path} holds {type(overrides).__name__}, not a list of overrides")
    return [str(item) for item in overrides]


@dataclass
class Run:
    """One run directory as read back: its record (``run.json``, or the facts an older run's
    ``.hydra/config.yaml`` gives) and, on demand, its metrics and tidy files."""

    path: Path
    record: dict[str, Any]
    label: str = ""  # set by label_runs: the model and the settings that differ between siblings
    _metrics: list[dict[str, float]] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model(self) -> str:
        return str((self.record.get("model") or {}).get("name", self.name))

    @property
    def data(self) -> str:
        return str((self.record.get("data") or {}).get("name", "?"))

    @property
    def seed(self) -> int | None:
        return self.record.get("seed")

    @property
    def status(self) -> str:
        """done, diverged, preempted, failed; ``unfinished`` for older runs without a test."""
        if self.record.get("status"):
            return str(self.record["status"])
        return "done" if self.last("test/acc") is not None else "unfinished"

    @property
    def settings(self) -> dict[str, str]:
        """What the run was asked for: its model options (``model.norm``: ``none``) and its
        command-line overrides (``optim.lr``: ``0.01``)."""
        model = self.record.get("model") or {}
        options = {f"model.{key}": str(value) for key, value in model.items() if key != "name"}
        for override in self.record.get("overrides") or []:
            key, _, value = str(override).lstrip("+~").partition("=")
            options[key] = value
        return options

    def metrics(self) -> list[dict[str, float]]:
        """Rows of ``csv/metrics.csv`` with the empty cells left out; without it, the scalars of
        the run's TensorBoard event files, one row per step; [] without either. A malformed file
        is a ValueError naming it (:mod:`zoo.runs.files`)."""
        if self._metrics is None:
            from zoo.runs.files import read_metrics_csv, read_tensorboard

            table = self.path / METRICS_FILE  # else a logger=tensorboard run's event files
            self._metrics = read_metrics_csv(table) if table.is_file() else \
                read_tensorboard(self.path / TENSORBOARD_FOLDER)
        return self._metrics

    def series(self, key: str, by: str = "epoch") -> dict[int, float]:
        """{epoch or step: value} of one logged metric, the last value logged at each."""
        return {int(row[by]): row[key] for row in self.metrics() if key in row and by in row}

    def last(self, key: str) -> float | None:
        """The record's value of a metric (``test/acc``, ``train_eval/err``), else the CSV's
        last."""
        for group in ("test", "train_eval"):
            if key in (self.record.get(group) or {}):
                return self.record[group][key]
        values = [row[key] for row in self.metrics() if key in row]
        return values[-1] if values else None

    def tidy(self, file_name: str) -> list[dict[str, str]]:
        """Rows of a measurement callback's tidy file (``gradient_flow.csv``)."""
        path = self.path / file_name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: was the run made with the measurement "
                                    "callbacks on (callbacks=default)?")
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))


def read_run(run_dir: Path | str) -> Run:
    """The run at ``run_dir``: ``run.json``, falling back to ``.hydra/config.yaml`` (older runs)."""
    run_dir = Path(run_dir)
    record_path = run_dir / RUN_RECORD_FILE
    if record_path.is_file():
        try:  # ValueError: JSON's own errors, and numbers of more than 4,300 digits
            record = json.loads(record_path.read_text())
        except (ValueError, RecursionError) as error:
            raise ValueError(f"{record_path} is not valid JSON ({cut(str(error))}); delete it to "
                             "read the run from its .hydra/config.yaml") from None
        return Run(run_dir, checked_record(record, record_path))
    if not (run_dir / HYDRA_CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {RUN_RECORD_FILE} and no "
                                f"{HYDRA_CONFIG_FILE})")
    config = plain_config(run_dir / HYDRA_CONFIG_FILE)  # no resolver of the file ever runs
    record = {"model": config.get("model") or {}, "data": config.get("data") or {},
              "seed": config.get("seed"), "overrides": read_overrides(run_dir)}
    return Run(run_dir, record)


def read_runs(paths: Iterable[Path | str], skip_unreadable: bool = False) -> list[Run]:
    """Every run at or below ``paths``, labelled (:func:`label_runs`). ``skip_unreadable``: a run
    with a malformed file is left out with one line on stderr naming the file (tools that read
    many runs finish the rest); otherwise its ValueError is raised."""
    runs = []
    for run_dir in find_run_dirs(paths):
        try:
            run = read_run(run_dir)
            run.metrics()  # read now, so that a bad metrics file is found here
        except (ValueError, OSError) as error:
            if not skip_unreadable:
                raise
            print(f"warning: skipped {run_dir}: {error}", file=sys.stderr, flush=True)
            continue
        runs.append(run)
    label_runs(runs)
    return runs


# ---------------------------------------------------------------------------- labels


def differing_settings(runs: Sequence[Run], ignore: Sequence[str] = ()) -> list[dict[str, str]]:
    """For each run, the settings in which it differs from another run of the same model."""
    differing = []
    for run in runs:
        siblings = [other.settings for other in runs if other.model == run.model]
        keys = dict.fromkeys(key for settings in siblings for key in settings)
        differing.append({
            key: run.settings[key] for key in keys
            if key in run.settings and key not in _NOT_A_SETTING and key not in ignore
            and not key.startswith(_NOT_A_SETTING_PREFIX)
            and len({settings.get(key) for settings in siblings}) > 1
        })
    return differing


def setting_label(model: str, settings: dict[str, str]) -> str:
    return " ".join([model, *(f"{key}={value}" for key, value in settings.items())])


def setting_labels(runs: Sequence[Run], ignore: Sequence[str] = ()) -> list[str]:
    """Each run's model plus the settings that differ between runs of the same model
    (``resnet56 model.norm=none``); ``ignore``: settings left out (``seed``, to group repeats)."""
    differing = differing_settings(runs, ignore)
    return [setting_label(run.model, settings)
            for run, settings in zip(runs, differing, strict=True)]


def label_runs(runs: Sequence[Run]) -> list[str]:
    """Set each run's ``label`` to its :func:`setting_labels` label; runs that still share one
    (repeats of one setting) get their directory in brackets. Returns the labels."""
    labels = setting_labels(runs)
    for run, label in zip(runs, labels, strict=True):
        run.label = f"{label} ({run.name})" if labels.count(label) > 1 else label
    return [run.label for run in runs]


def run_dir_above(path: Path | str) -> Path | None:
    """The run directory that holds ``path`` (a checkpoint under ``RUN/checkpoints/``), if any."""
    for folder in Path(path).resolve().parents:
        if is_run_dir(folder):
            return folder
    return None


# ---------------------------------------------------------------------------- the record


class RunRecorder:
    """Writes ``run.json`` when a run ends, however it ends (:data:`STATUSES`), in one go.

    ``trainer``, ``module`` and ``checkpoint`` (the ModelCheckpoint that keeps last and best) are
    read only at the end, so the record holds what the run reached. Only rank 0 writes.
    """

    def __init__(self, run_dir: Path | str, cfg: Any, trainer: Any, module: Any,
                 checkpoint: Any) -> None:
        from datetime import datetime, timezone

        from zoo.experiments.tidy import git_commit, git_dirty

        self.path = Path(run_dir) / RUN_RECORD_FILE
        self.cfg, self.trainer, self.module, self.checkpoint = cfg, trainer, module, checkpoint
        self.started = datetime.now(timezone.utc)
        # the code that trains, read at the start: the checkout may move on while a run trains
        self.code = {"git_commit": git_commit(), "git_dirty": git_dirty()}
        self._at_fit_end: dict[str, Any] | None = None

    def fit_ended(self) -> None:
        """Note what fit reached, before testing: ``trainer.test(ckpt_path=best)`` restores the
        callbacks' state (checkpoint paths, the train-eval result) as the best checkpoint saved
        it."""
        self._at_fit_end = self._reached()

    def _reached(self) -> dict[str, Any]:
        trainer, checkpoint = self.trainer, self.checkpoint
        best_score = checkpoint.best_model_score
        return {
            "global_step": int(trainer.global_step),
            "epoch": int(trainer.current_epoch),
            "checkpoints": {"last": checkpoint.last_model_path or None,
                            "best": checkpoint.best_model_path or None},
            "best_val_acc": float(best_score) if best_score is not None else None,
            "train_eval": self._train_eval_metrics(),
        }

    def finish(self, status: str, *, error: BaseException | None = None,
               fit_seconds: float | None = None, test_metrics: dict[str, float] | None = None,
               saved: dict[str, str] | None = None, best_score: Any = None) -> dict[str, Any]:
        """Write and return the record (rank 0 writes; every rank returns it). ``saved`` and
        ``best_score``: checkpoint paths and best score as fit left them, if read before testing."""
        import socket
        from datetime import datetime, timezone

        import torch
        from omegaconf import OmegaConf

        if status not in STATUSES:
            raise ValueError(f"run status must be one of {', '.join(STATUSES)}, got {status!r}")
        reached = self._at_fit_end or self._reached()
        if saved:
            reached["checkpoints"] = {kind: path or None for kind, path in saved.items()}
        if best_score is not None:
            reached["best_val_acc"] = float(best_score)
        message = None
        if error is not None:  # a divergence's message says it all; others name their type
            message = str(error) if status == "diverged" else f"{type(error).__name__}: {error}"
        record = {
            "status": status,
            "message": message,
            "global_step": reached["global_step"],
            "epoch": reached["epoch"],
            "diverged": {"step": getattr(error, "step", None), "unit": getattr(error, "unit", None)}
            if status == "diverged" else None,
            "fit_seconds": round(fit_seconds, 2) if fit_seconds is not None else None,
            "parameters": getattr(self.module, "num_parameters", None),
            "test": dict(test_metrics or {}),
            "train_eval": reached["train_eval"],
            "best_val_acc": reached["best_val_acc"],
            "checkpoints": reached["checkpoints"],
            "overrides": self._overrides(),
            "model": OmegaConf.to_container(self.cfg.model, resolve=True),
            "data": OmegaConf.to_container(self.cfg.data, resolve=True),
            "seed": self.cfg.get("seed"),
            "run_name": self.cfg.get("run_name"),
            "precision": str(self.cfg.trainer.get("precision")),
            "torch": torch.__version__,
            **self.code,
            "hostname": socket.gethostname(),
            "started": self.started.isoformat(timespec="seconds"),
            "ended": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if self.trainer.is_global_zero:
            write_json_atomic(self.path, record)
        return record

    def _train_eval_metrics(self) -> dict[str, float]:
        # The eval-mode pass over the training set keeps its last result (zoo.training.train_eval).
        for callback in self.trainer.callbacks:
            if type(callback).__name__ == "TrainEvalPass" and getattr(callback, "last", None):
                return {key: float(value) for key, value in callback.last.items()}
        return {}

    def _overrides(self) -> list[str]:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return list(HydraConfig.get().overrides.task)
        return read_overrides(self.path.parent)  # train() called from Python: none unless saved


def wandb_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The record's facts under the W&B summary's names (what W&B and the report show)."""
    summary = {"status": record["status"], "global_step": record["global_step"],
               "fit_seconds": record["fit_seconds"], "parameters": record["parameters"],
               "best_val_acc": record["best_val_acc"], "test_acc": record["test"].get("test/acc"),
               "train_eval_err": record["train_eval"].get("train_eval/err")}
    if record["status"] == "diverged":
        summary.update(diverged=True, diverged_at_step=record["diverged"]["step"],
                       diverged_unit=record["diverged"]["unit"], diverged_message=record["message"])
    return {key: value for key, value in summary.items() if value is not None}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m zoo.runs PATH...``: a line per run (label, status, steps, test accuracy)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m zoo.runs", description="List the runs at or below PATH: directory, "
        "label, status, steps, test accuracy (read as data; nothing in a run's files is run).")
    parser.add_argument("paths", nargs="+", type=Path, help="run directories or folders above")
    args = parser.parse_args(argv)
    try:
        runs = read_runs(args.paths, skip_unreadable=True)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for run in runs:
        accuracy = run.last("test/acc")
        print(f"{run.path}  {run.label}  {run.status}  steps={run.record.get('global_step', '-')}"
              f"  test/acc={'-' if accuracy is None else f'{accuracy:.4f}'}")
    return 0 if runs else 2  # non-zero only when nothing could be read


if __name__ == "__main__":
    sys.exit(main())
