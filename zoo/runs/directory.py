"""Run directories: unique per launch, and checked before Hydra writes into them.

* ``${launch_id:}`` (in ``configs/train.yaml``'s ``hydra.run.dir`` and ``hydra.sweep.dir``): six
  hex digits, drawn at random once per process, so that two runs launched in the same second
  (a SLURM array, a parallel launcher) never share a directory, where the old ``HH-MM-SS-name``
  made them overwrite each other's checkpoints. The processes of one multi-process launch
  (``srun`` with several tasks, ``torchrun``) derive it from their launcher's ids instead, so
  that they agree on one directory as before (Lightning's own DDP launcher passes the directory
  to its workers). A finer timestamp would break that agreement, so the time stays in seconds.
* :class:`RunDirectoryCheck`, a Hydra callback: a run directory that cannot be written (a
  read-only disk, ``/proc``, a full disk) gets one line and exit code 2 (74 when the disk is
  full) instead of Hydra's traceback from its own ``mkdir``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from zoo.runs.exits import ExitCode, disk_full_line


def _launch_id() -> str:
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    if slurm_tasks > 1 and os.environ.get("SLURM_JOB_ID"):
        shared = f"slurm:{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '')}"
    elif os.environ.get("TORCHELASTIC_RUN_ID"):  # torchrun's workers are its children
        shared = (f"torchrun:{os.environ['TORCHELASTIC_RUN_ID']}:{os.getppid()}:"
                  f"{os.environ.get('MASTER_PORT')}")
    else:
        return secrets.token_hex(3)
    return hashlib.sha256(shared.encode()).hexdigest()[:6]


LAUNCH_ID = _launch_id()


def register_resolvers() -> None:
    """``${launch_id:}`` for the run directory patterns; call before Hydra composes the config."""
    if not OmegaConf.has_resolver("launch_id"):
        OmegaConf.register_new_resolver("launch_id", lambda: LAUNCH_ID)


def check_writable(directory: Path) -> None:
    """Create ``directory`` and write a file in it, or exit with one line saying what to do."""
    probe = directory / f".write-check-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            print(disk_full_line(directory, "creating the run directory"), file=sys.stderr,
                  flush=True)
            sys.exit(ExitCode.DISK_FULL)
        print(f"error: cannot write the run directory {directory} ({error.strerror}); set "
              "hydra.run.dir= (or hydra.sweep.dir= for -m) to a writable directory",
              file=sys.stderr, flush=True)
        sys.exit(ExitCode.BAD_INPUT)


class RunDirectoryCheck(Callback):
    """Hydra callback: check the run (or sweep) directory before Hydra creates and writes it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_writable(Path(str(config.hydra.run.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_writable(Path(str(config.hydra.sweep.dir)))
