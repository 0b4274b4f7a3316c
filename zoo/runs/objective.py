"""The number ``train.py`` returns to Hydra: what a sweeper (Optuna) optimises.

``objective`` in ``configs/train.yaml`` names a metric of the run, e.g. ``val/acc``; after the
run, :func:`objective_value` reads it back from the run's own record, so that the value a
sweeper sees is the one ``run.json`` and ``zoo.results.report`` show:

* the checkpoint's monitor (``callbacks.checkpoint.monitor``, ``val/acc`` by default): its best
  value over the validation epochs, the checkpoint the test phase used (``run.json``);
* ``test/*`` and ``train_eval/*``: ``run.json``'s test and train-eval metrics;
* any other logged metric (``val/loss``, ``train/acc``): its last value in the CSV log.

A run that diverged or evaluated only has no value: the sweeper records a failed trial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from zoo.config.schemas import OBJECTIVES
from zoo.runs.reader import RUN_RECORD_FILE, read_run

# Held by run.json itself; the other OBJECTIVES are read from the CSV log.
RECORDED = ("test/acc", "test/acc5", "test/loss", "train_eval/err", "train_eval/acc",
            "train_eval/loss")


def checkpoint_monitor(cfg: Any) -> str:
    return str(OmegaConf.select(cfg, "callbacks.checkpoint.monitor", default="val/acc"))


def check_objective(cfg: Any) -> None:
    """One clear error, before anything is built, for an objective the run cannot return."""
    objective = str(cfg.get("objective") or "")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)} (the metric train.py "
                         f"returns to a Hydra sweeper), got {objective!r}")
    monitor = checkpoint_monitor(cfg)
    from_csv = objective != monitor and objective not in RECORDED
    if from_csv and "csv" not in (cfg.get("logger") or {}):
        raise ValueError(f"objective={objective} is read from the CSV log, and this run has no "
                         "CSV logger: add it (logger=[wandb,csv]) or choose "
                         f"objective={monitor} (the checkpoint's monitor)")
    if objective.startswith("train_eval/") and not OmegaConf.select(
            cfg, "callbacks.train_eval.at_end", default=False):
        raise ValueError(f"objective={objective} needs the train-eval pass at the end: set "
                         "callbacks.train_eval.at_end=true")


def objective_value(run_dir: Path | str, cfg: Any) -> float | None:
    """The run's value of its ``objective`` (see the module's docstring); None when it has
    none."""
    objective, monitor = str(cfg.objective), checkpoint_monitor(cfg)
    if not (Path(run_dir) / RUN_RECORD_FILE).is_file():  # a DDP process other than rank zero
        return None
    run = read_run(run_dir)
    if run.status != "done":
        return None
    if objective == monitor:
        best = run.record.get("best_val_acc")  # the monitor's best score, whatever it monitors
        return float(best) if best is not None else None
    return run.last(objective)
