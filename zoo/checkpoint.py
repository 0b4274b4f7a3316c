"""Checkpoints that are written atomically and read without executing code.

* Writes go to a temporary file in the same directory and are moved into place with
  ``os.replace``: a kill during a save leaves the previous ``last.ckpt`` whole.
* Reads use ``torch.load(weights_only=True)``: a checkpoint is data. A file whose pickle asks for
  code (a ``__reduce__`` that calls ``os.system``, say) is refused, not run.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, not a checkpoint, or unsafe."""


class UnsafeCheckpointError(CheckpointError):
    """The file asks the unpickler to import or call code: refused, never run."""


def safe_load(path: str | Path) -> Any:
    """``torch.load`` for files from strangers: data only, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found or "global" in str(error).lower():
            what = f" ({found.group(1)})" if found else ""
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it needs pickled code{what}, and loading only "
                "accepts tensors and plain containers (weights_only=True). If you trust the "
                "file, re-save just its weights: torch.save(state_dict, 'weights.pth')."
            ) from None
        raise CheckpointError(f"cannot read {path}: not a PyTorch checkpoint ({error})") from None
    except Exception as error:  # noqa: BLE001 - garbage fails anywhere in the unpickler
        raise CheckpointError(
            f"cannot read {path}: truncated or not a PyTorch checkpoint "
            f"({type(error).__name__}: {str(error)[:200]})"
        ) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic saves and data-only loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = safe_load(path)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise CheckpointError(f"{path} is not a Lightning checkpoint of this project (no 'state_dict')")
        return checkpoint


def resolve_ckpt_path(ckpt_path: str | None, run_name: str, search_roots: tuple[str, ...] = ("outputs", "multirun")) -> str | None:
    """``None``, an existing file, or ``"last"``: the newest ``last.ckpt`` of a run of that name."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        candidates = [
            p for root in search_roots if Path(root).is_dir()
            for p in Path(root).glob(f"**/*{run_name}/checkpoints/last.ckpt")
        ]
        if not candidates:
            raise CheckpointError(
                f"ckpt_path=last: no last.ckpt of a run named {run_name!r} under {', '.join(search_roots)}/; "
                "give the checkpoint's path instead"
            )
        return str(max(candidates, key=lambda p: p.stat().st_mtime))
    if not Path(ckpt_path).is_file():
        raise CheckpointError(f"ckpt_path {ckpt_path} does not exist; give the path of a .ckpt file or ckpt_path=last")
    return str(ckpt_path)


class Preempted(RuntimeError):
    """The run received SIGTERM (or Ctrl-C) and saved a checkpoint to resume from."""

    def __init__(self, checkpoint_path: Path) -> None:
        super().__init__(
            f"stopped by a signal; progress saved in {checkpoint_path}. "
            f"Resume with: python train.py ... ckpt_path={checkpoint_path}"
        )
        self.checkpoint_path = checkpoint_path


class PreemptionCheckpoint(Callback):
    """On SIGTERM (SLURM pre-emption, spot instances, ``kill``) or Ctrl-C: save ``last.ckpt`` mid-epoch.

    Lightning turns SIGTERM into a ``SIGTERMException`` at the next step boundary; this callback
    saves the state at that boundary, so a resumed run loses nothing. Other exceptions (a diverged
    run, a bug) save nothing: the last good checkpoint must not be replaced by a broken state.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self.saved_path: Path | None = None

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        if not trainer.training:
            return
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path)
        self.saved_path = path
