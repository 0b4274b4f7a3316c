"""The real entry point, end to end on the real (bundled) digits dataset."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import run_train
from wandb_records import read_run, run_file


def epoch_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    return [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """plain20 and resnet20, 4 epochs each on digits, through train.py."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for model in ("plain20", "resnet20"):
        run_dir = root / model
        result = run_train(run_dir, f"model={model}", "trainer.max_epochs=4", "seed=3")
        runs[model] = (run_dir, result)
    return runs


@pytest.mark.parametrize("model", ["plain20", "resnet20"])
def test_training_lowers_the_loss_and_leaves_checkpoint_and_wandb_run(trained_runs, model):
    run_dir, result = trained_runs[model]
    losses = epoch_losses(run_dir)
    assert len(losses) == 4
    assert losses[-1] < 0.7 * losses[0], losses
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert "test/acc=" in result.stdout
    assert "wandb sync" in result.stdout
    run_file(run_dir)  # asserts an offline run exists


def test_wandb_offline_run_holds_config_metrics_and_summary(trained_runs):
    run_dir, _ = trained_runs["resnet20"]
    run = read_run(run_file(run_dir))
    assert run["run"]["name"] == "resnet20-digits-s3"
    assert "family:cifar_resnet" in run["run"]["tags"] and "skip:add" in run["run"]["tags"]
    assert run["config"]["model"]["name"] == "resnet20"
    assert run["config"]["data"]["name"] == "digits"
    assert run["config"]["optim"]["lr"] == 0.1
    logged = set().union(*run["history"])
    assert {"train/loss_step", "val/acc", "val/loss", "test/acc"} <= logged
    # 0.27M; one input channel, not 3
    assert run["summary"]["parameters"] == 269_722 - 2 * 16 * 3 * 3
    assert 0.0 <= run["summary"]["best_val_acc"] <= 1.0
    assert run["summary"]["test_acc"] > 0.5  # far above chance (0.1) after 4 epochs


def test_checkpoint_round_trip_gives_identical_logits(trained_runs):
    from zoo.training.module import ZooModule

    run_dir, _ = trained_runs["resnet20"]
    path = run_dir / "checkpoints" / "last.ckpt"
    module = ZooModule.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
    reference = ZooModule(**module.hparams).eval()
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    reference.load_state_dict(state)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(module(x), reference(x))
    assert module.hparams.model["name"] == "resnet20"


def test_resume_continues_from_the_saved_step(trained_runs, tmp_path):
    run_dir, _ = trained_runs["plain20"]
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    steps_per_epoch = saved["global_step"] // 4
    resumed = tmp_path / "resumed"
    run_train(resumed, "model=plain20", "trainer.max_epochs=5", "seed=3", f"ckpt_path={last}")
    after = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert after["epoch"] == 4
    assert after["global_step"] == saved["global_step"] + steps_per_epoch
    assert len(epoch_losses(resumed)) == 1  # only the fifth epoch was trained


def test_unknown_model_gets_one_line_listing_valid_names(tmp_path):
    result = run_train(tmp_path / "bad", "model.name=resnet21", check=False)
    assert result.returncode == 2
    assert "6n+2" in result.stderr and "Traceback" not in result.stderr


def test_unknown_model_config_is_refused_by_hydra(tmp_path):
    result = run_train(tmp_path / "bad", "model=resnet_does_not_exist", check=False)
    assert result.returncode != 0
    assert "resnet20" in result.stderr  # Hydra lists the available options


def test_typo_in_override_key_gets_hydra_error_not_a_traceback_wall(tmp_path):
    result = run_train(tmp_path / "bad", "trainer.max_epoch=1", check=False)
    assert result.returncode != 0
    assert "max_epoch" in result.stderr
    assert result.stderr.count("File \"") < 3


def test_multirun_sweep_gives_each_job_its_own_wandb_run_in_one_group(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import FAST_OVERRIDES, REPO

    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", "model=plain8,resnet8", *FAST_OVERRIDES,
         "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
         "trainer.limit_test_batches=1", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {read_run(run_file(job))["run"]["name"]: read_run(run_file(job))["run"]
            for job in sweep.iterdir() if job.is_dir() and job.name[0].isdigit()}
    assert set(runs) == {"plain8-digits-s42", "resnet8-digits-s42"}
    groups = {run["group"] for run in runs.values()}
    assert len(groups) == 1 and groups.pop().startswith("sweep-")


def test_evaluate_only_with_pretrained_checkpoint_reproduces_the_test_metrics(
        trained_runs, tmp_path):
    run_dir, result = trained_runs["resnet20"]
    best = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    evaluated = run_train(tmp_path / "eval", "model=resnet20", "seed=3", "trainer.max_epochs=0",
                          f"model.pretrained={best}", "logger=none")
    metrics_line = lambda text: next(  # noqa: E731
        line for line in text.splitlines() if line.startswith("test metrics:"))
    assert metrics_line(evaluated.stdout) == metrics_line(result.stdout)
    output = evaluated.stdout + evaluated.stderr
    assert f"evaluating the weights of resnet20: {best}" in output
    # evaluate only: no training summary, no fit, no checkpoints, no fit time
    assert "Trainable params" not in output and "Trainer.fit" not in output
    assert "fit time" not in output and not (tmp_path / "eval" / "checkpoints").exists()
    record = json.loads((tmp_path / "eval" / "run.json").read_text())
    assert record["status"] == "done" and record["global_step"] == 0


def test_evaluate_only_refuses_a_resume_checkpoint_in_one_line(trained_runs, tmp_path):
    run_dir, _ = trained_runs["resnet20"]
    before = (run_dir / "run.json").read_text()
    last = run_dir / "checkpoints" / "last.ckpt"
    refused = run_train(tmp_path / "eval", "model=resnet20", "trainer.max_epochs=0",
                        f"ckpt_path={last}", "logger=none", check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: trainer.max_epochs=0 evaluates without training: give the checkpoint as "
        f"model.pretrained={last} (ckpt_path resumes a run, in its directory)")
    assert (run_dir / "run.json").read_text() == before  # the trained run's record is untouched


def test_the_run_prints_where_its_last_and_best_checkpoints_are(trained_runs):
    run_dir, result = trained_runs["plain20"]
    assert f"last checkpoint: {run_dir / 'checkpoints' / 'last.ckpt'}" in result.stdout
    assert f"best checkpoint: {run_dir / 'checkpoints'}" in result.stdout
