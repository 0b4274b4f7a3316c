"""Stopping a run by a signal without losing it: SIGTERM, Ctrl-C, SIGUSR1 and SIGHUP.

SLURM pre-emption and time limits, spot instances, ``kill``, a closed terminal: the run saves
``checkpoints/last.ckpt`` at the next step boundary, writes ``run.json``, says in one line how to
resume and exits with ``128 + the signal's number`` (``zoo.runs.exits.ExitCode``). Under SLURM a
SIGUSR1 (``#SBATCH --signal=B:USR1@120``) also requeues the job (``scontrol requeue``), whose
next start resumes with ``ckpt_path=auto`` (``scripts/slurm/train.sbatch``).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from zoo.runs.exits import SIGNAL_EXIT_CODES

log = logging.getLogger(__name__)

STOP_LIKE_SIGTERM = {signal.SIGUSR1: "SIGUSR1", signal.SIGHUP: "SIGHUP"}


class Preempted(RuntimeError):
    """The run was stopped by a signal; the message says what was saved and how to resume."""

    def __init__(self, message: str, signal_name: str, checkpoint_path: Path | None) -> None:
        super().__init__(message)
        self.exit_code = SIGNAL_EXIT_CODES[signal_name]
        self.signal_name = signal_name
        self.checkpoint_path = checkpoint_path


class StopSignals:
    """SIGTERM, Ctrl-C, SIGUSR1 and SIGHUP over a whole run, not only while Lightning trains.

    Lightning handles them only inside ``trainer.fit``/``test`` (SIGTERM: a ``SIGTERMException``,
    a ``SystemExit`` with code 0, at the next step boundary; Ctrl-C: ``sys.exit(1)``). Elsewhere
    SIGTERM killed the process without a word. ``train.py`` installs this for the whole run:

    * while Lightning's handler is installed it calls this one after its own: SIGTERM is only
      recorded here, and Lightning stops at the next step boundary as before;
    * elsewhere the first signal raises at once (``SIGTERMException``, ``KeyboardInterrupt``),
      except once testing is done: the report and the W&B upload finish first (seconds);
    * later signals are ignored: the checkpoint save and the resume line must finish;
    * SIGUSR1 and SIGHUP stop the run as SIGTERM does (they used to kill it with no checkpoint,
      no run.json, no word: exit 138 / 129); Lightning's SLURM requeue, which answered SIGUSR1
      with a second checkpoint lineage, is off (``zoo.runs.trainer.slurm_plugins``).

    The callback :class:`PreemptionCheckpoint` keeps ``phase`` and ``saved_now`` up to date.
    """

    def __init__(self) -> None:
        self.new_run(None)
        self._previous: dict[int, Any] = {}

    def new_run(self, checkpoint_dir: Path | None) -> None:
        self.received: str | None = None
        self.phase = "set-up"
        self.checkpoint_dir = checkpoint_dir
        self.saved_now: Path | None = None

    def __enter__(self) -> None:
        self.new_run(None)
        if threading.current_thread() is threading.main_thread():
            handlers = {signal.SIGTERM: self._on_sigterm, signal.SIGINT: self._on_sigint,
                        **{signum: self._on_stop_like_sigterm for signum in STOP_LIKE_SIGTERM}}
            self._previous = {signum: signal.getsignal(signum) for signum in handlers}
            for signum, handler in handlers.items():
                signal.signal(signum, handler)

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            # Once stopping, a second Ctrl-C must not cut the exit short: Python's shutdown
            # resets handlers written in Python to the default (die at once), not SIG_IGN.
            signal.signal(signum, handler if self.received is None else signal.SIG_IGN)
        self._previous = {}

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        first = self.received is None
        self.received = self.received or "SIGTERM"
        lightning_in_charge = signal.getsignal(signal.SIGTERM) != self._on_sigterm
        if first and not lightning_in_charge and self.phase != "finishing":
            raise SIGTERMException()

    def _on_stop_like_sigterm(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            return
        self.received = STOP_LIKE_SIGTERM[signal.Signals(signum)]
        lightning_handler = signal.getsignal(signal.SIGTERM)
        if lightning_handler != self._on_sigterm and callable(lightning_handler):
            lightning_handler(signal.SIGTERM, frame)  # stop at the next step boundary, and save
        elif self.phase != "finishing":
            raise SIGTERMException()

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            print("already stopping: the checkpoint save and the resume line come next "
                  "(kill -9 ends at once, without them)", file=sys.stderr, flush=True)
            return
        self.received = "Ctrl-C"
        if self.phase != "finishing":
            raise KeyboardInterrupt

    def raise_if_received(self) -> None:
        """After ``trainer.fit``: a signal that arrived as training ended still stops the run."""
        if self.received in ("SIGTERM", *STOP_LIKE_SIGTERM.values()):
            raise SIGTERMException()
        if self.received == "Ctrl-C":
            raise KeyboardInterrupt

    def preempted(self, error: BaseException) -> Preempted | None:
        """``error`` as a :class:`Preempted` when a signal caused it, else None."""
        if self.received is None:
            if isinstance(error, SIGTERMException):
                self.received = "SIGTERM"
            elif isinstance(error, KeyboardInterrupt):
                self.received = "Ctrl-C"
            else:  # Lightning's sys.exit(1) after Ctrl-C is recognised by `received` only
                return None
        return Preempted(self.stop_message(), self.received,
                         self.saved_now or self.newest_checkpoint())

    def newest_checkpoint(self) -> Path | None:
        last = self.checkpoint_dir / "last.ckpt" if self.checkpoint_dir is not None else None
        return last if last is not None and last.is_file() else None

    def stop_message(self) -> str:
        where = f"stopped by {self.received} during {self.phase}"
        newest = self.newest_checkpoint()
        if self.phase == "finishing":
            return (f"{where}: the run had finished testing and completed its report (above); "
                    f"its checkpoints are in {self.checkpoint_dir}")
        if self.saved_now is not None:
            return (f"{where}; progress saved in {self.saved_now}. "
                    f"Resume with: python train.py ckpt_path={shlex.quote(str(self.saved_now))}")
        if newest is not None:
            rerun = " (training had finished: only the test runs again)" \
                if self.phase in ("testing", "the end of training") else ""
            return (f"{where}; nothing newer was saved, the newest checkpoint is {newest}. "
                    f"Resume with: python train.py ckpt_path={shlex.quote(str(newest))}{rerun}")
        return (f"{where}, before any checkpoint was saved: nothing to resume, run the same "
                "command again")


stop_signals = StopSignals()  # signals are per process; train.py installs it around each run


class _NotSigtermWhenItWasNot(logging.Filter):
    """SIGUSR1 and SIGHUP go through Lightning's SIGTERM handler (to stop at the next step
    boundary); its "Received SIGTERM" line would name the wrong signal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (stop_signals.received in STOP_LIKE_SIGTERM.values()
                    and "Received SIGTERM" in record.getMessage())


