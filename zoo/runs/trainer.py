"""The Trainer of one run and what it carries: loggers, callbacks, checkpointing.

:func:`build_trainer` is what :func:`zoo.runs.train.train` calls; the loggers and callbacks are
built by name from the config only (a config cannot name a class to run).
"""

from __future__ import annotations

import logging
import netrc
import os
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    RichModelSummary,
    RichProgressBar,
    TQDMProgressBar,
)
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from torchmetrics import Metric

from zoo.callbacks import build_measurement_callbacks
from zoo.config.schemas import PROGRESS_BARS
from zoo.runs.log import StepLogInterval
from zoo.runs.resume import ContinuingCSVLogger, Resumed, WandbRunIdInCheckpoint
from zoo.runs.signals import PreemptionCheckpoint
from zoo.training.compat import drop_wandb_anonymous
from zoo.training.train_eval import TrainEvalPass
from zoo.weights.checkpoint import AtomicCheckpointIO

LOGGERS = ("wandb", "csv", "tensorboard")

# ---------------------------------------------------------------------------- loggers


def wandb_has_credentials() -> bool:
    """True when an API key is configured (environment or ~/.netrc), without asking W&B."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def build_wandb_logger(options: dict[str, Any], run_dir: Path, config: dict[str, Any],
                       run_id: str | None = None) -> WandbLogger | None:
    """``run_id``: continue that W&B run (a resumed training), else start a new one."""
    import wandb  # only when W&B is asked for: it takes seconds to import

    mode = options.get("mode", "auto")
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_has_credentials() else "offline")
        # wandb itself sets WANDB_MODE to its old names ("dryrun" after an offline run)
        mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    if mode == "disabled":
        return None
    if not os.environ.get("HOME") and not os.environ.get("XDG_CACHE_HOME"):
        # W&B's service keeps its logs under $XDG_CACHE_HOME or $HOME/.cache; with neither (a
        # batch system, a container) it printed ~20 log lines on the terminal (issue 24)
        os.environ["XDG_CACHE_HOME"] = str(run_dir / "wandb" / ".cache")
    if mode not in ("online", "offline"):
        raise ValueError(
            f"logger.wandb.mode must be auto, online, offline or disabled, got {mode!r}"
        )
    logger = WandbLogger(
        name=options.get("name"),
        project=options.get("project", "skip-zoo"),
        entity=options.get("entity"),
        group=options.get("group"),
        tags=list(options.get("tags") or []),
        save_dir=str(run_dir),
        offline=mode == "offline",
        config=config,
        id=run_id,
        resume="allow" if run_id else None,
        settings=wandb.Settings(
            init_timeout=float(options.get("init_timeout_s", 30)),
            silent=True,
            console="off",  # the run log already goes to the terminal and the Hydra log
        ),
    )
    drop_wandb_anonymous(logger)
    try:
        logger.experiment  # noqa: B018 - start the run now: a W&B failure must not surface mid-training
    except Exception as error:  # noqa: BLE001 - any W&B failure: go on without it
        warnings.warn(f"W&B could not start ({error}); training goes on with the other loggers.",
                      stacklevel=2)
        return None
    return logger


def build_loggers(cfg: DictConfig, run_dir: Path, tags: list[str],
                  resumed: Resumed | None = None) -> list[Logger]:
    chosen = dict(cfg.get("logger") or {})
    unknown = sorted(set(chosen) - set(LOGGERS))
    if unknown:
        raise ValueError(f"unknown logger(s) {unknown}; choose from {', '.join(LOGGERS)} or none")
    loggers: list[Logger] = []
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if "wandb" in chosen:
        options = dict(chosen["wandb"])
        options["tags"] = sorted(set(options.get("tags") or []) | set(tags))
        wandb_logger = build_wandb_logger(options, run_dir, resolved,
                                          resumed.wandb_run_id if resumed else None)
        if wandb_logger is not None:
            loggers.append(wandb_logger)
    if "csv" in chosen:
        name = chosen["csv"].get("name", "csv")
        if resumed:  # append to its rows
            loggers.append(ContinuingCSVLogger(save_dir=str(run_dir), name=name, version="",
                                               resume_step=resumed.global_step))
        else:
            loggers.append(CSVLogger(save_dir=str(run_dir), name=name, version=""))
    if "tensorboard" in chosen:
        name = chosen["tensorboard"].get("name", "tensorboard")
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name=name, version=""))
    return loggers


# ------------------------------------------------------------------ what the terminal shows


class SummaryWithoutMetrics(RichModelSummary):
    """Lightning's model summary less the rows of the metric objects (``train_acc``, ...): they
    hold no weights and have no input or output sizes (shown as ``?``)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.metric_names = {name for name, child in pl_module.named_children()
                             if isinstance(child, Metric)}
        super().on_fit_start(trainer, pl_module)

    def summarize(self, summary_data: list[tuple[str, list[str]]], *totals: Any,
                  **options: Any) -> None:
        names = dict(summary_data)["Name"]
        kept = [i for i, name in enumerate(names) if name not in self.metric_names]
        rows = [(header, [values[i] for i in kept]) for header, values in summary_data]
        rows[0] = (rows[0][0], [str(i) for i in range(len(kept))])  # number the rows again
        super().summarize(rows, *totals, **options)


