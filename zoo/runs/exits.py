"""How a run ends: its exit code (:class:`ExitCode`) and, for an error, its one line.

Every way a run ends maps to one code, the same since the first release, so that a sweep's
summary, a SLURM script or a shell loop can tell a bad input (fix the command) from a diverged
run (a result) from a pre-emption (resume it). :func:`ending_of` is the one place that turns
an error into its message and code; ``train.py`` prints the line and exits with the code.
No Lightning at import: Hydra callbacks and the sweep summary import this module early.
"""

from __future__ import annotations

import errno
import os
import shlex
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """The exit code of ``train.py`` for each way a run ends."""

    DONE = 0
    FAILED = 1  # a crash, out of memory, a dead DDP peer, a run directory lost mid-run
    BAD_INPUT = 2  # the user's input (config, file, value): one line says which
    DIVERGED = 3  # the run itself failed, not its input: a distinct code for sweeps
    DISK_FULL = 74  # sysexits.h EX_IOERR; used for "no space left on device" only
    # 128 + the signal's number, as shells say: SIGHUP (the terminal or ssh session closed),
    # Ctrl-C (SIGINT), SIGUSR1 (SLURM's warning before the time limit, ``--signal``), SIGTERM
    SIGHUP = 129
    CTRL_C = 130
    SIGUSR1 = 138
    SIGTERM = 143

    @property
    def status(self) -> str:
        """The word a sweep's summary shows for this code."""
        return _STATUS.get(self, self.name)

    @property
    def is_signal(self) -> bool:
        """A signal: the user (or the cluster) asked to stop, so a sweep stops too."""
        return self >= 128


_STATUS = {ExitCode.DONE: "done", ExitCode.FAILED: "failed", ExitCode.BAD_INPUT: "bad input",
           ExitCode.DIVERGED: "diverged", ExitCode.DISK_FULL: "disk full",
           ExitCode.CTRL_C: "Ctrl-C"}
# the signal names a stopped run reports, and their codes
SIGNAL_EXIT_CODES = {"SIGTERM": ExitCode.SIGTERM, "Ctrl-C": ExitCode.CTRL_C,
                     "SIGUSR1": ExitCode.SIGUSR1, "SIGHUP": ExitCode.SIGHUP}
_DEAD_PEER = ("by peer", "remote worker crashing", "Broken pipe")  # gloo/NCCL, per transport


def status_of(code: int) -> str:
    """The status word of any exit code; a code the zoo never uses is a failure."""
    return ExitCode(code).status if code in ExitCode._value2member_map_ else "failed"


def disk_full_line(path: Any, what: str) -> str:
    return (f"error: no space left on the device holding {path} ({what}); free some space or set "
            "hydra.run.dir= on a disk with room, then resume with ckpt_path=<run dir>/checkpoints/"
            "last.ckpt (checkpoints already saved are whole)")


def ending_of(error: BaseException, run_dir: str,
              batch_size: Any = None) -> tuple[str, ExitCode] | None:
    """The one line and exit code that end a run with ``error``; None when the error is not a
    known way for a run to end (a bug: its traceback is what helps). ``ZOO_DEBUG=1`` turns the
    input's and the disk's errors back into tracebacks."""
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    from zoo.callbacks import TrainingDivergedError

    debug = bool(os.environ.get("ZOO_DEBUG"))
    if isinstance(error, TrainingDivergedError):
        return f"error: {error}", ExitCode.DIVERGED
    if isinstance(error, RuntimeError):
        return _runtime_ending(error, batch_size)
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        # before the input's errors: a full disk is not the input's fault
        if debug:
            return None
        if type(error).__name__ == "DiskFullError":  # its message names the checkpoint
            return f"error: {error.strerror}", ExitCode.DISK_FULL
        return (disk_full_line(error.filename or run_dir, f"writing it: {error.strerror}"),
                ExitCode.DISK_FULL)
    if isinstance(error, OSError):
        ending = _run_dir_ending(error, run_dir)
        if ending is not None:
            return ending
    user_errors = (ValueError, FileNotFoundError, PermissionError, NotADirectoryError,
                   MisconfigurationException)
    if isinstance(error, user_errors) and not debug:
        return f"error: {error}", ExitCode.BAD_INPUT
    return None


def _runtime_ending(error: RuntimeError, batch_size: Any) -> tuple[str, ExitCode] | None:
    import torch

    if isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error):
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else "out of memory"
        return (f"error: out of memory during training ({first}); run.json records the step. Try "
                f"a smaller data.batch_size (now {batch_size}) or trainer.precision=bf16-mixed, "
                "and resume with ckpt_path=auto and the same hydra.run.dir", ExitCode.FAILED)
    if any(words in str(error) for words in _DEAD_PEER) or \
            type(error).__name__ in ("DistBackendError", "DistNetworkError"):
        from zoo.training.compat import DDP_PEER_DIED

        return DDP_PEER_DIED, ExitCode.FAILED
    return None


def _run_dir_ending(error: OSError, run_dir: str) -> tuple[str, ExitCode] | None:
    """The run directory removed or made unwritable while the run wrote into it: not bad input."""
    if not os.path.isdir(os.path.join(run_dir, ".hydra")):  # a checkpoint save may remake it
        return (f"error: the run directory {run_dir} was removed while the run was writing "
                f"into it ({error.strerror or error}): nothing more can be saved; run again",
                ExitCode.FAILED)
    if isinstance(error, PermissionError) and _in_run_dir(error.filename, run_dir):
        return (f"error: cannot write {error.filename} ({error.strerror}): the run directory "
                f"became unwritable mid-run; run.json says how far it got. Make it writable "
                f"and resume with ckpt_path=auto hydra.run.dir={shlex.quote(run_dir)}",
                ExitCode.FAILED)
    return None


def _in_run_dir(path: object, run_dir: str) -> bool:
    """Whether ``path`` (an error's file name) lies in the run directory."""
    if not path:
        return False
    try:
        return os.path.commonpath([os.path.abspath(str(path)), os.path.abspath(run_dir)]) == \
            os.path.abspath(run_dir)
    except ValueError:
        return False
