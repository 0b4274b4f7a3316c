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

Settings: a checkpoint path alone is enough. :class:`ResumeSettings` (a Hydra callback, before
Hydra writes anything into the run directory) takes the run's own settings from its
``.hydra/config.yaml`` (read without resolving anything), applies on top the command-line
overrides a resume may change (:func:`may_change_on_resume`: how long and where it trains, how
it logs), refuses in one line those that would change what is trained, and checks the
checkpoint against the result, so that a refused resume leaves the run's files as they were.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from zoo.runs.exits import ExitCode
from zoo.weights.checkpoint import CheckpointError, check_resume_compatible, resolve_ckpt_path

log = logging.getLogger("zoo")

WANDB_ID_KEY = "wandb_run_id"  # in the checkpoint dict, beside Lightning's own keys
WANDB_RUN_FOLDER = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(\w+)$")


@dataclass(frozen=True)
class Resumed:
    """A run continued from ``ckpt_path``; ``wandb_run_id`` None: a new W&B run."""

    ckpt_path: str
    wandb_run_id: str | None
    global_step: int | None = None  # the checkpoint's: metrics.csv rows after it are dropped


# ---------------------------------------------------------------------------- run directory


def checkpoint_run_dir(ckpt_path: str | None, run_name: str) -> Path | None:
    """The run directory that holds a checkpoint (``<run>/checkpoints/*.ckpt``), or None."""
    if ckpt_path in (None, "", "null", "None"):
        return None
    try:
        found = resolve_ckpt_path(str(ckpt_path), run_name=run_name, quiet=True)
    except CheckpointError:
        return None  # train() says what is wrong, in one line
    if found is None:  # ckpt_path=auto: the run directory decides, and it is a new one
        return None
    path = Path(found)
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
    own_dir = Path(ckpt_path).resolve().parent.parent
    if own_dir == run_dir.resolve():
        where = ""
    elif (own_dir / ".hydra").is_dir() and Path(ckpt_path).parent.name == "checkpoints":
        where = " (a new run directory: hydra.run.dir was given)"
    else:
        where = " (a new run directory: the checkpoint is not in a run directory of the zoo)"
    log.info("resuming %s (epoch %s, step %s): writing into %s%s%s", ckpt_path,
             checkpoint.get("epoch"), checkpoint.get("global_step"), run_dir, where,
             f", continuing W&B run {run_id}" if run_id else "")
    step = checkpoint.get("global_step")
    return Resumed(ckpt_path=ckpt_path, wandb_run_id=run_id,
                   global_step=step if isinstance(step, int) else None)


