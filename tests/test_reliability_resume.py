"""Resume by a checkpoint path alone, and resumes that must change nothing (issues 24 and 25).

A run's settings come back from its run directory; the command line may change how long and how
it trains and logs, not what is trained; a refused resume leaves every file of the run as it
was; a resumed run goes on writing ``last.ckpt``. Also: a sweep runs every job it can.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST_OVERRIDES, REPO, run_train

from zoo.weights.checkpoint import safe_load

# a non-default model option and dataset: the resume must bring them back by itself
TRAINED = ["model=resnet8", "model.widths=[4,8,16]", "trainer.max_epochs=1", "logger=csv",
           "trainer.limit_train_batches=4", "trainer.limit_val_batches=2",
           "trainer.limit_test_batches=2"]


def train_py(cwd: Path, *arguments: str) -> subprocess.CompletedProcess:
    """``python train.py ARGUMENTS`` as a user types it: no other override."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *arguments], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    run_train(run_dir, *TRAINED, "ckpt_path=auto")  # auto, nothing saved yet: a fresh start
    return run_dir


def files_of(run_dir: Path) -> dict[str, bytes]:
    return {str(path.relative_to(run_dir)): path.read_bytes()
            for path in sorted(run_dir.rglob("*")) if path.is_file() and path.suffix != ".log"}


