"""zoo.runs.reader: the run record a real run writes (done and diverged), and the reader of runs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import FAST_OVERRIDES

import zoo
from zoo.runs import reader

TINY = [*FAST_OVERRIDES, "logger=[csv,wandb]", "trainer.max_epochs=1",
        "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "model=plain8",
        "callbacks.gradient_flow.enabled=false", "callbacks.residual_gain.enabled=false"]


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """One run that trains to the end and one the explosion guard stops at its first step."""
    from conftest import CONFIGS
    from hydra import compose, initialize_config_dir

    from zoo.callbacks import TrainingDivergedError
    from zoo.config.source import register_configs
    from zoo.runs.train import train

    register_configs()  # the config schemas, as train.py registers them
    root = tmp_path_factory.mktemp("runs")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        done = compose(config_name="train", overrides=TINY)
        stopped = compose(config_name="train", overrides=[
            *TINY, "callbacks.explosion_guard.max_loss=1e-6",
            "callbacks.explosion_guard.check_every_n_steps=1"])
    metrics = train(done, root / "done")
    with pytest.raises(TrainingDivergedError):
        train(stopped, root / "diverged")
    return {"done": root / "done", "diverged": root / "diverged", "metrics": metrics}


def test_a_finished_run_records_how_it_ended_and_what_it_measured(finished_runs):
    record = json.loads((finished_runs["done"] / reader.RUN_RECORD_FILE).read_text())
    assert record["status"] == "done" and record["diverged"] is None
    assert record["global_step"] == 3 and record["epoch"] == 1
    assert record["test"]["test/acc"] == pytest.approx(finished_runs["metrics"]["test/acc"])
    assert 0.0 <= record["train_eval"]["train_eval/err"] <= 1.0
    assert record["train_eval"]["train_eval/acc"] == pytest.approx(
        1 - record["train_eval"]["train_eval/err"])
    assert record["model"]["name"] == "plain8" and record["data"]["name"] == "digits"
    assert record["parameters"] > 0 and record["fit_seconds"] > 0 and record["seed"] == 42
    assert (Path(record["checkpoints"]["last"]).is_file()
            and Path(record["checkpoints"]["best"]).is_file())
    assert record["precision"] and record["torch"] and record["hostname"]
    assert record["started"] <= record["ended"]
    # the code that trained: this checkout's commit (tests run from a clone or the work tree)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(zoo.__file__).parent,
                          capture_output=True, text=True, check=False).stdout.strip()
    assert record["git_commit"] == (head or "unknown")
    assert record["git_dirty"] in (True, False, None)
    assert not list(finished_runs["done"].glob(".run.json.tmp"))  # written atomically: no leftover


def test_a_diverged_run_records_its_step_and_unit_and_no_text_file(finished_runs):
    record = json.loads((finished_runs["diverged"] / reader.RUN_RECORD_FILE).read_text())
    assert record["status"] == "diverged"
    assert record["diverged"]["step"] == 0
    # max_loss=1e-6 stops it: the loss went bad, not a unit's gradient norm (below its bound)
    assert record["diverged"]["unit"] == "loss"
    assert "diverged at step 0" in record["message"]
    assert record["test"] == {}
    assert not (finished_runs["diverged"] / "diverged.txt").exists()
    run = reader.read_run(finished_runs["diverged"])
    assert run.status == "diverged" and run.model == "plain8"


def test_a_failed_run_records_the_error(tmp_path, compose, monkeypatch):
    from zoo.runs.train import train
    from zoo.training.module import ZooModule

    def broken_step(self, batch, batch_index):
        raise RuntimeError("boom in step")

    monkeypatch.setattr(ZooModule, "training_step", broken_step)
    with pytest.raises(RuntimeError, match="boom in step"):
        train(compose(*TINY), tmp_path / "failed")
    record = reader.read_run(tmp_path / "failed").record
    assert record["status"] == "failed" and record["message"] == "RuntimeError: boom in step"
    assert record["global_step"] == 0 and record["test"] == {} and record["diverged"] is None


def test_the_reader_finds_both_runs_and_reads_their_metrics(finished_runs):
    found = reader.find_run_dirs([finished_runs["done"].parent])
    assert found == [finished_runs["diverged"], finished_runs["done"]]
    run = reader.read_run(finished_runs["done"])
    assert run.last("test/acc") == pytest.approx(finished_runs["metrics"]["test/acc"])
    assert run.series("train/loss_step", by="step")  # the CSV logger's step losses


def test_wandb_summary_holds_the_records_facts(finished_runs):
    from wandb_records import read_run, run_file

    for kind in ("done", "diverged"):
        record = json.loads((finished_runs[kind] / reader.RUN_RECORD_FILE).read_text())
        summary = read_run(run_file(finished_runs[kind]))["summary"]
        assert summary["status"] == record["status"] == kind
        assert summary["global_step"] == record["global_step"]
        assert summary["fit_seconds"] == record["fit_seconds"]
    assert summary["diverged_at_step"] == 0 and summary["diverged_message"] == record["message"]
    assert summary["diverged_unit"] == record["diverged"]["unit"] == "loss"
    done = json.loads((finished_runs["done"] / reader.RUN_RECORD_FILE).read_text())
    summary = read_run(run_file(finished_runs["done"]))["summary"]
    assert summary["test_acc"] == done["test"]["test/acc"] and "diverged" not in summary
    assert summary["train_eval_err"] == done["train_eval"]["train_eval/err"]


# ---------------------------------------------------------------- reading older runs, labels


def _hydra_run(root: Path, name: str, model: str, norm: str = "batch",
               overrides: list[str] = ()) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        f"seed: 42\nmodel:\n  name: {model}\n  norm: {norm}\n  num_classes: ${{data.num_classes}}\n"
        "data:\n  name: digits\n  num_classes: 10\n")
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return run


def test_an_older_run_is_read_from_its_hydra_config(tmp_path):
    run = reader.read_run(_hydra_run(tmp_path, "old", "resnet8"))
    assert (run.model, run.data, run.seed) == ("resnet8", "digits", 42)
    assert run.record["model"]["num_classes"] == 10  # interpolations resolved
    assert run.status == "unfinished"  # no record and no test metrics


def test_labels_name_the_setting_that_differs_between_siblings(tmp_path):
    _hydra_run(tmp_path, "0-a", "resnet56", norm="batch")
    _hydra_run(tmp_path, "1-b", "resnet56", norm="none", overrides=["seed=1"])
    _hydra_run(tmp_path, "2-c", "resnet56", norm="none", overrides=["seed=2"])
    _hydra_run(tmp_path, "3-d", "plain56", overrides=["optim.lr=0.01", "hydra.job.chdir=true"])
    found = reader.read_runs([tmp_path])
    assert [run.label for run in found] == [
        "resnet56 model.norm=batch", "resnet56 model.norm=none seed=1",
        "resnet56 model.norm=none seed=2", "plain56"]
    # Repeats over seeds share one setting label (what zoo.results.redraw averages over).
    assert reader.setting_labels(found, ignore=("seed",))[1:3] == ["resnet56 model.norm=none"] * 2


def test_repeats_of_one_setting_are_told_apart_by_directory(tmp_path):
    _hydra_run(tmp_path, "0-a", "resnet20")
    _hydra_run(tmp_path, "1-b", "resnet20")
    assert reader.label_runs(reader.read_runs([tmp_path])) == ["resnet20 (0-a)", "resnet20 (1-b)"]


def test_bad_paths_and_records_get_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        reader.find_run_dirs([tmp_path / "missing"])
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        reader.read_run(tmp_path)
    (tmp_path / reader.RUN_RECORD_FILE).write_text("{half")
    with pytest.raises(ValueError, match="not valid JSON"):
        reader.read_run(tmp_path)


def test_run_dir_above_a_checkpoint(tmp_path):
    run = _hydra_run(tmp_path, "run", "resnet8")
    (run / "checkpoints").mkdir()
    assert reader.run_dir_above(run / "checkpoints" / "last.ckpt") == run
