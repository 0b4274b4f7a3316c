"""A run that ends badly ends in one line, with its record saying so (issue 24): out of memory,
a checkpoint folder made read-only mid-run, the run directory deleted mid-run; also the resume
line pasted into a shell, W&B without $HOME, the upload hint after a resume."""

from __future__ import annotations

import json
import shlex

from conftest import run_train
from fault_injection import run_with_faults

TINY = ["model=resnet8", "trainer.max_epochs=2", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "logger=csv"]


def only_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def test_out_of_memory_in_a_step_is_one_line_and_recorded(tmp_path):
    run_dir = tmp_path / "run"
    result = run_with_faults(tmp_path, run_dir, *TINY, faults={"at_call": {
        "spec": "zoo.training.module:ZooModule.training_step", "n": 3, "do": "out_of_memory"}})
    assert result.returncode == 1, result.stderr[-3000:]
    line = only_line(result.stderr)
    assert line.startswith("error: out of memory during training (CUDA out of memory. Tried to")
    assert "data.batch_size (now 32)" in line
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and record["message"].startswith("OutOfMemoryError")


def test_a_checkpoint_folder_made_read_only_mid_run_is_one_line_and_recorded(tmp_path):
    run_dir = tmp_path / "run"
    result = run_with_faults(tmp_path, run_dir, *TINY, faults={"read_only_at_save": 2})
    assert result.returncode == 1, result.stderr[-3000:]
    line = only_line(result.stderr)
    assert line.startswith(f"error: cannot write {run_dir}/checkpoints/last.ckpt (Permission")
    assert "became unwritable mid-run" in line and f"hydra.run.dir={run_dir}" in line
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and "PermissionError" in record["message"]


def test_the_run_directory_deleted_mid_run_is_one_clear_line_not_bad_input(tmp_path):
    run_dir = tmp_path / "run"
    result = run_with_faults(tmp_path, run_dir, *TINY, faults={"at_call": {
        "spec": "zoo.training.module:ZooModule.training_step", "n": 3, "do": "remove_run_dir"}})
    assert result.returncode == 1, result.stderr[-3000:]
    assert only_line(result.stderr).startswith(
        f"error: the run directory {run_dir} was removed while the run was writing into it")


def test_the_resume_line_pastes_into_a_shell_when_the_path_has_spaces(tmp_path):
    from zoo.runs.signals import StopSignals

    stopped = StopSignals()
    stopped.new_run(tmp_path / "my runs" / "checkpoints")
    stopped.received, stopped.phase = "SIGTERM", "training"
    stopped.saved_now = tmp_path / "my runs" / "checkpoints" / "last.ckpt"
    command = stopped.stop_message().split("Resume with: ", 1)[1]
    assert shlex.split(command) == ["python", "train.py", f"ckpt_path={stopped.saved_now}"]


def test_wandb_without_home_prints_none_of_its_service_log(tmp_path):
    run_dir = tmp_path / "run"
    result = run_train(run_dir, *TINY[:-1], "trainer.max_epochs=1", "logger=wandb",
                       env={"HOME": "", "XDG_CACHE_HOME": ""})
    assert " INFO " not in result.stderr and "ERROR" not in result.stderr, result.stderr[-3000:]
    assert list((run_dir / "wandb").glob("offline-run-*"))


def test_the_upload_hint_after_a_resume_syncs_every_offline_session(tmp_path):
    from zoo.runs.train import wandb_sync_command

    wandb_dir = tmp_path / "my run" / "wandb"
    for started in ("20260101_100000", "20260101_110000"):
        (wandb_dir / f"offline-run-{started}-abc123" / "files").mkdir(parents=True)
    newest = wandb_dir / "offline-run-20260101_110000-abc123" / "files"
    assert wandb_sync_command(str(newest)) == f"wandb sync '{wandb_dir}'/offline-run-*"
    (wandb_dir / "offline-run-20260101_100000-abc123" / "files").rmdir()
    (wandb_dir / "offline-run-20260101_100000-abc123").rmdir()
    assert wandb_sync_command(str(newest)) == f"wandb sync '{newest.parent}'"


def test_a_fresh_start_under_slurm_refuses_lightnings_hpc_checkpoints(tmp_path, monkeypatch):
    import pytest

    from zoo.runs.signals import refuse_lightning_hpc_checkpoints

    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"")
    refuse_lightning_hpc_checkpoints(tmp_path)  # outside SLURM Lightning never restores them
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "zoo-train")
    with pytest.raises(ValueError, match="hpc_ckpt_1.ckpt, a checkpoint of Lightning's own"):
        refuse_lightning_hpc_checkpoints(tmp_path)
