"""Checkpoints that are written atomically and read without executing code.

* Writes go to a temporary file in the same directory and are moved into place with
  ``os.replace``: a kill during a save leaves the previous ``last.ckpt`` whole.
* Reads use ``torch.load(weights_only=True)``: a checkpoint is data. A file whose pickle asks for
  code (a ``__reduce__`` that calls ``os.system``, say) is refused, not run. The reader,
  :func:`safe_load`, and its errors live in :mod:`zoo.pretrained`, which needs no Lightning (so
  ``import zoo`` does not import it); they are importable from here as well.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from zoo.pretrained import CheckpointError, safe_load, what_is_there
from zoo.pretrained import UnsafeCheckpointError as UnsafeCheckpointError  # for importers

log = logging.getLogger(__name__)


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """No space (or quota) left where a checkpoint was being written; the previous one is kept."""

    def __init__(self, path: Path, cause: OSError) -> None:
        where = "free some space (or set hydra.run.dir= on a disk with room) and"
        then = (f"the previous {path.name} is kept whole: {where} resume with ckpt_path={path}"
                if path.is_file() else f"nothing was saved there yet: {where} run again")
        super().__init__(cause.errno, f"no space left on the device ({cause.strerror}) while "
                         f"saving the checkpoint {path}; {then}", str(path))


class _WriteRecorder:
    """A file wrapper that keeps the first ``OSError`` of a write.

    ``torch.save`` into a file object swallows the writer's ``OSError`` and raises
    ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``; this keeps the real
    cause (a full disk, say) so that the error can name it.
    """

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        self.file.flush()


def _open_exclusive(directory: Path, name: str) -> tuple[int, Path]:
    """A new temporary file next to ``name``, created with mode 0666 less the umask.

    ``tempfile.mkstemp`` creates files mode 0600 whatever the umask, and ``os.replace`` keeps
    that mode: group members of a shared project directory could not read the checkpoints.
    """
    while True:
        temporary = directory / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temporary
        except FileExistsError:
            continue


def _first_os_error(error: BaseException, recorder: _WriteRecorder) -> OSError | None:
    """The ``OSError`` behind ``error``: itself, the recorded write error, or one in its chain."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return recorder.error


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic saves and data-only loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = _open_exclusive(path.parent, path.name)
        recorder = None
        try:
            with os.fdopen(handle, "wb") as file:
                recorder = _WriteRecorder(file)
                torch.save(checkpoint, recorder)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException as error:
            Path(temporary).unlink(missing_ok=True)
            cause = _first_os_error(error, recorder) if recorder is not None else None
            if cause is not None and cause.errno in DISK_FULL_ERRNOS:
                raise DiskFullError(path, cause) from error
            raise

    def load_checkpoint(self, path: str | Path, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = safe_load(path)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise CheckpointError(
                f"{path} is not a Lightning checkpoint of this project (no 'state_dict')"
            )
        return checkpoint


def resolve_ckpt_path(ckpt_path: str | None, run_name: str,
                      search_roots: tuple[str, ...] = ("outputs", "multirun")) -> str | None:
    """``None``, an existing file, or ``"last"``: the newest ``last.ckpt`` of a run of that name.

    Saves replace ``last.ckpt`` atomically, so the newest one is whole even while its run is
    still writing (it is then that run's latest state, which the log line names).
    """
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        candidates = [
            p for root in search_roots if Path(root).is_dir()
            for p in Path(root).glob(f"**/*{run_name}/checkpoints/last.ckpt")
        ]
        if not candidates:
            raise CheckpointError(
                f"ckpt_path=last: no last.ckpt of a run named {run_name!r} under "
                f"{', '.join(search_roots)}/; give the checkpoint's path instead"
            )
        newest = max(candidates, key=lambda p: p.stat().st_mtime)
        log.info("ckpt_path=last: resuming from %s (the newest of %d)", newest, len(candidates))
        return str(newest)
    if not Path(ckpt_path).is_file():
        raise CheckpointError(
            f"ckpt_path {ckpt_path} {what_is_there(Path(ckpt_path))}; "
            "give the path of a .ckpt file or ckpt_path=last"
        )
    return str(ckpt_path)


def check_resume_optimizer(checkpoint: dict[str, Any], optim: dict[str, Any],
                           ckpt_path: str) -> None:
    """Resuming restores the optimizer's state: another optimizer cannot take it, and the
    checkpoint's learning rate and schedule replace a new ``optim.lr`` (said, not done silently)."""
    saved = (checkpoint.get("hyper_parameters") or {}).get("optim") or {}
    if saved.get("name") and saved.get("name") != optim.get("name"):
        raise CheckpointError(
            f"{ckpt_path} was trained with optim.name={saved['name']} and holds its state; this "
            f"run asks for optim.name={optim.get('name')}. Resume with optim.name={saved['name']}, "
            f"or start fresh from its weights with model.pretrained={ckpt_path} (and no ckpt_path)"
        )
    both_lr = saved.get("lr") is not None and optim.get("lr") is not None
    if both_lr and float(saved["lr"]) != float(optim["lr"]):
        log.warning(
            "optim.lr=%s is not used on resume: the optimizer and its schedule continue from %s "
            "(optim.lr=%s). To train with another rate, start fresh from its weights: "
            "model.pretrained=%s and no ckpt_path", optim["lr"], ckpt_path, saved["lr"], ckpt_path,
        )


# ---------------------------------------------------------------------------- signals

SIGNAL_EXIT_CODES = {"SIGTERM": 143, "Ctrl-C": 130}  # 128 + the signal's number, as shells say


class Preempted(RuntimeError):
    """The run was stopped by SIGTERM or Ctrl-C; the message says what was saved and how to
    resume."""

    def __init__(self, message: str, signal_name: str, checkpoint_path: Path | None) -> None:
        super().__init__(message)
        self.exit_code = SIGNAL_EXIT_CODES[signal_name]
        self.checkpoint_path = checkpoint_path


class StopSignals:
    """SIGTERM and Ctrl-C over a whole run, not only while Lightning trains.

    Lightning handles them only inside ``trainer.fit``/``test`` (SIGTERM: a ``SIGTERMException``,
    a ``SystemExit`` with code 0, at the next step boundary; Ctrl-C: ``sys.exit(1)``). Elsewhere
    SIGTERM killed the process without a word. ``train.py`` installs this for the whole run:

    * while Lightning's handler is installed it calls this one after its own: SIGTERM is only
      recorded here, and Lightning stops at the next step boundary as before;
    * elsewhere the first signal raises at once (``SIGTERMException``, ``KeyboardInterrupt``),
      except once testing is done: the report and the W&B upload finish first (seconds);
    * later signals are ignored: the checkpoint save and the resume line must finish.

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
            self._previous = {signal.SIGTERM: signal.getsignal(signal.SIGTERM),
                              signal.SIGINT: signal.getsignal(signal.SIGINT)}
            signal.signal(signal.SIGTERM, self._on_sigterm)
            signal.signal(signal.SIGINT, self._on_sigint)

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
        if self.received == "SIGTERM":
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
                    f"Resume with: python train.py ... ckpt_path={self.saved_now}")
        if newest is not None:
            rerun = " (training had finished: only the test runs again)" \
                if self.phase in ("testing", "the end of training") else ""
            return (f"{where}; nothing newer was saved, the newest checkpoint is {newest}. "
                    f"Resume with: python train.py ... ckpt_path={newest}{rerun}")
        return (f"{where}, before any checkpoint was saved: nothing to resume, run the same "
                "command again")


stop_signals = StopSignals()  # signals are per process; train.py installs it around each run


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
        trainer.save_checkpoint(path)
        stop_signals.saved_now = path
