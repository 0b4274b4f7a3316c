"""Readers of many runs (zoo.results report, collect and redraw, zoo.runs) read a run folder as
data (issue 24): no interpolation or resolver of its files runs, a malformed file is one line
naming it and is skipped while the rest is finished, and a TensorBoard-only run is read from its
event files (issue 25 item 4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from test_report import _fake_run, _record

from zoo.results import collect, redraw, report
from zoo.runs import reader

SECRET = "zoo-secret-7d1f"  # the value of an environment variable a run's config points at


def _good_run(root: Path, name: str = "0-resnet8-digits-s42") -> Path:
    run = _fake_run(root, name, "resnet8", [0.5, 0.9], [0.6, 0.8])
    _record(run, model={"name": "resnet8", "num_classes": 10, "in_channels": 1},
            test={"test/acc": 0.8}, global_step=20, epoch=2)
    return run


# ---------------------------------------------------------------- no resolver runs


def test_no_reader_resolves_an_interpolation_of_a_runs_config(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZOO_TEST_SECRET", SECRET)
    run = _fake_run(tmp_path / "sweep", "0-resnet8-digits-s42", "resnet8", [0.5], [0.6])
    config = run / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("norm: batch", "norm: ${oc.env:ZOO_TEST_SECRET}")
                      + "optim:\n  lr: ${oc.env:ZOO_TEST_SECRET}\n")
    read = reader.read_run(run)
    assert read.record["model"]["norm"] == "${oc.env:ZOO_TEST_SECRET}"  # as text, not run
    assert read.record["model"]["num_classes"] == 10
    written = report.write_report([tmp_path / "sweep"], tmp_path / "report")
    assert collect.collect([tmp_path / "sweep"], tmp_path / "results") and \
        collect.main(["collect", str(tmp_path / "sweep"), "--out", str(tmp_path / "r2")]) == 0
    assert reader.main([str(tmp_path / "sweep")]) == 0
    shown = written["summary"].read_text() + "".join(
        path.read_text() for path in (tmp_path / "results").iterdir())
    assert SECRET not in shown + "".join(capsys.readouterr())


def test_a_reference_to_another_key_is_still_looked_up(tmp_path):
    from zoo.runs.files import plain_config

    path = tmp_path / "config.yaml"
    path.write_text("data:\n  num_classes: 7\nmodel:\n  num_classes: ${data.num_classes}\n"
                    "when: ${now:%Y}\nloop: ${loop}\n")
    config = plain_config(path)
    assert config["model"]["num_classes"] == 7 and config["when"] == "${now:%Y}"
    assert config["loop"] == "${loop}"  # a reference to itself ends, as text


# ---------------------------------------------------------------- malformed files


BAD_RECORDS = {
    "wrong-type": '{"status": "done", "global_step": "many"}',
    "null-model": '{"status": "done", "model": 5}',
    "huge-number": '{"status": "done", "global_step": 1e999}',
    "nan-seconds": '{"status": "done", "fit_seconds": NaN}',
    "truncated": '{"status": "done", "glo',
    "a-list": "[1, 2]",
    "long-digits": '{"status": "done", "parameters": ' + "9" * 5000 + "}",
    "bad-date": '{"status": "done", "started": "yesterday"}',
}


@pytest.mark.parametrize("content", BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_a_malformed_run_json_is_one_line_naming_it_and_the_other_runs_are_reported(
        tmp_path, capsys, content):
    sweep = tmp_path / "sweep"
    _good_run(sweep)
    bad = _good_run(sweep, "1-resnet8-digits-s43")
    (bad / "run.json").write_text(content)
    written = report.write_report([sweep], tmp_path / "report")
    assert "0-resnet8-digits-s42" in written["summary"].read_text()
    assert "1-resnet8-digits-s43" not in written["summary"].read_text()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert len(warnings) == 1 and str(bad / "run.json") in warnings[0], warnings
    assert len(warnings[0]) < 400
    rows, _, _ = collect.run_rows([sweep])
    assert [row["run"] for row in rows] == ["0-resnet8-digits-s42"]


BAD_METRICS = {
    "text": "epoch,step,val/acc\n0,9,high\n",
    "huge-step": "epoch,step,val/acc\n0,1e999,0.5\n",
    "fractional-epoch": "epoch,step,val/acc\n0.5,9,0.5\n",
    "extra-cells": "epoch,step,val/acc\n0,9,0.5,7,8\n",
    "binary": "\udcff\udcfe",
}


@pytest.mark.parametrize("content", BAD_METRICS.values(), ids=BAD_METRICS.keys())
def test_a_malformed_metrics_csv_is_one_line_naming_it(tmp_path, capsys, content):
    sweep = tmp_path / "sweep"
    _good_run(sweep)
    bad = _good_run(sweep, "1-resnet8-digits-s43")
    (bad / "csv" / "metrics.csv").write_bytes(content.encode("utf-8", "surrogateescape"))
    assert collect.main(["collect", str(sweep), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert f"skipped {bad}: {bad / 'csv' / 'metrics.csv'}" in err
    assert "Traceback" not in err
    assert "0-resnet8-digits-s42" in (tmp_path / "out" / "runs.csv").read_text()


def test_nothing_readable_exits_2_with_one_line(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    (_good_run(sweep) / "run.json").write_text("null")
    assert report.main([str(sweep), "--out", str(tmp_path / "out")]) == 2
    assert reader.main([str(sweep)]) == 2
    err = capsys.readouterr().err
    assert "error: no runs under" in err and "holds NoneType, not a run record" in err


def test_redraw_skips_a_malformed_folder_naming_its_file_and_draws_the_others(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _good_run(sweep)
    good = tmp_path / "results" / "degradation_ok"
    collect.collect([sweep], good)
    cases = {"runs_csv_text": ("runs.csv", lambda t: t.replace(",20,", ",twenty,")),
             "runs_csv_family": ("runs.csv", lambda t: t.replace(",residual,", ",alien,")),
             "meta_truncated": ("meta.json", lambda t: t[:20]),
             "meta_list": ("meta.json", lambda t: "[]")}
    for name, (file, damage) in cases.items():
        folder = tmp_path / "results" / name
        folder.mkdir()
        for tidy in good.iterdir():
            (folder / tidy.name).write_text(tidy.read_text())
        (folder / file).write_text(damage((good / file).read_text()))
    written = redraw.redraw(tmp_path / "results", tmp_path / "figures")
    assert {path.parent.name for path in written} == {"degradation_ok"}
    err = capsys.readouterr().err
    for name, (file, _) in cases.items():
        assert f"skipped {tmp_path / 'results' / name}: {tmp_path / 'results' / name / file}" \
            in err, err
    assert collect.main(["redraw", str(tmp_path / "results" / "meta_list"), "--figures",
                         str(tmp_path / "figures")]) == 2


# ---------------------------------------------------------------- what a run has


def test_a_tensorboard_only_run_is_reported_from_its_event_files(tmp_path, capsys):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "sweep" / "0-resnet8-digits-s42"
    writer = SummaryWriter(str(run / "tensorboard"))
    for epoch, (train, val) in enumerate([(0.5, 0.6), (0.8, 0.75)]):
        step = 10 * epoch + 9
        for tag, value in (("train/acc", train), ("val/acc", val), ("epoch", epoch),
                           ("train/loss_step", 2.0 - epoch)):
            writer.add_scalar(tag, value, step)
    writer.close()
    _record(run, model={"name": "resnet8"}, global_step=20, test={"test/acc": 0.7})
    (row,) = report.summary_rows(reader.read_runs([run]))
    assert row["epochs"] == 2 and row["final train error"] == pytest.approx(0.2)
    assert row["best val acc"] == pytest.approx(0.75) and row["final train loss"] == 1.0


def test_a_run_without_metrics_says_what_is_missing_instead_of_zeros(tmp_path, capsys):
    run = tmp_path / "sweep" / "0-resnet8-digits-s42"
    run.mkdir(parents=True)
    _record(run, model={"name": "resnet8"}, global_step=20, test={"test/acc": 0.7})
    written = report.write_report([run], tmp_path / "out")
    (line,) = [line for line in written["summary"].read_text().splitlines()
               if line.startswith("| 0-")]
    cells = [cell.strip() for cell in line.split("|")[1:-1]]
    assert (cells[3], cells[4], cells[5]) == ("-", "20", "-")  # epochs unknown, not 0
    assert "has no csv/metrics.csv and no TensorBoard event files" in capsys.readouterr().err


def test_python_m_zoo_runs_help_prints_help():
    shown = subprocess.run([sys.executable, "-m", "zoo.runs", "--help"], cwd=REPO,
                           capture_output=True, text=True, timeout=120, check=False)
    assert shown.returncode == 0 and "usage: python -m zoo.runs" in shown.stdout


def test_a_config_of_nested_yaml_aliases_is_refused_not_expanded(tmp_path):
    from zoo.runs.files import plain_config

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\n")  # 10**9 values once expanded
    with pytest.raises(ValueError, match="more than 100,000 values"):
        plain_config(path)


def test_the_report_says_every_file_it_wrote(tmp_path, capsys):
    assert report.main([str(_good_run(tmp_path / "sweep")), "--out", str(tmp_path / "out")]) == 0
    written = capsys.readouterr().err
    assert all(name in written for name in ("error_curves.png", "loss_curves.png", "summary.md"))
