from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# One intra-op thread per process: tests start several processes at once (DDP, train.py
# subprocesses) and OpenMP threads spinning on an oversubscribed 2-core machine are 20x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests never talk to W&B servers, never prompt.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def compose():
    """Compose the real configs of configs/ with overrides, as train.py would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from zoo.config.source import register_configs

    register_configs()  # model=<any valid depth>, as train.py composes

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return hydra_compose(config_name="train", overrides=list(overrides))

    return _compose

# Overrides that make a train.py run small enough for 2 CPU cores: the bundled digits set.
FAST_OVERRIDES = [
    "data=digits",
    "data.batch_size=32",
    "data.num_workers=0",
    "data.loader=device",  # 25x faster than a DataLoader on 2 cores, and resumable mid-epoch
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.log_every_n_steps=2",
    "callbacks.progress_bar=none",
]


def run_train(run_dir: Path, *overrides: str, check: bool = True, env: dict | None = None,
              timeout: float = 600, fast: bool = True, cwd: Path | None = None):
    """Run the real ``train.py`` in a subprocess, writing into ``run_dir``."""
    import subprocess
    import sys

    environment = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                   "PYTHONUNBUFFERED": "1"}
    environment.update(env or {})
    command = [sys.executable, str(REPO / "train.py"), *(FAST_OVERRIDES if fast else []),
               f"hydra.run.dir={run_dir}", *overrides]
    result = subprocess.run(command, cwd=cwd or Path(run_dir).parent, env=environment,
                            capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """One train.py run in the default outputs/ layout (tests/digits_run.py); the resume test
    of test_run_output.py continues it, after test_predict.py has read its first checkpoint."""
    from digits_run import first_run

    return first_run(tmp_path_factory.mktemp("digits_run"))