class WandbRunIdInCheckpoint(pl.Callback):
    """Saves the W&B run id in every checkpoint, so that a resume continues that run."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.version:
                checkpoint[WANDB_ID_KEY] = str(logger.version)


# ---------------------------------------------------------------------------- CSV


class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resume_step: int | None = None) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        # Lightning deletes an existing metrics.csv here; a resumed run keeps the earlier rows
        # and adds columns after them (Lightning rewrites the header when new keys appear).
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            keys, rows = list(reader.fieldnames or []), list(reader)
        self.metrics_keys = sorted(keys)
        # Rows past the checkpoint's step were logged by training that a kill threw away; the
        # resumed run logs those steps again, so they would appear twice.
        kept = [row for row in rows if not self._after_resume_step(row.get("step"))]
        if len(kept) < len(rows):
            log.info("metrics.csv: %d row(s) logged after step %s (not in the checkpoint) "
                     "are replaced by the resumed run's", len(rows) - len(kept), self.resume_step)
            temporary = Path(self.metrics_file_path).with_name(".metrics.csv.tmp")
            with open(temporary, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=keys)
                writer.writeheader()
                writer.writerows(kept)
            os.replace(temporary, self.metrics_file_path)

    def _after_resume_step(self, step: str | None) -> bool:
        try:
            return self.resume_step is not None and int(float(step or "")) > self.resume_step
        except ValueError:
            return False


class ContinuingCSVLogger(CSVLogger):
    """CSVLogger that appends to the metrics.csv of the run it resumes."""

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir,
                                                resume_step=self.resume_step)
        return self._experiment


# ---------------------------------------------------------------------------- settings

# What a resume may change: how long and on what it trains, how it logs and shows progress. What
# is trained (model, data, optimizer, schedule, seed, batch) is fixed by the checkpoint's state:
# Lightning restores the optimizer and its schedule, so a new optim.lr would be recorded but not
# used (issue 24, item 7); it is refused instead.
RESUMABLE_GROUPS = ("trainer", "logger", "callbacks")
RESUMABLE_PREFIXES = ("trainer.", "logger.", "callbacks.")
RESUMABLE_KEYS = ("ckpt_path", "data.root", "data.num_workers", "data.download", "group", "tags")
# change the global batch, hence the learning rate's scaling and the schedule's length
NOT_RESUMABLE = ("trainer.accumulate_grad_batches",)
_ABSENT = object()


def may_change_on_resume(key: str) -> bool:
    if key in NOT_RESUMABLE:
        return False
    return key in RESUMABLE_GROUPS or key in RESUMABLE_KEYS or key.startswith(RESUMABLE_PREFIXES)


class ResumeRefused(ValueError):
    """A resume that would change what is trained, or whose checkpoint does not fit: one line."""


def raw_value(config: Any, key: str) -> Any:
    """The value at a dotted ``key``, interpolations left as written (nothing is resolved)."""
    node: Any = OmegaConf.to_container(config, resolve=False)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _shown(value: Any) -> str:
    text = "(not set)" if value is _ABSENT else str(value).replace("'", "")
    return text if len(text) <= 80 else text[:77] + "..."


def _refuse(key: str, asked: Any, saved: Any, run_dir: Path, ckpt_path: str) -> ResumeRefused:
    why = ("the optimizer and its schedule continue from the checkpoint's state"
           if key.split(".")[0] in ("optim", "scheduler") else "it would change what is trained")
    return ResumeRefused(
        f"{key}={_shown(asked)} cannot change on resume ({why}): {run_dir} was trained with "
        f"{key}={_shown(saved)}. Resume without it, or start a new run from its weights with "
        f"model.pretrained={shlex.quote(ckpt_path)} (and no ckpt_path)")


def resume_settings(config: Any, run_dir: Path, ckpt_path: str) -> tuple[Any, dict, list[str]]:
    """The run's saved config with this command's allowed overrides on top, its group choices
    and its overrides list; raises :class:`ResumeRefused` for an override a resume may not make.

    ``config``: the config Hydra composed for this command (its ``hydra`` node included)."""
    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser

    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")  # a safe YAML loader, no resolving
    refuse_resolvers(saved, run_dir / ".hydra" / "config.yaml")
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    saved_hydra = yaml.safe_load(hydra_file.read_text()) if hydra_file.is_file() else {}
    saved_choices = dict(((saved_hydra or {}).get("hydra") or {}).get("runtime", {})
                         .get("choices") or {})
    choices = OmegaConf.to_container(config.hydra.runtime.choices, resolve=False)
    given = list(config.hydra.overrides.task)
    changed = []
    for override in OverridesParser.create().parse_overrides(given):
        key = override.key_or_group
        if key == "ckpt_path":
            continue
        if key in choices and "." not in key:  # a config group: compare the choice
            asked, before = choices.get(key), saved_choices.get(key, _ABSENT)
        else:
            asked, before = raw_value(config, key), raw_value(saved, key)
        if asked == before:
            continue  # repeated as it was: nothing changes
        if not may_change_on_resume(key):
            raise _refuse(key, asked, before, run_dir, ckpt_path)
        changed.append(key)
        if key in choices and "." not in key:
            saved_choices[key] = choices[key]
    for key in changed:
        value = raw_value(config, key)
        if value is _ABSENT:
            parent, _, leaf = key.rpartition(".")
            container = OmegaConf.select(saved, parent) if parent else saved
            if container is not None and leaf in container:
                container.pop(leaf)
        else:
            OmegaConf.update(saved, key, value, merge=False, force_add=True)
    saved.ckpt_path = ckpt_path
    return saved, saved_choices, merged_overrides(run_dir, given, ckpt_path)


def refuse_resolvers(saved: Any, path: Path) -> None:
    """A run folder's settings are data: the zoo's own configs interpolate keys only
    (``${data.num_classes}``), so a resolver (``${oc.env:...}``) in one is refused, not run."""
    pending: list[Any] = [OmegaConf.to_container(saved, resolve=False)]
    while pending:
        node = pending.pop()
        if isinstance(node, dict | list):
            pending.extend(node.values() if isinstance(node, dict) else node)
        elif isinstance(node, str) and re.search(r"\$\{[^}]*:", node):
            raise ResumeRefused(f"{path} asks for a resolver ({_shown(node)}); a run folder's "
                                "settings are data and run nothing: give the settings on the "
                                "command line with model.pretrained=<checkpoint> instead")


def merged_overrides(run_dir: Path, given: list[str], ckpt_path: str) -> list[str]:
    """The run's saved command-line overrides, with this command's replacing those of the same
    key: what the run record lists as the run's settings."""
    import yaml

    def key_of(override: str) -> str:
        return override.lstrip("+~").partition("=")[0]

    path = run_dir / ".hydra" / "overrides.yaml"
    before = [str(o) for o in (yaml.safe_load(path.read_text()) or [])] if path.is_file() else []
    now = [o for o in given if key_of(o) != "ckpt_path"] + [f"ckpt_path={ckpt_path}"]
    keys = {key_of(o) for o in now}
    return [o for o in before if key_of(o) not in keys] + now


