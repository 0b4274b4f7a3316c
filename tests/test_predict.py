"""A trained checkpoint predicts correctly anywhere (issue 16, item 1), and what one run writes:
its step logging, its train.log, its resume into the same directory and W&B run (items 2, 3, 5).

One small train.py run on digits in the default ``outputs/`` layout, then a resume of it."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from wandb_records import read_run

pytestmark = pytest.mark.timeout(1800)  # two train.py runs; the 2-core machine is shared

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


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("predict")
    result = train_py(cwd, "trainer.max_epochs=1")
    (run_dir,) = run_dirs(cwd)
    return cwd, run_dir, result, json.loads((run_dir / "run.json").read_text())


PREDICT_IN_A_FRESH_PROCESS = """
import json, sys
from zoo.data.sources import load_in_memory
from zoo.training.module import ZooModule
module = ZooModule.load_from_checkpoint(sys.argv[1], map_location="cpu")
test = load_in_memory("digits", None, 300).test          # raw uint8 (N, 1, 8, 8)
result = module.predict(test.images[:, 0])                # as (N, H, W) grey images
print(json.dumps({"correct": int((result.indices == test.labels).sum()), "count": len(test),
                  "names": result.names[:3], "rows": float(result.probabilities.sum(1).mean())}))
"""


def test_checkpoint_predicts_raw_uint8_images_at_the_runs_test_accuracy(first_run):
    _, _, _, record = first_run
    best = record["checkpoints"]["best"] if "checkpoints" in record else None
    best = best or next(Path(first_run[1], "checkpoints").glob("best-*.ckpt"))
    answer = subprocess.run([sys.executable, "-c", PREDICT_IN_A_FRESH_PROCESS, str(best)],
                            capture_output=True, text=True, timeout=300, cwd=first_run[0],
                            check=False)
    assert answer.returncode == 0, answer.stderr[-3000:]
    predicted = json.loads(answer.stdout.strip().splitlines()[-1])
    run_correct = round(record["test"]["test/acc"] * predicted["count"])
    assert predicted["correct"] == run_correct, (predicted, record["test"])
    assert predicted["correct"] > 0.3 * predicted["count"]  # trained: far above chance (0.1)
    assert all(name in [str(d) for d in range(10)] for name in predicted["names"])
    assert predicted["rows"] == pytest.approx(1.0)


def test_short_epochs_log_several_step_rows_without_lightnings_warning(first_run):
    _, run_dir, result, _ = first_run
    with open(run_dir / "csv" / "metrics.csv") as file:
        step_rows = [row for row in csv.DictReader(file) if row.get("train/loss_step")]
    assert len(step_rows) >= 3  # 35 batches, interval 35 // 4 = 8: steps 8, 16, 24, 32
    assert "smaller than the logging interval" not in result.stderr


def test_train_log_holds_the_final_report(first_run):
    _, run_dir, result, _ = first_run
    text = (run_dir / "train.log").read_text()
    assert "test metrics: " in text and "test/acc=" in text
    assert f"last checkpoint: {run_dir / 'checkpoints' / 'last.ckpt'}" in text
    assert "test metrics: " in result.stdout  # printed on the terminal as before


def test_resume_writes_into_the_same_run_directory_and_wandb_run(first_run):
    cwd, run_dir, _, _ = first_run
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


def test_sweep_group_carries_the_date():
    from zoo.runs.train import sweep_group

    dated = Path("multirun/2026-11-28/16-31-15-ab12")
    assert sweep_group(dated) == "sweep-2026-11-28-16-31-15-ab12"
    assert sweep_group(Path("/tmp/my-sweep")) == "sweep-my-sweep"
