"""Sweeps through Hydra's launchers and sweepers: the objective train.py returns, joblib and
submitit (local) launchers, the Optuna sweeper, the SLURM launcher config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import FAST_OVERRIDES, REPO

from zoo.runs.objective import check_objective, objective_value

TINY_RUN = [*FAST_OVERRIDES, "model=resnet8", "logger=csv", "trainer.max_epochs=1",
            "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1"]


def run_sweep(sweep_dir: Path, *overrides: str, timeout: float = 600) -> str:
    """Run ``train.py -m`` on the tiny sweep; returns what it printed."""
    environment = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    command = [sys.executable, str(REPO / "train.py"), "-m", *TINY_RUN,
               f"hydra.sweep.dir={sweep_dir}", *overrides]
    result = subprocess.run(command, cwd=sweep_dir.parent, env=environment, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def job_records(sweep_dir: Path) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text())
            for path in sorted(sweep_dir.glob("*/run.json"))}


# ---------------------------------------------------------------- the objective


def test_objective_is_checked_before_anything_is_built(compose):
    check_objective(compose())  # val/acc, the default
    check_objective(compose("objective=test/acc", "logger=none"))  # run.json holds it
    with pytest.raises(ValueError, match="objective must be one of .*got 'val/accuracy'"):
        check_objective(compose("objective=val/accuracy"))
    with pytest.raises(ValueError, match="read from the CSV log.*logger=\\[wandb,csv\\]"):
        check_objective(compose("objective=val/loss", "logger=none"))
    with pytest.raises(ValueError, match="callbacks.train_eval.at_end=true"):
        check_objective(compose("objective=train_eval/err", "callbacks=none"))


def test_an_unknown_objective_is_one_line_and_exit_2(tmp_path):
    from conftest import run_train

    result = run_train(tmp_path / "run", "model=resnet8", "objective=val/accuracy", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert "objective must be one of" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before training


def write_run(run_dir: Path, status: str = "done") -> Path:
    (run_dir / "csv").mkdir(parents=True)
    record = {"status": status, "best_val_acc": 0.75,
              "test": {"test/acc": 0.7, "test/loss": 0.9}, "train_eval": {"train_eval/err": 0.2}}
    (run_dir / "run.json").write_text(json.dumps(record))
    (run_dir / "csv" / "metrics.csv").write_text(
        "epoch,step,val/loss,val/acc\n0,9,1.5,0.6\n1,19,1.25,0.75\n2,29,1.4,0.7\n")
    return run_dir


def test_objective_value_is_the_runs_recorded_metric(tmp_path, compose):
    run_dir = write_run(tmp_path / "run")
    values = {key: objective_value(run_dir, compose(f"objective={key}"))
              for key in ("val/acc", "test/acc", "train_eval/err", "val/loss")}
    # the monitor's best (the checkpoint the test used), not its last 0.7; others: run.json, CSV
    assert values == {"val/acc": 0.75, "test/acc": 0.7, "train_eval/err": 0.2, "val/loss": 1.4}
    monitor_loss = compose("objective=val/loss", "callbacks.checkpoint.monitor=val/loss")
    assert objective_value(run_dir, monitor_loss) == 0.75  # run.json's best score of the monitor


def test_a_run_that_did_not_finish_returns_no_value(tmp_path, compose):
    # The Optuna sweeper records a failed trial for None (a diverged learning rate, say)
    assert objective_value(write_run(tmp_path / "diverged", "diverged"), compose()) is None
    assert objective_value(tmp_path / "no-record", compose()) is None  # DDP rank > 0


# ---------------------------------------------------------------- launchers and sweepers


def slurm_launcher_config():
    """hydra.launcher of ``hydra/launcher=slurm hydra.launcher.partition=gpu``."""
    from hydra import compose, initialize_config_dir

    from zoo.config.source import register_configs

    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    return cfg.hydra.launcher


def test_slurm_launcher_config_composes_over_the_plugins_schema():
    launcher = slurm_launcher_config()
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 240)
    assert launcher.signal_delay_s == 120 and launcher.max_num_timeout == 3


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_a_sweep_through_a_launcher_runs_every_job_to_completion(tmp_path, launcher):
    pytest.importorskip(f"hydra_plugins.hydra_{launcher.split('_')[0]}_launcher")
    sweep_dir = tmp_path / "sweep"
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    printed = run_sweep(sweep_dir, f"hydra/launcher={launcher}", "seed=1,2", *extra)
    records = job_records(sweep_dir)
    assert sorted(records) == ["0-resnet8-digits-s1", "1-resnet8-digits-s2"]
    assert [record["status"] for record in records.values()] == ["done", "done"]
    assert [record["seed"] for record in records.values()] == [1, 2]
    # each worker process silences the library lines train.py silences (its main does it);
    # submitit's jobs write to their own logs
    printed += "".join(log.read_text() for log in sweep_dir.glob(".submitit/*/*_log.*"))
    for noise in ("GPU available", "TPU available", "Tip:", "LeafSpec", "Loading `train_"):
        assert noise not in printed, noise


def test_optuna_tunes_the_learning_rate_and_reports_the_best_value(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = tmp_path / "sweep"
    run_sweep(sweep_dir, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
              "hydra.sweeper.direction=maximize", "hydra.sweeper.sampler.seed=0",
              "optim.lr=tag(log,interval(0.01,1.0))")
    records = job_records(sweep_dir)
    assert len(records) == 2
    rates = {name: float(next(o for o in r["overrides"] if o.startswith("optim.lr="))[9:])
             for name, r in records.items()}
    assert len(set(rates.values())) == 2  # two trials, two rates in [0.01, 1]
    assert all(0.01 <= rate <= 1.0 for rate in rates.values())
    best_name = max(records, key=lambda name: records[name]["best_val_acc"])
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(records[best_name]["best_val_acc"])
    assert results["best_params"]["optim.lr"] == pytest.approx(rates[best_name])


@pytest.mark.slow
def test_launcher_benchmark_script_times_both_sweeps_and_gives_a_verdict(tmp_path):
    # A smoke run of scripts/bench_launchers.sh with the smallest sweep; the real numbers come
    # from the script's defaults on a quiet machine (BENCHMARKS.md).
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    tiny = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1", "data.loader=device"]
    result = subprocess.run(["bash", str(REPO / "scripts" / "bench_launchers.sh"), *tiny],
                            env={**os.environ, "OUT": str(tmp_path / "bench")}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "8 of 8 run.json written" in result.stdout
    verdict = result.stdout.strip().splitlines()[-1]
    assert verdict.startswith("ratio serial/joblib: ") and verdict.endswith(" the target")
    assert " meets " in verdict or " misses " in verdict


def test_the_slurm_launcher_config_becomes_these_sbatch_lines(tmp_path, monkeypatch):
    # What hydra-submitit-launcher hands submitit (its launch(): init and queue parameters), and
    # the sbatch script submitit writes from it; no SLURM here, so srun's presence is faked.
    launcher = slurm_launcher_config()
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    params = OmegaConf.to_container(launcher, resolve=False)
    params.pop("_target_")
    params.update(submitit_folder=str(tmp_path / "%j"), name="train")
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{key if key in base else f"slurm_{key}": value
                                  for key, value in params.items()})
    script = executor._executor._make_submission_file_text("python train.py", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=240", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=32GB", "#SBATCH --signal=USR2@120"):
        assert line in script.splitlines(), (line, script)


def test_sweep_group_carries_the_date():
    from zoo.runs.train import sweep_group

    dated = Path("multirun/2026-11-28/16-31-15-ab12")
    assert sweep_group(dated) == "sweep-2026-11-28-16-31-15-ab12"
    assert sweep_group(Path("/tmp/my-sweep")) == "sweep-my-sweep"

