"""zoo.training.compat: each private Lightning / W&B attribute the zoo relies on still works."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.demos.boring_classes import BoringModel
from torch import nn

from zoo.training.compat import (
    attached_trainer,
    checkpoint_may_save_at_step,
    reset_train_dataloader,
    wandb_run_is_offline,
)


def _trainer(tmp_path) -> pl.Trainer:
    return pl.Trainer(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2,
                      limit_val_batches=0, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)


class LoaderDroppingModel(BoringModel):
    """Asks for the step count (which builds the train loader), then drops the loader."""

    dropped: bool | None = None

    def configure_optimizers(self):
        assert self.trainer.estimated_stepping_batches == 2
        self.dropped = reset_train_dataloader(self.trainer)
        return super().configure_optimizers()


def test_reset_train_dataloader_drops_the_loader_the_step_count_built(tmp_path):
    model = LoaderDroppingModel()
    trainer = _trainer(tmp_path)
    trainer.fit(model)
    assert model.dropped is True  # the attribute existed and held a loader
    assert trainer.global_step == 2  # the fit loop built it again and trained
    assert reset_train_dataloader(_trainer(tmp_path)) is False  # nothing built yet


def test_attached_trainer_is_none_outside_a_trainer_and_the_trainer_inside(tmp_path):
    model = BoringModel()
    assert attached_trainer(model) is None
    trainer = _trainer(tmp_path)
    trainer.fit(model)
    assert attached_trainer(model) is trainer


def test_checkpoint_may_save_at_step_follows_the_step_and_time_intervals(tmp_path):
    every_three = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3)
    assert [checkpoint_may_save_at_step(every_three, step) for step in (1, 3, 4, 6)] == [
        False, True, False, True]
    by_epoch = ModelCheckpoint(dirpath=tmp_path)
    assert not checkpoint_may_save_at_step(by_epoch, 3)
    from datetime import timedelta

    timed = ModelCheckpoint(dirpath=tmp_path, train_time_interval=timedelta(minutes=5))
    assert checkpoint_may_save_at_step(timed, 1)


def test_wandb_run_is_offline_reads_the_run_settings():
    import wandb

    class Run:
        def __init__(self, mode: str) -> None:
            self.settings = wandb.Settings(mode=mode)

    assert wandb_run_is_offline(Run("offline"))
    assert not wandb_run_is_offline(Run("online"))


def test_quiet_library_noise_drops_the_tips_and_hardware_lines_and_keeps_the_rest(tmp_path,
                                                                                   caplog):
    import logging
    import warnings

    from zoo.training.compat import quiet_library_noise

    quiet_library_noise()
    with caplog.at_level(logging.INFO):
        pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=False,
                   enable_progress_bar=False)
        from pytorch_lightning.utilities.rank_zero import rank_zero_info

        rank_zero_info("a line the user needs")
        rank_zero_info("Loading `train_dataloader` to estimate number of stepping batches.")
    text = caplog.text
    assert "stepping batches" not in text
    assert "GPU available" not in text and "TPU available" not in text and "Tip" not in text
    assert "a line the user needs" in text
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_library_noise()  # the filter goes in front of "default"
        from torch.utils._pytree import LeafSpec, TreeSpec

        isinstance(TreeSpec(None, None, []), LeafSpec)
        from pytorch_lightning.utilities.model_summary import ModelSummary

        # The summary of a bf16-mixed module warns that it counts fp32 bytes: they are fp32.
        module = pl.LightningModule()
        module.layer = nn.Linear(2, 2)
        module.trainer = pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=False,
                                    precision="bf16-mixed", enable_progress_bar=False)
        ModelSummary(module)
        warnings.warn("a real warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a real warning"]


def test_drop_wandb_anonymous_removes_the_argument_lightning_always_passes(tmp_path):
    from pytorch_lightning.loggers import WandbLogger

    from zoo.training.compat import drop_wandb_anonymous

    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    assert "anonymous" in logger._wandb_init
    drop_wandb_anonymous(logger)
    assert "anonymous" not in logger._wandb_init


def test_lightnings_observer_of_a_dead_ddp_child_ends_in_one_line_and_exit_1():
    # Lightning's observer thread SIGKILLed the main process (exit -9, no word) when it noticed
    # a dead DDP child before the main process's own collective failed.
    import subprocess
    import sys

    from zoo.training.compat import DDP_PEER_DIED

    script = "\n".join([
        "import os, subprocess, sys",
        "from zoo.training.compat import ddp_peer_death_in_one_line",
        "ddp_peer_death_in_one_line()",
        "from lightning_fabric.strategies.launchers.subprocess_script import _ChildProcessObserver",
        "dead = subprocess.Popen([sys.executable, '-c', 'raise SystemExit(3)'])",
        "dead.wait()",
        "alive = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])",
        "print(alive.pid, flush=True)",
        "_ChildProcessObserver(os.getpid(), [dead, alive], sleep_period=0)._run()",
        "print('not reached')",
    ])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == DDP_PEER_DIED
    assert "not reached" not in result.stdout
    alive_pid = int(result.stdout.split()[0])
    import os
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the surviving child was killed too: no zombie worker
        try:
            os.kill(alive_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"child {alive_pid} still running")