class _NoVersionNumber:
    """No ``v_num`` on the progress bar: the logger's version (a W&B run id, ``v_num: qpa_``)
    means nothing to a reader; the run directory names the run. Lightning's documented way."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        metrics.pop("v_num", None)
        return metrics


class RichBar(_NoVersionNumber, RichProgressBar):
    pass


class TQDMBar(_NoVersionNumber, TQDMProgressBar):
    pass


# ---------------------------------------------------------------------------- callbacks


def build_callbacks(cfg: DictConfig, run_dir: Path) -> tuple[list[Callback], ModelCheckpoint]:
    """Every callback of the run, and the checkpoint callback that keeps the best."""
    options = cfg.get("callbacks") or {}
    checkpoint_options = options.get("checkpoint") or {}
    monitor = checkpoint_options.get("monitor", "val/acc")
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best-epoch{epoch:03d}-step{step}",
        auto_insert_metric_name=False,
        monitor=monitor,
        mode="max" if "acc" in monitor else "min",
        save_top_k=int(checkpoint_options.get("save_top_k", 1)),
        save_last=True,  # at every epoch end
        # A resumed run must go on replacing last.ckpt: with the counter, a checkpoint saved on
        # a signal (which Lightning's callback does not know of) made the resumed run write
        # last-v1.ckpt and ckpt_path=last went back to the stale last.ckpt (issue 24, item 3).
        enable_version_counter=False,
    )
    callbacks: list[Callback] = [checkpoint, PreemptionCheckpoint(run_dir / "checkpoints")]
    every_n_steps = checkpoint_options.get("every_n_train_steps")
    if every_n_steps:
        # Lightning's step and epoch intervals exclude each other in one callback: a second one
        # refreshes last.ckpt every N steps (long epochs lose at most N steps to a kill).
        callbacks.append(ModelCheckpoint(
            dirpath=run_dir / "checkpoints", filename="last",
            every_n_train_steps=int(every_n_steps), save_top_k=1, monitor=None,
            enable_version_counter=False,
        ))
    bar = options.get("progress_bar", "rich")
    if bar == "rich":
        callbacks.append(RichBar(leave=True))
    elif bar == "tqdm":
        callbacks.append(TQDMBar())
    elif bar not in ("none", None):
        raise ValueError(f"callbacks.progress_bar must be one of {', '.join(PROGRESS_BARS)}, "
                         f"got {bar!r}")
    if options.get("lr_monitor", True) and cfg.get("logger"):
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    callbacks.extend(build_measurement_callbacks(OmegaConf.to_container(options, resolve=True)))
    train_eval = options.get("train_eval") or {}
    if train_eval.get("at_end", True) or train_eval.get("every_n_epochs"):
        callbacks.append(TrainEvalPass(every_n_epochs=train_eval.get("every_n_epochs"),
                                       at_end=bool(train_eval.get("at_end", True))))
    return callbacks, checkpoint


# ---------------------------------------------------------------------------- trainer


def build_trainer(
    cfg: DictConfig, run_dir: Path, tags: list[str], resumed: Resumed | None
) -> tuple[pl.Trainer, list[Logger], ModelCheckpoint]:
    """The Trainer with the run's loggers and callbacks; also the loggers (to close W&B) and the
    checkpoint callback (to read the best and last checkpoints)."""
    loggers = build_loggers(cfg, run_dir, tags, resumed)
    callbacks, checkpoint = build_callbacks(cfg, run_dir)
    if resumed is not None:
        quiet_resume_noise(resumed.ckpt_path)
    callbacks += [StepLogInterval(), WandbRunIdInCheckpoint()]
    if cfg.trainer.get("enable_model_summary", True) is not False:
        callbacks.append(SummaryWithoutMetrics())
    options = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer = pl.Trainer(
        **{key: value for key, value in options.items() if value is not None},
        default_root_dir=str(run_dir),
        logger=loggers or False,
        callbacks=callbacks,
        enable_progress_bar=any(isinstance(c, (RichProgressBar, TQDMProgressBar))
                                for c in callbacks),
        plugins=[AtomicCheckpointIO(), *slurm_plugins()],
    )
    return trainer, loggers, checkpoint


def slurm_plugins() -> list[Any]:
    """Under SLURM, Lightning's own requeue is off: on SIGUSR1 it wrote ``hpc_ckpt_N.ckpt`` (a
    second lineage beside last.ckpt) and restored it over last.ckpt on the next start. The zoo
    handles SIGUSR1 as it does SIGTERM (save last.ckpt, exit, ``scontrol requeue``;
    :mod:`zoo.weights.checkpoint`)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


class _DropResumeEcho(logging.Filter):
    """Lightning's "Restoring states from ..." and "Restored all states from ..." repeat the
    zoo's own "resuming ..." line."""

    def __init__(self, ckpt_path: str) -> None:
        super().__init__()
        self.ckpt_path = ckpt_path

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith(("Restoring states from the checkpoint path at ",
                                        "Restored all states from the checkpoint at "))
                    and message.endswith(self.ckpt_path))


def quiet_resume_noise(ckpt_path: str) -> None:
    """A resume writes into a run directory that holds checkpoints by design; say nothing twice."""
    target = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    for old in [f for f in target.filters if isinstance(f, _DropResumeEcho)]:
        target.removeFilter(old)
    target.addFilter(_DropResumeEcho(ckpt_path))
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
