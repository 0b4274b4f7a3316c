"""The only place that reads or writes private attributes of Lightning (and W&B).

Lightning offers no public way to do these few things; each function names the attribute it
relies on, falls back to a safe answer when a Lightning release renames it, and has a test in
``tests/test_compat.py`` that fails when the attribute goes away, so that an upgrade shows
here, not as a silent change of behaviour somewhere in a run.
Supported: pytorch-lightning 2.4 to 2.6.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


def reset_train_dataloader(trainer: pl.Trainer) -> bool:
    """Make the fit loop build its train loader again; True when there was one to drop.

    ``trainer.estimated_stepping_batches`` builds the train loader before a resumed run's loop
    state is restored, so the loader's saved position (mid-epoch resume) would never reach it.
    Dropping ``fit_loop._combined_loader`` makes the fit loop build it again after the restore.
    """
    fit_loop = trainer.fit_loop
    if getattr(fit_loop, "_combined_loader", None) is None:
        return False
    fit_loop._combined_loader = None
    return True


def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The module's trainer, or None outside one (``module.trainer`` raises when unattached)."""
    return getattr(module, "_trainer", None)


def checkpoint_may_save_at_step(checkpoint: ModelCheckpoint, global_step: int) -> bool:
    """Whether ``checkpoint`` may save in the ``on_train_batch_end`` of ``global_step``.

    ModelCheckpoint keeps its step and time intervals in private attributes
    (``_every_n_train_steps``, ``_train_time_interval``); a time interval may fire at any step.
    """
    if getattr(checkpoint, "_train_time_interval", None) is not None:
        return True
    every = getattr(checkpoint, "_every_n_train_steps", 0) or 0
    return every >= 1 and global_step % every == 0


def wandb_run_is_offline(run: Any) -> bool:
    """Whether a W&B run writes only to disk (``settings._offline`` in older wandb, ``mode``)."""
    settings = run.settings
    return bool(getattr(settings, "_offline", False)) or getattr(settings, "mode", "") == "offline"


def drop_wandb_anonymous(logger: Any) -> None:
    """Stop W&B's "anonymous setting has no effect" warning on every run.

    Lightning's WandbLogger always passes ``anonymous=None`` to ``wandb.init`` (its private
    ``_wandb_init`` arguments), and recent wandb warns whenever the argument is passed at all.
    """
    init_arguments = getattr(logger, "_wandb_init", None)
    if isinstance(init_arguments, dict) and init_arguments.get("anonymous") is None:
        init_arguments.pop("anonymous", None)


# Lightning's start-up lines that a user cannot act on: hardware it did not find, advertisements.
_LIGHTNING_NOISE = ("💡 Tip:", "GPU available: False", "TPU available:", "HPU available:",
                    "Loading `train_dataloader` to estimate number of stepping batches",
                    # the zoo's own summary (zoo.runs.trainer.SummaryWithoutMetrics) replaces it
                    "Trainer already configured with model summary callbacks")


class _DropLightningNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_LIGHTNING_NOISE)


def quiet_library_noise() -> None:
    """Silence messages of the libraries that a user of the zoo cannot act on; keep the rest.

    * Lightning's litlogger/litmodels tips and "GPU available: False / TPU available" lines (a
      GPU run still prints "GPU available: True ... used: True");
    * the FutureWarning of torch's pytree about ``LeafSpec``, raised inside Lightning's code;
    * Lightning's "Loading `train_dataloader` to estimate ..." line and the model summary's
      warning that it sizes bf16-mixed weights as fp32 (they are fp32).
    """
    noise = _DropLightningNoise()
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                 "lightning.pytorch.utilities.rank_zero"):
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningNoise) for f in target.filters):
            target.addFilter(noise)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    # Under bf16-mixed the weights stay fp32, so the summary's "using 32 bits instead" is right.
    warnings.filterwarnings("ignore", message=r"Precision bf16-mixed is not supported by the model")


DDP_PEER_DIED = ("error: another DDP process of this run died (its output says why); this one "
                 "stops too. Resume with ckpt_path=<run dir>/checkpoints/last.ckpt")


def ddp_peer_death_in_one_line() -> None:
    """When a DDP child process dies, Lightning's child-process observer (a private thread of
    lightning_fabric's subprocess launcher) SIGKILLs the main process: exit -9 with no word,
    whenever it notices before the main process's own collective fails (a race; under load it
    often wins). Keep its purpose -- no survivor left hanging in a collective -- but end with
    train.py's one line for a dead peer and exit code 1."""
    try:
        from lightning_fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
    except ImportError:  # another Lightning layout: its own behaviour stands
        return

    def terminate_all(observer: Any) -> None:
        for child in observer._child_processes:
            child.send_signal(observer._termination_signal)
        print(DDP_PEER_DIED, file=sys.stderr, flush=True)
        os._exit(1)

    _ChildProcessObserver._terminate_all = terminate_all
