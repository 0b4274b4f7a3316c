"""Checkpoints that are written atomically and read without executing code.

* Writes go to a temporary file in the same directory and are moved into place with
  ``os.replace``: a kill during a save leaves the previous ``last.ckpt`` whole.
* Reads use ``torch.load(weights_only=True)``: a checkpoint is data. A file whose pickle asks for
  code (a ``__reduce__`` that calls ``os.system``, say) is refused, not run. The reader,
  :func:`safe_load`, and its errors live in :mod:`zoo.weights.pretrained`, which needs no
  Lightning (so ``import zoo`` does not import it); they are importable from here as well.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shlex
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from zoo.weights.hparams import check_hyper_parameters
from zoo.weights.pretrained import CheckpointError, safe_load, what_is_there
from zoo.weights.pretrained import UnsafeCheckpointError as UnsafeCheckpointError  # for importers

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
                      search_roots: tuple[str, ...] = ("outputs", "multirun"),
                      run_dir: Path | str | None = None, quiet: bool = False) -> str | None:
    """``None``, an existing file, ``"last"``: the newest ``last.ckpt`` of a run of that name,
    or ``"auto"``: ``<run_dir>/checkpoints/last.ckpt`` if it exists, else None (a fresh start:
    one job script that starts the first time and resumes after every requeue).

    Saves replace ``last.ckpt`` atomically, so the newest one is whole even while its run is
    still writing (it is then that run's latest state, which the log line names).
    """
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "auto":
        last = Path(run_dir) / "checkpoints" / "last.ckpt" if run_dir is not None else None
        if last is None or not last.is_file():
            if last is not None and not quiet:
                log.info("ckpt_path=auto: no checkpoint in %s yet, starting a fresh run",
                         last.parent)
            return None
        return str(last)
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
        if not quiet:
            log.info("ckpt_path=last: resuming from %s (the newest of %d)", newest,
                     len(candidates))
        return str(newest)
    if not Path(ckpt_path).is_file():
        raise CheckpointError(
            f"ckpt_path {ckpt_path} {what_is_there(Path(ckpt_path))}; "
            "give the path of a .ckpt file, ckpt_path=last or ckpt_path=auto"
        )
    return str(ckpt_path)


def check_resume_compatible(ckpt_path: str, model_cfg: dict[str, Any],
                            optim_cfg: dict[str, Any] | None = None,
                            data_name: str | None = None) -> dict:
    """A checkpoint of another network, model options, dataset or optimizer settings gets one
    clear line before anything is built or written (not a 96-line ``state_dict`` traceback).

    Returns the checkpoint (read once: it also names the W&B run to continue)."""
    checkpoint = safe_load(ckpt_path)
    check_hyper_parameters(checkpoint, ckpt_path, required=True)  # one line, not a traceback
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    saved = hparams.get("model") if isinstance(hparams, dict) else None
    if not isinstance(saved, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{ckpt_path} is not a checkpoint of this project (no saved model hyperparameters)"
        )
    for key in ("name", "num_classes", "in_channels"):
        if model_cfg.get(key) is not None and saved.get(key) != model_cfg.get(key):
            raise CheckpointError(
                f"{ckpt_path} holds {saved.get('name')} ({saved.get('num_classes')} classes, "
                f"{saved.get('in_channels')} input channels) but this run builds "
                f"{model_cfg.get('name')} ({model_cfg.get('num_classes')} classes, "
                f"{model_cfg.get('in_channels')} channels): "
                f"resume with model={saved.get('name')} and the same data, or start fresh with "
                "model.pretrained=<checkpoint> to fine-tune"
            )
    _check_same_settings("model", saved, model_cfg, ckpt_path, ignore=("pretrained",))
    dataset = hparams.get("dataset")
    trained_on = dataset.get("name") if isinstance(dataset, dict) else None
    if data_name and trained_on and trained_on != data_name:
        raise CheckpointError(
            f"{ckpt_path} was trained on {trained_on}, this run asks for data={data_name}: resume "
            f"with data={trained_on}, or start a new run from its weights with "
            f"model.pretrained={shlex.quote(str(ckpt_path))} (and no ckpt_path)")
    if optim_cfg is not None:
        _check_same_settings("optim", hparams.get("optim") or {}, optim_cfg, ckpt_path)
    return checkpoint


def _check_same_settings(group: str, saved: dict[str, Any], asked: dict[str, Any],
                         ckpt_path: str, ignore: tuple[str, ...] = ()) -> None:
    """Keys of ``group`` the checkpoint and this run both name must agree: the network's options
    shape its ``state_dict``; Lightning restores the optimizer's state and schedule, so another
    ``optim.lr`` would be recorded but not used."""
    differ = [key for key in saved if key in asked and key not in ignore
              and asked[key] is not None and saved[key] != asked[key]]
    if not differ:
        return
    trained = ", ".join(f"{group}.{key}={_short(saved[key])}" for key in differ)
    now = ", ".join(f"{group}.{key}={_short(asked[key])}" for key in differ)
    raise CheckpointError(
        f"{ckpt_path} was trained with {trained}; this run asks for {now}. Resume with "
        f"{trained} (a checkpoint in its run directory brings its own settings: leave them "
        f"out), or start fresh from its weights with model.pretrained="
        f"{shlex.quote(str(ckpt_path))} (and no ckpt_path)")


def _short(value: Any) -> str:
    text = str(value).replace(" ", "").replace("'", "")
    return text if len(text) <= 60 else text[:57] + "..."
