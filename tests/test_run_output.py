"""What one train.py run writes in the default outputs/ layout (issue 16, items 2, 3, 5): its
step logging, its train.log, its resume into the same directory and W&B run; and what its
progress bar shows. The run is the session's shared digits run (tests/digits_run.py)."""

from __future__ import annotations

import csv

import pytest
import torch
from digits_run import run_dirs, train_py
from wandb_records import read_run

pytestmark = pytest.mark.timeout(1800)  # two train.py runs; the 2-core machine is shared


def test_short_epochs_log_several_step_rows_without_lightnings_warning(digits_run):
    _, run_dir, result, _ = digits_run
    with open(run_dir / "csv" / "metrics.csv") as file:
        step_rows = [row for row in csv.DictReader(file) if row.get("train/loss_step")]
    assert len(step_rows) >= 3  # 35 batches, interval 35 // 4 = 8: steps 8, 16, 24, 32
    assert "smaller than the logging interval" not in result.stderr


def test_train_log_holds_the_final_report(digits_run):
    _, run_dir, result, _ = digits_run
    text = (run_dir / "train.log").read_text()
    assert "test metrics: " in text and "test/acc=" in text
    assert f"last checkpoint: {run_dir / 'checkpoints' / 'last.ckpt'}" in text
    assert "test metrics: " in result.stdout  # printed on the terminal as before


def test_resume_writes_into_the_same_run_directory_and_wandb_run(digits_run):
    cwd, run_dir, _, _ = digits_run
    first_ids = {p.name.rsplit("-", 1)[-1] for p in (run_dir / "wandb").glob("offline-run-*")}
    assert len(first_ids) == 1
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["wandb_run_id"] in first_ids
    result = train_py(cwd, "trainer.max_epochs=2",
                      f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert run_dirs(cwd) == [run_dir]  # no second run directory
    assert f"writing into {run_dir}" in (run_dir / "train.log").read_text()
    assert "continuing W&B run" in result.stdout + result.stderr
    offline = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    ids = {path.stem.removeprefix("run-") for path in offline}
    assert ids == first_ids  # one W&B run id (offline W&B keeps one folder per session)
    assert {read_run(path)["run"]["name"] for path in offline} == {"resnet8-digits-s5"}
    with open(run_dir / "csv" / "metrics.csv") as file:
        epochs = {row["epoch"] for row in csv.DictReader(file) if row.get("train/loss_epoch")}
    assert epochs == {"0", "1"}  # the first session's rows kept, the second's appended


def test_progress_bar_shows_this_epochs_train_acc():
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import TQDMProgressBar

    from zoo.data import build_datamodule
    from zoo.training.module import ZooModule

    pl.seed_everything(0)  # three distinct epoch accuracies, whatever ran before in the process
    datamodule = build_datamodule({
        "name": "digits", "num_classes": 10, "in_channels": 1, "image_size": 8, "mean": [0.3052],
        "std": [0.3755], "batch_size": 32, "num_workers": 0, "loader": "device", "val_size": 300,
        "seed": 0})
    module = ZooModule({"name": "resnet8", "num_classes": 10, "in_channels": 1}, batch_size=32)
    shown, logged = [], []

    class Spy(pl.Callback):  # after the bar: sees what it drew as the epoch's last line
        def on_train_epoch_end(self, trainer, pl_module):
            shown.append(
                trainer.progress_bar_callback.get_metrics(trainer, pl_module).get("train/acc"))

        def on_validation_epoch_start(self, trainer, pl_module):  # next epoch: the logged value
            if "train/acc" in trainer.callback_metrics:
                logged.append(float(trainer.callback_metrics["train/acc"]))

        def on_train_end(self, trainer, pl_module):
            logged.append(float(trainer.callback_metrics["train/acc"]))

    trainer = pl.Trainer(max_epochs=3, limit_train_batches=6, limit_val_batches=1,
                         accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[TQDMProgressBar(), Spy()])
    trainer.fit(module, datamodule=datamodule)
    assert len(set(logged)) == 3, logged  # the accuracy changes from epoch to epoch
    assert shown == pytest.approx(logged)
