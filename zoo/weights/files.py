"""Reading weight files from strangers safely: ``torch.load(weights_only=True)``, and errors that
name the file and say what is wrong with it.

:mod:`zoo.weights.pretrained` (``zoo.create(pretrained=...)``, ``model.pretrained=``) and
:mod:`zoo.weights.checkpoint` (resume) read every file through :func:`safe_load`: loading never
runs code from the file, and a file that needs pickled code is refused
(:class:`UnsafeCheckpointError`).
No Lightning here, so that ``import zoo`` stays light.
"""

from __future__ import annotations

import os
import pickle
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, not a checkpoint, or unsafe."""


class UnsafeCheckpointError(CheckpointError):
    """The file asks the unpickler to import or call code: refused, never run."""


def what_is_there(path: Path) -> str:
    """Why ``path`` is not a readable file, in a few words ("is a directory", ...)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as error:  # a parent that is a file, a path too long, no permission
        return f"cannot be reached ({error.strerror})"
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return f"is {kind}, not a file"
    return "is not a regular file"


def is_url(source: Any) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


@contextmanager
def local_copy(source: str | os.PathLike[str]) -> Iterator[Path]:
    """``source`` as a local file: a path as it is, an http(s) URL downloaded into a temporary
    folder that is removed after (Lightning unpickles URLs with ``weights_only=False``: the zoo
    reads them itself, as data)."""
    if not is_url(source):
        yield Path(source)
        return
    from zoo.weights.pretrained import _download  # the one bounded download of the zoo

    with tempfile.TemporaryDirectory(prefix="zoo-download-") as folder:
        local = Path(folder) / (source.split("?")[0].rsplit("/", 1)[-1] or "checkpoint")
        try:
            _download(source, local)
        except (OSError, TimeoutError) as error:  # URLError, HTTPError, socket.timeout
            raise CheckpointError(f"cannot download {source} ({error})") from None
        try:
            yield local
        except CheckpointError as error:  # errors name the URL, not the temporary file
            raise type(error)(str(error).replace(str(local), source)) from None


def safe_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` for files from strangers (paths or http(s) URLs): data only, with errors
    that name the file."""
    if is_url(path):
        with local_copy(path) as local:
            return safe_load(local)
    path = Path(path)
    if not path.is_file():
        what = what_is_there(path)  # checked before opening: reading a FIFO would block
        if what == "does not exist":
            raise CheckpointError(f"checkpoint file not found: {path}")
        raise CheckpointError(f"{path} {what}; give the path of a checkpoint file")
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


class ArchitectureMismatchError(CheckpointError):
    """A checkpoint of another architecture: keys or shapes differ beyond the classifier."""


class PretrainedUnavailableError(CheckpointError):
    """Published weights that are neither in the torch hub cache nor downloadable now."""
