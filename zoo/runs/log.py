"""What a run logs, how often, and where: step metrics several times per epoch however short the
epoch, and the run's log file (Hydra's ``train.log``) holding what the terminal showed.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings

import pytorch_lightning as pl
from pytorch_lightning.utilities.warnings import PossibleUserWarning

log = logging.getLogger("zoo")

POINTS_PER_EPOCH = 4  # step rows at least this often per epoch (loss curves, gradient flow)


class StepLogInterval(pl.Callback):
    """``log_every_n_steps`` = min(configured, batches per epoch // 4, at least 1).

    With Lightning's fixed 50, a run of 35 batches per epoch logged no step loss at all and
    warned about it. The batches per epoch are known once Lightning has built the train loader
    (limits, devices and all applied), so the interval is set when training starts, and the
    warning, which that setting answers, is not shown.
    """

    def __init__(self, points_per_epoch: int = POINTS_PER_EPOCH) -> None:
        self.points_per_epoch = points_per_epoch
        self.configured: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.configured is None:
            self.configured = trainer.log_every_n_steps
        warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is "
                                r"smaller than the logging interval", category=PossibleUserWarning)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batches = trainer.num_training_batches
        if not self.configured or not math.isfinite(batches):
            return  # logging off, or an iterable of unknown length: keep the setting
        interval = min(self.configured, max(1, int(batches) // self.points_per_epoch))
        if interval != trainer.log_every_n_steps:
            trainer.log_every_n_steps = interval
            log.info("logging step metrics every %d steps (%d batches per epoch)", interval,
                     int(batches))


def log_files() -> list[logging.FileHandler]:
    """The file handlers of the root and ``zoo`` loggers: Hydra's ``<run dir>/train.log``."""
    handlers = logging.getLogger().handlers + logging.getLogger("zoo").handlers
    return [h for h in dict.fromkeys(handlers) if isinstance(h, logging.FileHandler)]


def also_in_log_file(text: str, level: int = logging.INFO) -> None:
    """Write lines already shown on the terminal (printed, not logged) into the run's log file."""
    for line in text.strip("\n").splitlines():
        record = log.makeRecord(log.name, level, __file__, 0, line, None, None)
        for handler in log_files():
            if record.levelno >= handler.level:
                handler.handle(record)


def print_and_log(text: str, error: bool = False) -> None:
    """Print ``text`` as it is (stdout, or stderr for an error) and keep it in the run's log."""
    try:
        print(text, file=sys.stderr if error else sys.stdout, flush=True)
    except OSError:  # the terminal is gone (SIGHUP after an ssh session closed): the log has it
        pass
    also_in_log_file(text, logging.ERROR if error else logging.INFO)
