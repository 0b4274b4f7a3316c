"""SIGTERM and Ctrl-C in every phase of a run: real signals sent to a real ``train.py`` process.

Each test slows one phase down (``fault_injection``: a hook that sleeps), waits until the run is
in it, and sends the signal. What must hold whatever the phase: exit code 143 for SIGTERM (130 for
Ctrl-C), one line that says what was saved and how to resume, and never a claim of a save that
did not happen.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_train
from fault_injection import start_train

from zoo.weights.checkpoint import safe_load

# the step functions a test marks and signals in (module:qualname)
STEP = "zoo.training.module:ZooModule."

TINY = ["model=resnet8", "trainer.max_epochs=1", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=3", "trainer.limit_test_batches=3"]


def signal_when_marked(tmp_path: Path, run_dir: Path, slow: str, signals: list[int],
                       *overrides: str, faults: dict | None = None, calls: int = 1,
                       env: dict | None = None):
    """Run train.py with ``slow`` slowed down; at its ``calls``-th call send ``signals``.

    Returns (exit code, stdout, stderr)."""
    mark = tmp_path / "marks" / slow.rpartition(".")[2].rpartition(":")[2]
    mark.unlink(missing_ok=True)  # count this launch's calls only
    process, marks = start_train(tmp_path, run_dir, *TINY, *overrides,
                                 faults={"slow": [slow], **(faults or {})}, env=env)
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
    code, stdout, stderr = signal_when_marked(tmp_path, run_dir, STEP + "test_step",
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
    code, _, stderr = signal_when_marked(tmp_path, run_dir, STEP + "validation_step",
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
    code, _, stderr = signal_when_marked(tmp_path, run_dir, STEP + "training_step",
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
    code, stdout, stderr = signal_when_marked(tmp_path, run_dir, "zoo.runs.train:report_paths",
                                              [signal.SIGTERM], "logger=csv")
    assert code == 143, stderr[-2000:]
    assert "test metrics: test/acc=" in stdout
    assert last_line(stderr).startswith(
        "stopped by SIGTERM during finishing: the run had finished testing")


# ------------------------------------------------------------------ SLURM, SIGUSR1, SIGHUP


def fake_slurm(tmp_path: Path) -> tuple[dict, Path]:
    """The environment of a SLURM batch job (one task) with a stub ``scontrol`` on PATH that
    writes its arguments to a file (returned)."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    calls = tmp_path / "scontrol.calls"
    scontrol = stubs / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    return {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "zoo-train", "SLURM_NTASKS": "1",
            "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
            "PATH": f"{stubs}:{os.environ['PATH']}"}, calls


def test_the_sbatch_script_runs_train_py_with_ckpt_path_auto_in_a_directory_per_job(tmp_path):
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "python").write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "args"}\n')
    (stubs / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NAME": "zoo-train", "SLURM_SUBMIT_DIR": str(tmp_path)}
    script = Path(__file__).resolve().parents[1] / "scripts" / "slurm" / "train.sbatch"
    subprocess.run(["bash", str(script), "model=resnet8", "data=digits"], env=env, check=True)
    assert (tmp_path / "args").read_text().split() == [
        "train.py", "model=resnet8", "data=digits", "ckpt_path=auto",
        "hydra.run.dir=outputs/slurm/zoo-train-4242"]
    assert "#SBATCH --signal=B:USR1@" in script.read_text()
    assert "#SBATCH --requeue" in script.read_text()


@pytest.mark.slow
def test_a_slurm_job_stopped_by_sigusr1_twice_ends_as_one_run_with_one_checkpoint_lineage(
        tmp_path):
    """The job command of scripts/slurm/train.sbatch, launched three times: SIGUSR1 in the first
    two (saved, requeued through scontrol, exit 138), the third completes. One run directory, one
    last.ckpt, no Lightning hpc_ckpt, no step twice in metrics.csv."""
    env, scontrol_calls = fake_slurm(tmp_path)
    run_dir = tmp_path / "outputs" / "slurm" / "zoo-train-4242"
    job = ["logger=csv", "trainer.max_epochs=3", "ckpt_path=auto"]  # 4 steps per epoch (TINY)
    outputs = []
    for _ in range(2):
        code, stdout, stderr = signal_when_marked(
            tmp_path, run_dir, STEP + "training_step", [signal.SIGUSR1], *job,
            env=env, calls=2)
        assert code == 138, stderr[-2000:]
        assert re.match(r"stopped by SIGUSR1 during (training|validation); progress saved in ",
                        last_line(stderr))
        assert last_line(stderr).endswith(
            "SLURM job 4242 requeued: its next start resumes (ckpt_path=auto)")
        assert "Received SIGTERM" not in stderr
        outputs.append(stdout + stderr)
    assert "ckpt_path=auto: no checkpoint in" in outputs[0] and "resuming" not in outputs[0]
    assert f"resuming {run_dir}/checkpoints/last.ckpt" in outputs[1]
    assert scontrol_calls.read_text().splitlines() == ["requeue 4242", "requeue 4242"]
    stopped_at = safe_load(run_dir / "checkpoints" / "last.ckpt")["global_step"]
    assert 2 <= stopped_at < 12

    process, _ = start_train(tmp_path, run_dir, *TINY, *job, env=env)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    assert scontrol_calls.read_text().count("requeue") == 2  # a finished job is not requeued

    assert [p.parent for p in tmp_path.rglob("run.json")] == [run_dir]
    assert not list(tmp_path.rglob("hpc_ckpt*")) and not list(tmp_path.rglob("last-v*"))
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names[-1] == "last.ckpt" and all(n.startswith("best-") for n in names[:-1])
    assert safe_load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 12
    record = json.loads((run_dir / "run.json").read_text())
    assert (record["status"], record["global_step"]) == ("done", 12)
    with open(run_dir / "csv" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    train_steps = [row["step"] for row in rows if row.get("train/loss_step")]
    val_epochs = [row["epoch"] for row in rows if row.get("val/loss")]
    assert len(train_steps) == len(set(train_steps)) and len(val_epochs) == len(set(val_epochs))
    # (an epoch whose validation a signal cut short is not validated again on resume)
    assert max(map(int, val_epochs)) == 2 and max(map(int, train_steps)) >= 10


def test_sighup_outside_slurm_saves_records_and_exits_129(tmp_path):
    run_dir = tmp_path / "run"
    code, _, stderr = signal_when_marked(tmp_path, run_dir, STEP + "training_step",
                                         [signal.SIGHUP], "logger=csv", "trainer.max_epochs=3",
                                         calls=2)
    assert code == 129, stderr[-2000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last_line(stderr) == ("stopped by SIGHUP during training; progress saved in "
                                 f"{last}. Resume with: python train.py ckpt_path={last}")
    assert safe_load(last)["global_step"] >= 2
    assert json.loads((run_dir / "run.json").read_text())["status"] == "preempted"
