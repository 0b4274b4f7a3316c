"""Run the real ``train.py`` in a subprocess with faults injected, for the reliability tests.

The subprocess imports the zoo, applies the faults named in ``$ZOO_FAULTS`` (JSON), then runs
``train.py`` as ``__main__`` (Hydra, signal handling and exit codes exactly as on the command
line). Faults:

* ``slow``: ``["module:Class.method", ...]``: each call (outside the sanity check) counts
  itself in ``MARKS/method`` and sleeps ``slow_seconds``: a test waits for the count, then
  sends a real signal while the run is in that phase.
* ``full_disk_at_save``: N: the N-th checkpoint save's writes fail with ``ENOSPC``, as a full
  disk fails them (``zoo.weights.checkpoint._WriteRecorder`` is where the checkpoint IO writes).
* ``fail``: ``["module:Class.method", ...]``: each call raises ``RuntimeError`` (a W&B write
  that fails, say).
* ``at_call``: ``{"spec": "module:Class.method", "n": N, "do": WHAT}``: at the N-th call (sanity
  check included) WHAT happens: ``out_of_memory`` (the call raises torch's
  ``OutOfMemoryError``), ``remove_run_dir`` (the run directory is deleted, then the call goes on).
* ``read_only_at_save``: N: from the N-th checkpoint save on, creating the file fails with
  ``EACCES``, as in a folder made read-only mid-run (root ignores a real ``chmod``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import FAST_OVERRIDES, REPO

RUNNER = r'''
import errno, functools, importlib, json, os, runpy, sys, time
from pathlib import Path

faults = json.loads(os.environ["ZOO_FAULTS"])
marks = Path(os.environ["ZOO_MARKS"])


def patch(spec, make):
    module_name, attribute = spec.split(":")
    owner_name, _, method_name = attribute.rpartition(".")
    owner = importlib.import_module(module_name)
    for part in filter(None, owner_name.split(".")):
        owner = getattr(owner, part)
    original = getattr(owner, method_name)
    setattr(owner, method_name, functools.wraps(original)(make(original, method_name)))


def slow(original, name):
    def call(self, *args, **kwargs):
        trainer = getattr(self, "_trainer", None)
        if not getattr(trainer, "sanity_checking", False):
            mark = marks / name  # holds the number of calls so far
            mark.write_text(str(int(mark.read_text()) + 1 if mark.exists() else 1))
            time.sleep(faults.get("slow_seconds", 0.5))
        return original(self, *args, **kwargs)
    return call


def fail(original, name):
    def call(*args, **kwargs):
        (marks / name).touch()
        raise RuntimeError(f"injected failure in {name}")
    return call


for spec in faults.get("slow", []):
    patch(spec, slow)
for spec in faults.get("fail", []):
    patch(spec, fail)
if faults.get("full_disk_at_save"):
    import zoo.weights.checkpoint as checkpoint

    saves = []
    opened = checkpoint._WriteRecorder.__init__

    def count(self, file):
        saves.append(file)
        opened(self, file)

    def write(self, data):
        if len(saves) >= faults["full_disk_at_save"]:
            self.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise self.error
        return self.file.write(data)

    checkpoint._WriteRecorder.__init__ = count
    checkpoint._WriteRecorder.write = write

if faults.get("at_call"):
    import shutil

    import torch

    at = faults["at_call"]
    calls = []

    def at_call(original, name):
        def call(*args, **kwargs):
            calls.append(name)
            if len(calls) == at["n"] and at["do"] == "out_of_memory":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            if len(calls) == at["n"] and at["do"] == "remove_run_dir":
                given = [a for a in sys.argv if a.startswith("hydra.run.dir=")]
                shutil.rmtree(given[-1].split("=", 1)[1])
            return original(*args, **kwargs)
        return call

    patch(at["spec"], at_call)
if faults.get("read_only_at_save"):
    import zoo.weights.checkpoint as checkpoint

    tries = []
    open_exclusive = checkpoint._open_exclusive

    def read_only(directory, name):
        tries.append(name)
        if len(tries) >= faults["read_only_at_save"]:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(directory / name))
        return open_exclusive(directory, name)

    checkpoint._open_exclusive = read_only

train = os.environ["ZOO_TRAIN_PY"]
sys.argv = [train, *sys.argv[1:]]
runpy.run_path(train, run_name="__main__")
'''


def start_train(tmp_path: Path, run_dir: Path, *overrides: str, faults: dict | None = None,
                fast: bool = True, env: dict | None = None,
                **popen) -> tuple[subprocess.Popen, Path]:
    """Start ``train.py`` with ``faults``; returns the process and the folder of its marks."""
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    runner = tmp_path / "fault_runner.py"
    runner.write_text(RUNNER)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1",
           "ZOO_FAULTS": json.dumps(faults or {}), "ZOO_MARKS": str(marks),
           "ZOO_TRAIN_PY": str(REPO / "train.py"), **(env or {})}
    command = [sys.executable, str(runner), *(FAST_OVERRIDES if fast else []),
               f"hydra.run.dir={run_dir}", *overrides]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, **popen)
    return process, marks


def run_with_faults(tmp_path: Path, run_dir: Path, *overrides: str, faults: dict,
                    timeout: float = 540) -> subprocess.CompletedProcess:
    process, _ = start_train(tmp_path, run_dir, *overrides, faults=faults)
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