class ResumeSettings(Callback):
    """Hydra callback, before Hydra writes into the run directory: a resume takes the run's own
    settings and checks its checkpoint, so that a refused resume changes no file of the run."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            prepare_resume(config)
        except ValueError as error:  # CheckpointError, ResumeRefused: the input's fault
            if os.environ.get("ZOO_DEBUG"):
                raise
            print(f"error: {error}", file=sys.stderr, flush=True)
            sys.exit(ExitCode.BAD_INPUT)


def prepare_resume(config: DictConfig) -> None:
    """Replace the task part of ``config`` by the resumed run's settings."""
    asked = config.get("ckpt_path")
    if asked in (None, "", "null", "None"):
        return
    with read_write(config), open_dict(config):
        # resolved once: ${now:} must not move when ckpt_path changes below
        config.hydra.run.dir = str(config.hydra.run.dir)
    ckpt_path = resolve_ckpt_path(str(asked), run_name=str(config.run_name),
                                  run_dir=config.hydra.run.dir, quiet=str(asked) == "auto")
    if ckpt_path is None:  # ckpt_path=auto, nothing saved yet
        given = any(o.startswith("hydra.run.dir=") for o in config.hydra.overrides.hydra)
        print(f"ckpt_path=auto: no checkpoint in {config.hydra.run.dir}/checkpoints yet, starting "
              "a fresh run there" + ("" if given else " (a relaunch finds it only with a fixed "
                                     "hydra.run.dir=)"), flush=True)
        with read_write(config), open_dict(config):
            config.ckpt_path = None
        return
    run_dir = checkpoint_run_dir(ckpt_path, str(config.run_name))
    with read_write(config), open_dict(config):
        if run_dir is None:  # a checkpoint outside a run directory: the command's settings
            config.ckpt_path = ckpt_path
        else:
            settings, choices, overrides = resume_settings(config, run_dir, ckpt_path)
            for key in [key for key in config if key != "hydra"]:
                del config[key]
            for key, value in settings.items():
                config[key] = value
            config.hydra.runtime.choices = choices
            config.hydra.overrides.task = overrides
    from zoo.runs.train import check_config  # zoo.runs.train imports this module

    check_config(config)  # bad values (trainer.max_epochs=0, ...): before Hydra writes anything
    check_against_checkpoint(config, ckpt_path)


def check_against_checkpoint(config: DictConfig, ckpt_path: str) -> None:
    """The checkpoint must fit the settings: network, its options, dataset, optimizer."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        model = OmegaConf.to_container(config.model, resolve=True)
        optim = OmegaConf.to_container(config.optim, resolve=True)
        data_name = str(config.data.name)
    except OmegaConfBaseException:
        return  # needs what only the run knows: train() checks again once it is built
    check_resume_compatible(ckpt_path, model, optim, data_name)
