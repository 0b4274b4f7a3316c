"""SIGTERM and Ctrl-C in every phase of a run: real signals sent to a real ``train.py`` process.

Each test slows one phase down (``fault_injection``: a hook that sleeps), waits until the run is
in it, and sends the signal. What must hold whatever the phase: exit code 143 for SIGTERM (130 for
Ctrl-C), one line that says what was saved and how to resume, and never a claim of a save that
did not happen.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from conftest import run_train
from fault_injection import start_train

from zoo.checkpoint import safe_load

TINY = ["model=resnet8", "trainer.max_epochs=1", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=3", "trainer.limit_test_batches=3"]


def signal_when_marked(tmp_path: Path, run_dir: Path, slow: str, signals: list[int],
                       *overrides: str, faults: dict | None = None, calls: int = 1):
    """Run train.py with ``slow`` slowed down; at its ``calls``-th call send ``signals``.

    Returns (exit code, stdout, stderr)."""
    process, marks = start_train(tmp_path, run_dir, *TINY, *overrides,
                                 faults={"slow": [slow], **(faults or {})})
    mark = marks / slow.rpartition(".")[2].rpartition(":")[2]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if mark.exists() and mark.read_text() and int(mark.read_text()) >= calls:
            break
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    for signum in signals:
        process.send_signal(signum)
        time.sleep(0.2)
    stdout, stderr = process.communicate(timeout=240)
    return process.returncode, stdout, stderr


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_sigterm_during_test_exits_143_closes_wandb_and_the_resume_only_tests(tmp_path):
    from wandb_records import read_run, run_file

    run_dir = tmp_path / "run"
    code, stdout, stderr = signal_when_marked(tmp_path, run_dir, "zoo.module:ZooModule.test_step",
                                              [signal.SIGTERM], "logger=[wandb,csv]")
    assert code == 143, stderr[-2000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    line = last_line(stderr)
    assert line.startswith("stopped by SIGTERM during testing") and f"ckpt_path={last}" in line
    assert "test metrics" not in stdout  # the test did not finish, and nothing says it did
    assert read_run(run_file(run_dir))["exit_code"] == 143  # the W&B run is closed, as stopped
    trained_steps = safe_load(last)["global_step"]

    resumed = run_train(tmp_path / "resumed", *TINY, "logger=csv", f"ckpt_path={last}")
    assert "test/acc=" in resumed.stdout
    assert not (tmp_path / "resumed" / "checkpoints" / "last.ckpt").exists()  # no step trained
    assert trained_steps == 4


def test_sigterm_during_validation_at_epoch_0_saves_and_says_where(tmp_path):
    run_dir = tmp_path / "run"
    code, _, stderr = signal_when_marked(tmp_path, run_dir, "zoo.module:ZooModule.validation_step",
                                         [signal.SIGTERM], "logger=none", "trainer.max_epochs=3")
    assert code == 143, stderr[-2000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    line = last_line(stderr)
    assert line.startswith("stopped by SIGTERM during validation; progress saved in ")
    assert f"ckpt_path={last}" in line and " in ." not in line
    saved = safe_load(last)
    assert (saved["epoch"], saved["global_step"]) == (0, 4)  # epoch 0's training steps are kept


def test_sigterm_during_set_up_says_nothing_was_saved(tmp_path):
    run_dir = tmp_path / "run"
    code, _, stderr = signal_when_marked(tmp_path, run_dir, "zoo.data.module:ZooDataModule.setup",
                                         [signal.SIGTERM], "logger=[wandb,csv]")
    assert code == 143, stderr[-2000:]
    assert last_line(stderr) == ("stopped by SIGTERM during set-up, before any checkpoint was "
                                 "saved: nothing to resume, run the same command again")
    assert "Traceback" not in stderr
    assert not (run_dir / "checkpoints").exists()


def test_double_ctrl_c_still_saves_and_prints_the_resume_line(tmp_path):
    run_dir = tmp_path / "run"
    code, _, stderr = signal_when_marked(tmp_path, run_dir, "zoo.module:ZooModule.training_step",
                                         [signal.SIGINT, signal.SIGINT], "logger=none",
                                         "trainer.max_epochs=3", faults={"slow_seconds": 1.0},
                                         calls=2)
    assert code == 130, stderr[-2000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    line = last_line(stderr)
    assert line.startswith("stopped by Ctrl-C during training; progress saved in ")
    assert f"ckpt_path={last}" in line
    assert safe_load(last)["global_step"] >= 1


def test_sigterm_while_finishing_lets_the_run_complete_then_exits_143(tmp_path):
    run_dir = tmp_path / "run"
    code, stdout, stderr = signal_when_marked(tmp_path, run_dir, "zoo.run:report_paths",
                                              [signal.SIGTERM], "logger=csv")
    assert code == 143, stderr[-2000:]
    assert "test metrics: test/acc=" in stdout
    assert last_line(stderr).startswith(
        "stopped by SIGTERM during finishing: the run had finished testing")
