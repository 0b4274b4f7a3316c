"""zoo.results.report: runs into error-curve figures and a summary table, status from run.json."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

import zoo
from zoo.results import report
from zoo.runs.reader import RUN_RECORD_FILE, read_runs


def _fake_run(root: Path, name: str, model: str, train_acc: list[float], val_acc: list[float],
              norm: str = "batch", losses: list[tuple[int, float]] = (), tested: bool = True,
              train_eval_err: float | None = None) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        f"model:\n  name: {model}\n  num_classes: 10\n  norm: {norm}\n"
        "data:\n  name: digits\n  num_classes: 10\n  in_channels: 1\n")
    (run / "csv").mkdir()
    columns = ["epoch", "step", "train/acc", "train/loss_epoch", "train/loss_step", "val/acc",
               "test/acc", "train_eval/err"]
    with (run / "csv" / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for step, loss in losses:
            writer.writerow({"epoch": 0, "step": step, "train/loss_step": loss})
        for epoch, (train, val) in enumerate(zip(train_acc, val_acc, strict=True)):
            writer.writerow({"epoch": epoch, "step": 10 * epoch + 9, "val/acc": val})
            writer.writerow({"epoch": epoch, "step": 10 * epoch + 9, "train/acc": train,
                             "train/loss_epoch": 1.0})
        if train_eval_err is not None:
            writer.writerow({"step": 10 * len(train_acc), "train_eval/err": train_eval_err})
        if tested:
            writer.writerow({"epoch": len(train_acc), "step": 10 * len(train_acc), "test/acc": 0.5})
    return run


def _record(run: Path, **facts) -> None:
    """A run.json as zoo.runs.train writes it, with the facts a test needs."""
    config_model = {"name": "resnet56", "norm": "none", "num_classes": 10}
    record = {"status": "done", "message": None, "global_step": 0, "epoch": 0, "diverged": None,
              "fit_seconds": 1.5, "parameters": None, "test": {}, "train_eval": {},
              "best_val_acc": None, "checkpoints": {"last": None, "best": None}, "overrides": [],
              "model": config_model,
              "data": {"name": "digits", "num_classes": 10, "in_channels": 1}, "seed": 42}
    record.update(facts)
    (run / RUN_RECORD_FILE).write_text(json.dumps(record))


def _table_lines(summary: Path) -> list[str]:
    return [line for line in summary.read_text().splitlines() if line.startswith(("| 0-", "| 1-"))]


def test_report_reads_a_sweep_dir(tmp_path):
    sweep = tmp_path / "multirun"
    _fake_run(sweep, "0-plain8-digits-s42", "plain8", [0.3, 0.6], [0.4, 0.7], train_eval_err=0.25)
    _fake_run(sweep, "1-resnet8-digits-s42", "resnet8", [0.5, 0.9], [0.6, 0.8])
    written = report.write_report([sweep], tmp_path / "out")
    assert written["figure"].stat().st_size > 0
    lines = _table_lines(written["summary"])
    assert len(lines) == 2
    assert "| plain8 |" in lines[0] and "40.0%" in lines[0] and "0.7000" in lines[0]
    assert "| 25.0% |" in lines[0]  # the eval-mode training error, from the CSV of an older run
    assert "| resnet8 |" in lines[1] and "10.0%" in lines[1] and "0.8000" in lines[1]
    params = f"{zoo.count_parameters(zoo.create('resnet8', num_classes=10, in_channels=1)):,}"
    assert params in lines[1]


def test_report_reads_status_and_diverged_step_from_run_json(tmp_path):
    sweep = tmp_path / "multirun"
    _fake_run(sweep, "0-resnet56-digits-s42", "resnet56", [0.5], [0.6], norm="batch",
              losses=[(0, 2.3), (5, 1.5)])
    stopped = _fake_run(sweep, "1-resnet56-digits-s42", "resnet56", [], [], norm="none",
                        losses=[(0, 4.0e3)], tested=False)
    _record(stopped, status="diverged", diverged={"step": 7, "unit": "layer1.0"}, global_step=8,
            message="training diverged at step 7: loss 4000 (bound 1000)",
            train_eval={"train_eval/err": 0.9})
    runs = read_runs([sweep])
    assert [report.loss_curve(r) for r in runs] == [{0: 2.3, 5: 1.5}, {0: 4.0e3}]
    assert [report.status_text(r) for r in runs] == ["done", "diverged at step 7 (unit layer1.0)"]
    written = report.write_report([sweep], tmp_path / "out")
    assert written["loss_figure"].stat().st_size > 0
    lines = _table_lines(written["summary"])
    assert ("| resnet56 model.norm=batch |" in lines[0] and "| done |" in lines[0]
            and "| 1.5 |" in lines[0])
    assert ("| resnet56 model.norm=none |" in lines[1]
            and "| diverged at step 7 (unit layer1.0) |" in lines[1])
    # steps and train-eval error from the record
    assert "| 8 |" in lines[1] and "| 90.0% |" in lines[1]
    # the parameter count is the run's own net: no BN, a bias per convolution channel instead
    norm_free = zoo.count_parameters(zoo.create("resnet56", num_classes=10, in_channels=1,
                                                norm="none"))
    assert norm_free != zoo.count_parameters(zoo.create("resnet56", num_classes=10, in_channels=1))
    assert f"| {norm_free:,} |" in lines[1]
    assert "resnet56 model.norm=none: training diverged at step 7" in written["summary"].read_text()


def test_report_names_runs_of_one_model_by_the_override_that_differs(tmp_path):
    sweep = tmp_path / "multirun"
    for job, lr in enumerate(["0.05", "0.01"]):
        run = _fake_run(sweep, f"{job}-resnet1202-digits-s42", "resnet1202", [0.5], [0.6])
        (run / ".hydra" / "overrides.yaml").write_text(
            f"- model=resnet1202\n- optim.lr={lr}\n- seed=1\n")
    _fake_run(sweep, "2-plain1202-digits-s42", "plain1202", [0.1], [0.1])
    assert [r.label for r in read_runs([sweep])] == [
        "resnet1202 optim.lr=0.05", "resnet1202 optim.lr=0.01", "plain1202"]


def test_report_refuses_an_empty_dir_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no runs"):
        report.write_report([tmp_path], tmp_path / "out")
    result = subprocess.run([sys.executable, "-m", "zoo.results", "report",
                             str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "does not exist" in result.stderr
