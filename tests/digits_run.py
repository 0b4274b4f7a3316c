"""One small train.py run on digits in the default ``outputs/`` layout, shared by the tests of
what a run writes (test_run_output.py) and of what its checkpoint predicts (test_predict.py):
``conftest.digits_run`` starts it once per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

OVERRIDES = ["model=resnet8", "data=digits", "data.batch_size=32", "data.loader=device",
             "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32",
             "callbacks.progress_bar=none", "seed=5"]  # log_every_n_steps stays at its 50


def train_py(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    """train.py without hydra.run.dir: the run directory is the default outputs/<date>/..."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *OVERRIDES, *overrides],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                            check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def run_dirs(cwd: Path) -> list[Path]:
    return sorted(p.parent for p in (cwd / "outputs").glob("*/*/run.json"))


def first_run(cwd: Path) -> tuple[Path, Path, subprocess.CompletedProcess, dict]:
    """One epoch: (working directory, run directory, the process's output, run.json)."""
    result = train_py(cwd, "trainer.max_epochs=1")
    (run_dir,) = run_dirs(cwd)
    return cwd, run_dir, result, json.loads((run_dir / "run.json").read_text())