def test_a_checkpoint_path_alone_resumes_a_non_default_run_in_its_own_directory(
        finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = json.loads((run_dir / "run.json").read_text())
    last = run_dir / "checkpoints" / "last.ckpt"

    result = train_py(tmp_path, f"ckpt_path={last}", "trainer.max_epochs=2",
                      "callbacks.progress_bar=none")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert not (tmp_path / "outputs").exists()  # no second run directory
    record = json.loads((run_dir / "run.json").read_text())
    assert record["model"]["widths"] == [4, 8, 16] and record["data"]["name"] == "digits"
    assert record["status"] == "done" and record["global_step"] == 2 * before["global_step"]
    # the resumed run goes on replacing last.ckpt (it wrote last-v1.ckpt, leaving last.ckpt old)
    assert safe_load(last)["global_step"] == record["global_step"]
    assert not list(run_dir.glob("checkpoints/last-v*"))
    assert "trainer.max_epochs=2" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "model.widths=[4,8,16]" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    with open(run_dir / "csv" / "metrics.csv") as file:
        val_epochs = [row["epoch"] for row in csv.DictReader(file) if row.get("val/loss")]
    assert val_epochs == ["0", "1"]
    # said once, not again by Lightning; no "exists and is not empty" warning
    assert log.count(f"resuming {last}") == 1 and "Restoring states from the checkpoint path at " \
        f"{last}" not in log and "exists and is not empty" not in log
    assert "a new run directory" not in log


@pytest.mark.parametrize(("override", "named"), [
    ("model.widths=[8,8,16]", "model.widths=[8, 8, 16] cannot change on resume"),
    ("data=fashion_mnist", "data=fashion_mnist cannot change on resume"),
    ("optim.lr=0.5", "optim.lr=0.5 cannot change on resume (the optimizer and its schedule"),
    ("data.batch_size=16", "data.batch_size=16 cannot change on resume"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 evaluates without training"),
])
def test_a_refused_resume_is_one_line_and_leaves_the_finished_run_as_it_was(
        finished_run, tmp_path, override, named):
    before = files_of(finished_run)
    last = finished_run / "checkpoints" / "last.ckpt"
    result = train_py(tmp_path, f"ckpt_path={last}", override)
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip()
    assert line.startswith(f"error: {named}") and "\n" not in line, line
    assert f"model.pretrained={last}" in line
    assert files_of(finished_run) == before  # run.json, .hydra/*, checkpoints, metrics


def test_repeating_the_runs_own_settings_on_resume_is_allowed(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    result = run_train(run_dir, *TRAINED, "trainer.max_epochs=2",
                       f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert "test/acc=" in result.stdout


def test_a_checkpoint_outside_its_run_directory_is_checked_option_by_option(
        finished_run, tmp_path):
    copied = tmp_path / "elsewhere" / "model.ckpt"
    copied.parent.mkdir()
    shutil.copy(finished_run / "checkpoints" / "last.ckpt", copied)

    # another model option: one line, not a 96-line state_dict traceback
    result = run_train(tmp_path / "a", "model=resnet8", f"ckpt_path={copied}", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(
        f"error: {copied} was trained with model.widths=[4,8,16]; this run asks for "
        "model.widths=[16,32,64]")
    # another dataset (same classes and channels): one line, nothing trained
    result = run_train(tmp_path / "b", "model=resnet8", "model.widths=[4,8,16]",
                       "data=fashion_mnist", f"ckpt_path={copied}", check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().startswith(
        f"error: {copied} was trained on digits, this run asks for data=fashion_mnist")
    assert not (tmp_path / "a" / "run.json").exists() and not (tmp_path / "b" / "run.json").exists()


def test_a_sweep_runs_every_job_it_can_and_ends_with_a_summary(tmp_path):
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", *FAST_OVERRIDES, *TRAINED[:1],
         *TRAINED[2:], "optim.lr=0.1,nan,0.02", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True,
        text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]  # the first failed job's code
    assert "Traceback" not in result.stderr
    summary = result.stdout[result.stdout.index("sweep: 2 of 3 jobs done"):].splitlines()
    assert summary[2].split() == ["0", "done", "0", "0-resnet8-digits-s42", "optim.lr=0.1"]
    assert summary[3].split() == ["1", "bad", "input", "2", "1-resnet8-digits-s42", "optim.lr=nan"]
    assert summary[4].split() == ["2", "done", "0", "2-resnet8-digits-s42", "optim.lr=0.02"]
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: 1 of 3 jobs of the sweep did not finish (1 bad input)")
    for job in ("0-resnet8-digits-s42", "2-resnet8-digits-s42"):
        assert json.loads((sweep / job / "run.json").read_text())["status"] == "done"


def test_a_resume_drops_the_metrics_rows_logged_after_its_checkpoint(tmp_path):
    """After a SIGKILL the CSV can hold steps the checkpoint does not: the resumed run logs them
    again, so the earlier rows of those steps go (they would appear twice)."""
    from zoo.runs.resume import ContinuingCSVLogger

    metrics = tmp_path / "csv" / "metrics.csv"
    metrics.parent.mkdir()
    metrics.write_text("epoch,step,train/loss_step\n" + "".join(
        f"0,{step},{1.0 / (step + 1)}\n" for step in range(11)))
    logger = ContinuingCSVLogger(save_dir=str(tmp_path), name="csv", version="", resume_step=6)
    logger.log_metrics({"train/loss_step": 0.5, "epoch": 0}, step=7)
    logger.save()
    with open(metrics) as file:
        steps = [int(row["step"]) for row in csv.DictReader(file)]
    assert steps == [0, 1, 2, 3, 4, 5, 6, 7]


def test_ckpt_path_auto_without_a_run_directory_given_starts_fresh_in_a_new_one(tmp_path):
    from zoo.runs.resume import resume_dir

    assert resume_dir("auto", "resnet8-digits-s42", "outputs/new") == "outputs/new"
    assert resume_dir(None, "resnet8-digits-s42", "outputs/new") == "outputs/new"


def test_a_run_folder_whose_config_asks_for_a_resolver_is_refused(tmp_path):
    from omegaconf import OmegaConf

    from zoo.runs.resume import ResumeRefused, refuse_resolvers

    refuse_resolvers(OmegaConf.create({"model": {"num_classes": "${data.num_classes}"}}), tmp_path)
    with pytest.raises(ResumeRefused, match="asks for a resolver"):
        refuse_resolvers(OmegaConf.create({"tags": ["${oc.env:HOME}"]}), tmp_path)