logging.getLogger("pytorch_lightning.trainer.connectors.signal_connector").addFilter(
    _NotSigtermWhenItWasNot())


class PreemptionCheckpoint(Callback):
    """On SIGTERM (SLURM pre-emption, spot instances, ``kill``) or Ctrl-C: save ``last.ckpt``.

    Lightning turns SIGTERM into a ``SIGTERMException`` at the next step boundary, in training
    and in validation; this callback saves the state there, so a resumed run loses nothing. It
    saves during fit once a step has been trained (not in the sanity check: nothing to keep),
    never while testing (training is done and saved). Other exceptions (a diverged run, a bug)
    save nothing: the last good checkpoint must not be replaced by a broken state. It also tells
    :data:`stop_signals` the phase, so that the stop message says what happened.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        stop_signals.new_run(self.dirpath)

    @property
    def saved_path(self) -> Path | None:
        return stop_signals.saved_now

    def _phase(self, phase: str) -> None:
        stop_signals.phase = phase

    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        self._phase("the sanity check")

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._phase("training")

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._phase("validation")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._phase("training")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._phase("the end of training")

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._phase("testing")

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._phase("finishing")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        stop_signals.received = stop_signals.received or (
            "Ctrl-C" if isinstance(exception, KeyboardInterrupt) else "SIGTERM")
        fitting = trainer.state.fn == TrainerFn.FITTING
        if not fitting or trainer.sanity_checking or trainer.global_step == 0:
            return
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # all of it: optimizer, loops, callbacks
        stop_signals.saved_now = path


def requeue_slurm_job(signal_name: str | None) -> str:
    """After SIGUSR1 under SLURM (``--signal=B:USR1@N``, the warning before the time limit):
    ``scontrol requeue`` the job, whose next start resumes with ``ckpt_path=auto``. Returns what
    to add to the stop line ("" when there is nothing to requeue)."""
    job = os.environ.get("SLURM_JOB_ID")
    if signal_name != "SIGUSR1" or not job or os.environ.get("SLURM_PROCID", "0") != "0":
        return ""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return f"; scontrol not found: requeue SLURM job {job} yourself"
    try:
        done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"; scontrol requeue {job} failed ({error}): requeue it yourself"
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return f"; scontrol requeue {job} failed ({why[0][:200]}): requeue it yourself"
    return f"; SLURM job {job} requeued: its next start resumes (ckpt_path=auto)"


def refuse_lightning_hpc_checkpoints(run_dir: Path) -> None:
    """A fresh start under SLURM must not be one of Lightning's: given no checkpoint, Lightning
    restores the newest ``hpc_ckpt_N.ckpt`` of the run directory (written by its own requeue,
    which the zoo turns off), over last.ckpt and with earlier rows of metrics.csv deleted."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    stale = sorted(Path(run_dir).glob("hpc_ckpt_*.ckpt"))
    if stale and SLURMEnvironment.detect():
        raise ValueError(
            f"{run_dir} holds {stale[-1].name}, a checkpoint of Lightning's own SLURM requeue, "
            "which Lightning would restore instead of starting fresh: resume with "
            f"ckpt_path={shlex.quote(str(stale[-1]))} or ckpt_path=auto (last.ckpt), or move the "
            "hpc_ckpt files out of the run directory")
