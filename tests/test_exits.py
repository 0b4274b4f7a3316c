"""zoo.runs.exits: one ExitCode for every way a run ends (the codes users' scripts rely on), and
the one function that turns an error into its line and code."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from zoo.callbacks import TrainingDivergedError
from zoo.runs.exits import SIGNAL_EXIT_CODES, ExitCode, ending_of, status_of
from zoo.runs.sweep import STOPS_THE_SWEEP


def test_the_codes_are_those_documented_in_train_py():
    assert {code.name: int(code) for code in ExitCode} == {
        "DONE": 0, "FAILED": 1, "BAD_INPUT": 2, "DIVERGED": 3, "DISK_FULL": 74,
        "SIGHUP": 129, "CTRL_C": 130, "SIGUSR1": 138, "SIGTERM": 143}
    assert SIGNAL_EXIT_CODES == {"SIGTERM": 143, "Ctrl-C": 130, "SIGUSR1": 138, "SIGHUP": 129}
    assert sorted(STOPS_THE_SWEEP) == [129, 130, 138, 143]
    assert [status_of(code) for code in (0, 1, 2, 3, 74, 130, 143, 99)] == [
        "done", "failed", "bad input", "diverged", "disk full", "Ctrl-C", "SIGTERM", "failed"]


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / ".hydra").mkdir()
    return str(tmp_path)


def test_each_known_error_has_its_line_and_code(run_dir, monkeypatch):
    monkeypatch.delenv("ZOO_DEBUG", raising=False)
    full = OSError(errno.ENOSPC, "No space left on device", os.path.join(run_dir, "x"))
    cases = [
        (TrainingDivergedError("loss is nan at step 3"), ExitCode.DIVERGED, "loss is nan"),
        (ValueError("model.depth must be 6n+2"), ExitCode.BAD_INPUT, "error: model.depth"),
        (FileNotFoundError("no such file"), ExitCode.BAD_INPUT, "error: no such file"),
        (full, ExitCode.DISK_FULL, "no space left on the device holding"),
        (torch.OutOfMemoryError("CUDA out of memory"), ExitCode.FAILED, "smaller data.batch_size"),
        (RuntimeError("Connection closed by peer"), ExitCode.FAILED, "another DDP process"),
        (PermissionError(errno.EACCES, "Permission denied", os.path.join(run_dir, "run.json")),
         ExitCode.FAILED, "became unwritable mid-run"),
    ]
    for error, code, words in cases:
        line, got = ending_of(error, run_dir, batch_size=128)
        assert got == code and words in line, (error, line)


def test_a_bug_keeps_its_traceback_and_zoo_debug_shows_the_inputs(run_dir, monkeypatch):
    assert ending_of(RuntimeError("index out of range"), run_dir) is None
    assert ending_of(KeyError("x"), run_dir) is None
    monkeypatch.setenv("ZOO_DEBUG", "1")
    assert ending_of(ValueError("bad"), run_dir) is None


def test_a_run_directory_removed_mid_run_is_a_failure_not_bad_input(tmp_path):
    line, code = ending_of(FileNotFoundError(errno.ENOENT, "gone"), str(tmp_path / "deleted"))
    assert code == ExitCode.FAILED and "was removed while the run was writing" in line
