"""Run directories: unique per launch, and checked before Hydra writes into them.

* ``${launch_id:}`` (in ``configs/train.yaml``'s ``hydra.run.dir`` and ``hydra.sweep.dir``): four
  random hex digits drawn once per process. With the microseconds of ``${now:}``, two runs
  launched at once (a SLURM array, a parallel launcher) never share a directory, where the old
  ``HH-MM-SS-name`` made them overwrite each other's checkpoints.
* :class:`RunDirectoryCheck`, a Hydra callback: a run directory that cannot be written (a
  read-only disk, ``/proc``, a full disk) gets one line and exit code 2 (74 when the disk is
  full) instead of Hydra's traceback from its own ``mkdir``.
"""

from __future__ import annotations

import errno
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

LAUNCH_ID = secrets.token_hex(2)  # one per process: DDP workers get the directory by override
DISK_FULL_EXIT_CODE = 74  # sysexits.h EX_IOERR; used for "no space left on device" only
BAD_INPUT_EXIT_CODE = 2


def register_resolvers() -> None:
    """``${launch_id:}`` for the run directory patterns; call before Hydra composes the config."""
    if not OmegaConf.has_resolver("launch_id"):
        OmegaConf.register_new_resolver("launch_id", lambda: LAUNCH_ID)


def disk_full_line(path: Any, what: str) -> str:
    return (f"error: no space left on the device holding {path} ({what}); free some space or set "
            "hydra.run.dir= on a disk with room, then resume with ckpt_path=<run dir>/checkpoints/"
            "last.ckpt (checkpoints already saved are whole)")


def check_writable(directory: Path) -> None:
    """Create ``directory`` and write a file in it, or exit with one line saying what to do."""
    probe = directory / f".write-check-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            print(disk_full_line(directory, "creating the run directory"), file=sys.stderr, flush=True)
            sys.exit(DISK_FULL_EXIT_CODE)
        print(f"error: cannot write the run directory {directory} ({error.strerror}); set "
              "hydra.run.dir= (or hydra.sweep.dir= for -m) to a writable directory",
              file=sys.stderr, flush=True)
        sys.exit(BAD_INPUT_EXIT_CODE)


class RunDirectoryCheck(Callback):
    """Hydra callback: check the run (or sweep) directory before Hydra creates and writes it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_writable(Path(str(config.hydra.run.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_writable(Path(str(config.hydra.sweep.dir)))
