"""Turn a composed config into a training run: data, model, callbacks, loggers, trainer, fit, test.

``train.py`` is a thin Hydra wrapper around :func:`train`; everything it does lives here, where
tests can call it. The loggers, callbacks and the Trainer are built in :mod:`zoo.runs.trainer`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import Logger, WandbLogger

import zoo
from zoo.callbacks import TrainingDivergedError
from zoo.config.schemas import plain
from zoo.data import build_datamodule
from zoo.runs.exits import ExitCode
from zoo.runs.log import print_and_log
from zoo.runs.reader import RunRecorder, wandb_summary
from zoo.runs.resume import Resumed, resumed_from
from zoo.runs.signals import refuse_lightning_hpc_checkpoints, stop_signals
from zoo.runs.trainer import build_trainer
from zoo.training.compat import wandb_run_is_offline
from zoo.training.module import ZooModule
from zoo.training.precision import check_accelerator, choose_channels_last, choose_precision
from zoo.weights.checkpoint import (
    check_resume_compatible,
    resolve_ckpt_path,
)
from zoo.weights.predict import data_facts
from zoo.weights.pretrained import load_pretrained

log = logging.getLogger("zoo")


def choose_numerics(cfg: DictConfig) -> None:
    """Resolve ``trainer.precision=auto`` and ``channels_last=auto`` in the config, and say so.

    The resolved values are what the config records (W&B, run record), not ``auto``.
    """
    accelerator = str(cfg.trainer.get("accelerator") or "auto")
    check_accelerator(accelerator)
    precision, why = choose_precision(cfg.trainer.get("precision"), accelerator,
                                      int(cfg.data.get("image_size") or 0))
    channels_last = choose_channels_last(cfg.get("channels_last"), accelerator, precision)
    OmegaConf.set_struct(cfg, False)
    cfg.trainer.precision = precision
    cfg.channels_last = channels_last
    OmegaConf.set_struct(cfg, True)
    layout = "channels-last" if channels_last else "NCHW"
    log.info("precision: %s, %s (%s)", precision, layout, why)


# ---------------------------------------------------------------------------- run


def run_group(cfg: DictConfig) -> str | None:
    """The W&B group: the experiment's or sweep's name, so that its runs sit together."""
    if cfg.get("group"):
        return str(cfg.group)
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return sweep_group(Path(hydra_cfg.sweep.dir))
    except ValueError:  # not running under Hydra
        pass
    return None


def sweep_group(sweep_dir: Path) -> str:
    """``sweep-<date>-<time>`` from ``multirun/<date>/<time>-<id>``; else ``sweep-<folder>``."""
    dated = re.fullmatch(r"\d{4}-\d{2}-\d{2}", sweep_dir.parent.name)
    return f"sweep-{sweep_dir.parent.name}-{sweep_dir.name}" if dated else f"sweep-{sweep_dir.name}"


def check_config(cfg: DictConfig) -> None:
    """Values Hydra accepts but that make no sense: one clear error before anything is built."""
    trainer = cfg.trainer
    max_epochs = trainer.get("max_epochs")
    if max_epochs is not None and (not isinstance(max_epochs, int) or max_epochs < 0):
        raise ValueError("trainer.max_epochs must be a whole number >= 0 (0: evaluate only), "
                         f"got {max_epochs!r}")
    if max_epochs == 0 and cfg.get("ckpt_path"):
        raise ValueError("trainer.max_epochs=0 evaluates without training: give the checkpoint as "
                         f"model.pretrained={cfg.ckpt_path} (ckpt_path resumes a run, "
                         "in its directory)")
    batch_size = cfg.data.get("batch_size")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("data.batch_size must be a whole number >= 1 (images per device), "
                         f"got {batch_size!r}")
    if not isinstance(cfg.seed, int):
        raise ValueError(f"seed must be a whole number, got {cfg.seed!r}")
    check_optim_numbers(cfg.get("optim") or {})
    known = {"checkpoint", "progress_bar", "lr_monitor", "gradient_flow", "residual_gain",
             "explosion_guard", "train_eval"}
    unknown = sorted(set(cfg.get("callbacks") or {}) - known)
    if unknown:
        # Callbacks are built by name from this list only: a config cannot name a class to run.
        raise ValueError(
            f"unknown callback setting(s) {unknown}; known: {', '.join(sorted(known))}"
        )


def check_optim_numbers(optim: Any) -> None:
    """A learning rate of nan or inf would train to NaN and be recorded as a diverged run: a typo
    would become a result. Refuse it, and other non-numbers, as bad input."""
    for key, smallest in (("lr", "> 0"), ("weight_decay", ">= 0"), ("momentum", ">= 0")):
        value = optim.get(key)
        if value is None and key != "lr":
            continue
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        number = value if is_number else math.nan
        if not math.isfinite(number) or number < 0 or (key == "lr" and number == 0):
            raise ValueError(f"optim.{key} must be a finite number {smallest}, got {value!r}")


def fit_and_test(
    trainer: pl.Trainer, module: ZooModule, datamodule: Any, ckpt_path: str | None,
    checkpoint: ModelCheckpoint, recorder: RunRecorder, loggers: list[Logger],
) -> tuple[dict[str, float], dict[str, str], float, Any]:
    """Fit, then test the best checkpoint; a signal, divergence or failure is recorded, W&B
    closed."""
    fit_started = time.perf_counter()
    fit_seconds, saved, best_score = None, None, None
    if trainer.max_epochs == 0:  # evaluate only: no fit (no training summary), the test at once
        return evaluate_only(trainer, module, datamodule, recorder, loggers)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        stop_signals.raise_if_received()  # a signal as training ended: stop before testing
        fit_seconds = time.perf_counter() - fit_started  # training + validation, no test, no set-up
        # Read before testing: trainer.test(ckpt_path=best) restores the callback's state as it was
        # when the best checkpoint was written, which predates the last save.
        saved = {"last": checkpoint.last_model_path, "best": checkpoint.best_model_path}
        best_score = checkpoint.best_model_score
        # the train-eval result too, which testing would restore to an older one
        recorder.fit_ended()
        results = trainer.test(module, datamodule=datamodule, ckpt_path=saved["best"] or None,
                               verbose=False)
    except TrainingDivergedError as diverged:
        # A diverged run is a result too (the explosion and depth experiments expect some): its
        # run.json says so (zoo.results.report reads it), W&B records the same facts and closes the
        # run as failed, so that a sweep's next job gets a run of its own.
        record = recorder.finish("diverged", error=diverged,
                                 fit_seconds=time.perf_counter() - fit_started)
        close_wandb(loggers, trainer, ExitCode.DIVERGED, wandb_summary(record))
        raise
    except BaseException as error:
        elapsed = fit_seconds if fit_seconds is not None else time.perf_counter() - fit_started
        end_stopped_run(error, trainer, recorder, loggers, fit_seconds=elapsed, saved=saved,
                        best_score=best_score)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    return metrics, saved, fit_seconds, best_score


def evaluate_only(
    trainer: pl.Trainer, module: ZooModule, datamodule: Any, recorder: RunRecorder,
    loggers: list[Logger],
) -> tuple[dict[str, float], dict[str, str], float, Any]:
    """``trainer.max_epochs=0``: test the starting weights (``model.pretrained`` or fresh); no
    ckpt_path (check_config)."""
    if not module.hparams.model.get("pretrained"):  # pretrained weights were announced on load
        log.info("evaluating freshly initialised weights (no model.pretrained given)")
    try:
        results = trainer.test(module, datamodule=datamodule, verbose=False)
    except BaseException as error:
        end_stopped_run(error, trainer, recorder, loggers, fit_seconds=0.0)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    return metrics, {"last": "", "best": ""}, 0.0, None


def end_stopped_run(error: BaseException, trainer: pl.Trainer, recorder: RunRecorder,
                    loggers: list[Logger], **facts: Any) -> NoReturn:
    """A run that a signal or a failure stopped: record it, close W&B, raise.

    SIGTERM (in any phase: Lightning's SystemExit) and Ctrl-C (Lightning's sys.exit(1) after its
    clean-up) become Preempted, with a message that says what was saved."""
    preempted = stop_signals.preempted(error)
    try:
        recorder.finish("preempted" if preempted else "failed", error=preempted or error, **facts)
    except OSError as record_error:  # a full disk must not hide the error that matters
        log.warning("could not write run.json: %s", record_error)
    close_wandb(loggers, trainer, preempted.exit_code if preempted else ExitCode.FAILED)
    if preempted is not None:
        raise preempted from None
    raise error


def close_wandb(loggers: list[Logger], trainer: pl.Trainer, exit_code: int,
                summary: dict | None = None) -> None:
    """Write the W&B summary and close its run; a W&B failure is a warning, never the run's end.

    Closing now matters: the next run of a Hydra sweep (same process) must start its own W&B run
    instead of reusing this one, and the offline file must be complete.
    """
    if not trainer.is_global_zero:
        return
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        try:
            if summary:
                logger.experiment.summary.update(summary)
            logger.experiment.finish(exit_code=exit_code)
        except Exception as error:  # noqa: BLE001 - any W&B failure: the other records stand
            warnings.warn(f"W&B could not record the end of the run ({type(error).__name__}: "
                          f"{str(error)[:200]}); the CSV log and run.json have it.", stacklevel=2)


def build_module(cfg: DictConfig, datamodule: Any) -> ZooModule:
    """The LightningModule of the configured network, freshly initialised."""
    return ZooModule(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        label_smoothing=float(cfg.label_smoothing),
        channels_last=bool(cfg.channels_last),
        batch_size=int(cfg.data.batch_size),
        dataset=data_facts(datamodule),  # the checkpoint preprocesses raw images as trained
    )


def load_starting_weights(cfg: DictConfig, module: ZooModule,
                          run_dir: Path) -> tuple[str | None, Resumed | None]:
    """Where training starts: a checkpoint to resume (returned, with what it continues), else
    ``model.pretrained`` loaded into the network, else the fresh initialisation.

    A resumed run ignores ``model.pretrained``: the checkpoint's weights replace them anyway.
    """
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_name=str(cfg.run_name),
                                  run_dir=run_dir)
    if ckpt_path is not None:
        optim_cfg = OmegaConf.to_container(cfg.optim, resolve=True)
        checkpoint = check_resume_compatible(ckpt_path, model_cfg, optim_cfg, str(cfg.data.name))
        return ckpt_path, resumed_from(checkpoint, ckpt_path, run_dir)
    refuse_lightning_hpc_checkpoints(run_dir)
    if model_cfg.get("pretrained"):
        # The network was built without them (ZooModule leaves pretrained out, so that loading
        # one of its checkpoints does not need the original weights); the loader is zoo.create's.
        load_pretrained(module.net, model_cfg["name"], str(model_cfg["pretrained"]))
        evaluate_only = cfg.trainer.get("max_epochs") == 0
        log.info("%s weights of %s: %s", "evaluating the" if evaluate_only else "starting from the",
                 model_cfg["name"], model_cfg["pretrained"])
    return None, None


def train(cfg: DictConfig, run_dir: Path | str) -> dict[str, float]:
    """Fit and test the configured network; returns the final test metrics."""
    cfg = plain(cfg)  # the schemas' choices as strings (zoo/config/schemas.py), checked by Hydra
    check_config(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(run_dir, os.W_OK):
        raise PermissionError(
            f"the output directory {run_dir} is not writable; set hydra.run.dir=..."
        )
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    choose_numerics(cfg)
    OmegaConf.set_struct(cfg, False)
    cfg.group = run_group(cfg)
    OmegaConf.set_struct(cfg, True)

    facts = zoo.describe(cfg.model.name)
    tags = [f"family:{facts['family']}", f"skip:{facts['skip']}", f"data:{cfg.data.name}"]
    datamodule = build_datamodule(cfg.data)
    datamodule.setup("fit")  # missing or corrupt data: fail now, in seconds, before any logger
    if cfg.data.num_classes is None:  # folder datasets count their classes; the model reads it
        cfg.data.num_classes = datamodule.num_classes
    module = build_module(cfg, datamodule)
    ckpt_path, resumed = load_starting_weights(cfg, module, run_dir)

    trainer, loggers, checkpoint = build_trainer(cfg, run_dir, tags, resumed)
    recorder = RunRecorder(run_dir, cfg, trainer, module, checkpoint)  # run.json, however it ends
    metrics, saved, fit_seconds, best_score = fit_and_test(
        trainer, module, datamodule, ckpt_path, checkpoint, recorder, loggers)

    record = recorder.finish("done", fit_seconds=fit_seconds, test_metrics=metrics, saved=saved,
                             best_score=best_score)
    if trainer.is_global_zero:
        report_paths(run_dir, saved, loggers, metrics, fit_seconds)
    close_wandb(loggers, trainer, 0, wandb_summary(record))
    return metrics


def wandb_sync_command(files_dir: str) -> str:
    """``wandb sync`` for every offline folder of the run: a resumed run has one per session
    (W&B cannot resume offline runs in place), and the earlier ones hold the earlier history."""
    folder = Path(files_dir.rsplit("/files", 1)[0])
    sessions = sorted(folder.parent.glob("offline-run-*"))
    if len(sessions) <= 1:
        return f"wandb sync {shlex.quote(str(folder))}"
    return f"wandb sync {shlex.quote(str(folder.parent))}/offline-run-*"


def report_paths(
    run_dir: Path, saved: dict[str, str], loggers: list[Logger], metrics: dict[str, float],
    fit_seconds: float,
) -> None:
    lines = ["", "test metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))]
    if fit_seconds:  # evaluate-only runs (trainer.max_epochs=0) fit nothing
        lines.append(f"fit time: {fit_seconds:.1f} s (training and validation)")
    lines.append(f"run directory: {run_dir}")
    for kind in ("last", "best"):
        if saved[kind]:
            lines.append(f"{kind} checkpoint: {saved[kind]}")
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            if wandb_run_is_offline(run):
                lines.append(f"W&B offline run: {run.dir.rsplit('/files', 1)[0]}")
                lines.append(f"  upload it later with: {wandb_sync_command(run.dir)}")
            else:
                lines.append(f"W&B run: {run.url}")
    print_and_log("\n".join(lines))  # the terminal and the run's train.log
