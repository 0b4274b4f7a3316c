"""Resuming continues the run: the same run directory, the same W&B run, the same metrics file.

``python train.py ckpt_path=<run>/checkpoints/last.ckpt`` (or ``ckpt_path=last``) writes into
``<run>``, the directory of the checkpoint's run, not into a second dated directory: the default
``hydra.run.dir`` goes through ``${resume_dir:...}`` (an explicit ``hydra.run.dir=`` still wins).

W&B: every checkpoint carries its W&B run id (:class:`WandbRunIdInCheckpoint`); for checkpoints
written before that, the run directory's ``wandb/`` folder names it. The resumed logger passes
``id=<that id>, resume="allow"``: online, W&B appends to the same run. Offline, W&B writes one
folder per session, all of the same run id, side by side in the run's ``wandb/`` folder (W&B
cannot resume an offline run in place, wandb/wandb#3841).

CSV: Lightning's CSVLogger deletes an existing ``metrics.csv``; a resumed run appends to it.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import OmegaConf
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from zoo.checkpoint import CheckpointError, resolve_ckpt_path

log = logging.getLogger("zoo")

WANDB_ID_KEY = "wandb_run_id"  # in the checkpoint dict, beside Lightning's own keys
WANDB_RUN_FOLDER = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(\w+)$")


@dataclass(frozen=True)
class Resumed:
    """A run continued from ``ckpt_path``; ``wandb_run_id`` None: a new W&B run."""

    ckpt_path: str
    wandb_run_id: str | None


# ---------------------------------------------------------------------------- run directory


def checkpoint_run_dir(ckpt_path: str | None, run_name: str) -> Path | None:
    """The run directory that holds a checkpoint (``<run>/checkpoints/*.ckpt``), or None."""
    if ckpt_path in (None, "", "null", "None"):
        return None
    try:
        path = Path(resolve_ckpt_path(str(ckpt_path), run_name=run_name))
    except CheckpointError:
        return None  # train() says what is wrong, in one line
    run_dir = path.parent.parent
    # only a run directory of this project: never write into wherever a checkpoint was copied
    if path.parent.name == "checkpoints" and (run_dir / ".hydra").is_dir():
        return run_dir
    return None


def resume_dir(ckpt_path: Any, run_name: Any, new_run_dir: Any) -> str:
    """``${resume_dir:${ckpt_path},${run_name},<pattern>}``: the checkpoint's run directory when
    resuming from a checkpoint of a run directory, else ``new_run_dir``."""
    found = checkpoint_run_dir(None if ckpt_path is None else str(ckpt_path), str(run_name))
    return str(found) if found is not None else str(new_run_dir)


def register_resume_resolver() -> None:
    if not OmegaConf.has_resolver("resume_dir"):
        # cached: Hydra reads hydra.run.dir more than once, and "last" must not change between
        OmegaConf.register_new_resolver("resume_dir", resume_dir, use_cache=True)


# ---------------------------------------------------------------------------- W&B run id


def wandb_run_id(checkpoint: dict[str, Any], ckpt_path: str) -> str | None:
    """The W&B run of a checkpoint: saved in it, else the newest in its run's ``wandb/``."""
    saved = checkpoint.get(WANDB_ID_KEY)
    if isinstance(saved, str) and saved:
        return saved
    wandb_dir = Path(ckpt_path).parent.parent / "wandb"
    folders = sorted(p.name for p in wandb_dir.glob("*run-*") if p.is_dir()) \
        if wandb_dir.is_dir() else []
    found = [m.group(1) for m in map(WANDB_RUN_FOLDER.match, folders) if m]
    return found[-1] if found else None  # names sort by their start time


def resumed_from(checkpoint: dict[str, Any], ckpt_path: str, run_dir: Path) -> Resumed:
    """Say what a resumed run continues and where it writes; the facts the loggers need."""
    run_id = wandb_run_id(checkpoint, ckpt_path)
    same_dir = Path(ckpt_path).resolve().parent.parent == run_dir.resolve()
    log.info("resuming %s (epoch %s, step %s): writing into %s%s%s", ckpt_path,
             checkpoint.get("epoch"), checkpoint.get("global_step"), run_dir,
             "" if same_dir else " (a new run directory: hydra.run.dir was given)",
             f", continuing W&B run {run_id}" if run_id else "")
    return Resumed(ckpt_path=ckpt_path, wandb_run_id=run_id)


class WandbRunIdInCheckpoint(pl.Callback):
    """Saves the W&B run id in every checkpoint, so that a resume continues that run."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.version:
                checkpoint[WANDB_ID_KEY] = str(logger.version)


# ---------------------------------------------------------------------------- CSV


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Lightning deletes an existing metrics.csv here; a resumed run keeps the earlier rows
        # and adds columns after them (Lightning rewrites the header when new keys appear).
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))


class ContinuingCSVLogger(CSVLogger):
    """CSVLogger that appends to the metrics.csv of the run it resumes."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
