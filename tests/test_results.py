"""zoo.results: collect tidy files from run directories (collect), redraw figures and tables from
them alone (redraw)."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from zoo.results import collect, redraw, sweep_figures
from zoo.runs.reader import RUN_RECORD_FILE

# Final eval-mode training error per (model, seed): plain nets degrade with depth, ResNets do not.
TRAIN_EVAL_ERR = {"plain20": [0.05, 0.07, 0.06], "plain56": [0.20, 0.24, 0.22],
                  "resnet20": [0.04, 0.05, 0.03], "resnet56": [0.02, 0.03, 0.04]}


def _run(root: Path, job: int, model: str, seed: int, err: float, status: str = "done") -> Path:
    run = root / f"{job}-{model}-digits-s{seed}"
    (run / "csv").mkdir(parents=True)
    record = {"status": status, "global_step": 20, "epoch": 2, "fit_seconds": 3.0 + seed,
              "parameters": 1000 + int(model.removeprefix("plain").removeprefix("resnet")),
              "test": {"test/acc": 1 - err - 0.01},
              "train_eval": {"train_eval/err": err}, "best_val_acc": 1 - err - 0.02,
              "overrides": [f"model={model}", f"seed={seed}"], "seed": seed,
              "model": {"name": model, "norm": "batch"}, "data": {"name": "digits"},
              "torch": "2.x", "hostname": "box", "started": f"2026-11-28T10:00:0{job % 10}+00:00",
              "ended": f"2026-11-28T10:01:0{job % 10}+00:00"}
    (run / RUN_RECORD_FILE).write_text(json.dumps(record))
    with (run / "csv" / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle,
                                ["epoch", "step", "train/loss_step", "val/acc", "train_eval/err"])
        writer.writeheader()
        for step in range(0, 20, 5):
            writer.writerow({"epoch": step // 10, "step": step,
                             "train/loss_step": 2.3 / (1 + step + seed)})
        for epoch in (0, 1):
            writer.writerow({"epoch": epoch, "step": 10 * epoch + 9,
                             "val/acc": 0.5 + 0.2 * epoch + 0.01 * seed})
        writer.writerow({"step": 20, "train_eval/err": err})
    return run


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "multirun"
    job = 0
    for model, errors in TRAIN_EVAL_ERR.items():
        for seed, err in enumerate(errors):
            _run(root, job, model, seed, err)
            job += 1
    return root


def test_collect_writes_one_row_per_run_and_the_curves(sweep, tmp_path):
    out = tmp_path / "results" / "degradation"
    written = collect.collect([sweep], out, argv=["collect", str(sweep), "--out", str(out)])
    assert {p.name for p in written} == {"runs.csv", "curves.csv", "meta.json"}
    with (out / "runs.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and list(rows[0]) == collect.RUN_COLUMNS
    first = rows[0]
    assert (first["model"], first["depth"], first["family"], first["seed"]) == (
        "plain20", "20", "plain", "0")
    assert first["setting"] == "plain20"  # seeds of one setting share its label
    assert (float(first["train_eval_err"]) == 0.05
            and float(first["test_acc"]) == pytest.approx(0.94))
    assert first["status"] == "done" and first["steps"] == "20" and first["parameters"] == "1020"
    with (out / "curves.csv").open() as handle:
        curves = list(csv.DictReader(handle))
    mine = [c for c in curves if c["run"] == first["run"]]
    assert [c["metric"] for c in mine].count("train_loss") == 4
    assert [float(c["value"]) for c in mine if c["metric"] == "val_err"] == pytest.approx(
        [0.5, 0.3])
    # steps done: Lightning logs at the step's index (9, 19), the train-eval pass after step 20
    assert [int(c["step"]) for c in mine if c["metric"] != "train_loss"] == [10, 20, 20]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["experiment"] == "degradation" and meta["runs"] == 12
    assert meta["command"].startswith("python -m zoo.results collect")
    # first start 10:00:00, last end 10:01:09
    assert meta["wall_seconds"] == 69.0 and meta["torch"] == ["2.x"]
    assert meta["machine"]["cpu"] and meta["git_commit"]


def test_wall_time_of_runs_from_two_sessions_leaves_out_the_gap():
    from types import SimpleNamespace

    def run(start: str, end: str) -> SimpleNamespace:
        return SimpleNamespace(record={"started": f"2026-11-28T{start}+00:00",
                                       "ended": f"2026-11-28T{end}+00:00"})

    # a sweep: 10:00-10:30, and a second run beside it 10:10-10:40; then, a day's hours
    # later, two runs side by side 18:00-18:20 and 18:05-18:25
    runs = [run("18:05:00", "18:25:00"), run("10:00:00", "10:30:00"),
            run("10:10:00", "10:40:00"), run("18:00:00", "18:20:00")]
    assert collect.wall_seconds(runs) == (40 + 25) * 60.0
    assert collect.wall_seconds([run("10:00:00", "10:30:00")]) == 1800.0
    assert collect.wall_seconds([SimpleNamespace(record={})]) is None


def test_redraw_draws_the_degradation_figures_and_a_mean_std_table(sweep, tmp_path):
    out = tmp_path / "results" / "degradation"
    collect.collect([sweep], out, argv=[])
    written = redraw.redraw(tmp_path / "results", tmp_path / "figures")
    names = {path.name for path in written}
    assert names == {"train_error_vs_depth.png", "test_error_vs_depth.png", "curves.png",
                     "summary.md", "table.md", "depth_table.md"}
    for path in written:
        assert path.parent == tmp_path / "figures" / "degradation"
        if path.suffix == ".png":
            assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000
    table = (tmp_path / "figures" / "degradation" / "summary.md").read_text()
    plain56 = next(line for line in table.splitlines() if line.startswith("| plain56 |"))
    mean, std = statistics.fmean([20, 24, 22]), statistics.stdev([20, 24, 22])
    assert f"| {mean:.1f} ± {std:.1f} |" in plain56 and "| 3 done |" in plain56
    # the table rows go plain before residual, shallow before deep
    order = [line.split(" |")[0][2:] for line in table.splitlines()
             if line.startswith(("| plain", "| resnet"))]
    assert order == ["plain20", "plain56", "resnet20", "resnet56"]
    # the docs' tables: the summary alone, and the depth table (plain and residual side by side)
    assert (tmp_path / "figures" / "degradation" / "table.md").read_text() in table
    depth_table = (tmp_path / "figures" / "degradation" / "depth_table.md").read_text()
    assert depth_table.splitlines()[0] == ("| depth | plain: training error | residual: training "
                                           "error | plain: test error | residual: test error |")
    depth56 = next(line for line in depth_table.splitlines() if line.startswith("| 56 |"))
    assert depth56.split(" | ")[1] == f"{mean:.1f} ± {std:.1f}%"


def test_the_depth_title_states_what_the_numbers_show(sweep, tmp_path):
    rows, _, _ = collect.run_rows([sweep])
    series = sweep_figures.depth_series(rows, "train_eval_err")
    title = sweep_figures.depth_finding(series, "training error")
    assert title.startswith("Deeper plain nets have a higher training error; residual nets do not")
    assert "plain 6.0% at 20 → 22.0% at 56 layers" in title
    # Residual nets that degrade as well: the title must not claim they do not.
    for row in rows:
        if row["model"] == "resnet56":
            row["train_eval_err"] = 0.5
    series = sweep_figures.depth_series(rows, "train_eval_err")
    title = sweep_figures.depth_finding(series, "training error")
    assert title.startswith("Deeper plain and residual nets have a higher training error")


def test_pre_activation_nets_are_their_own_series_beside_the_original_resnets():
    # depth_1000_preact: preact-110 and preact-1001 beside ResNet-110; the two 110-layer nets must
    # not be averaged into one point
    rows = [{"model": model, "setting": model, "family": "residual", "depth": depth,
             "train_eval_err": err}
            for model, depth, errs in [("resnet110", 110, (0.10, 0.12)),
                                       ("preact_resnet110", 110, (0.30, 0.32)),
                                       ("preact_resnet1001", 1001, (0.20, 0.22))]
            for err in errs]
    series = sweep_figures.depth_series(rows, "train_eval_err")
    assert [point[:2] for point in series[("residual", "")]] == [(110, pytest.approx(11.0))]
    assert [point[:2] for point in series[("residual", "pre-activation")]] == [
        (110, pytest.approx(31.0)), (1001, pytest.approx(21.0))]
    assert [point[4] for point in series[("residual", "pre-activation")]] == [
        "preact_resnet110", "preact_resnet1001"]
    assert series[("residual", "")][0][4] == "resnet110"
    title = sweep_figures.depth_finding(series, "training error")
    assert title.startswith("No family's training error rises with depth")
    assert "residual pre-activation 31.0% at 110 → 21.0% at 1001 layers" in title


def test_what_a_sweep_gets_comes_from_its_rows_not_its_folder_name(sweep, tmp_path):
    # plain and residual nets at two depths: error against depth, whatever the folder is called
    collect.collect([sweep], tmp_path / "results" / "lr_sweep", argv=[])
    written = redraw.redraw(tmp_path / "results" / "lr_sweep", tmp_path / "figures")
    assert {path.name for path in written} == {
        "train_error_vs_depth.png", "test_error_vs_depth.png", "curves.png", "summary.md",
        "table.md", "depth_table.md"}
    rows = [dict(row, depth=56) for row in collect.run_rows([sweep])[0]]
    assert not redraw.spans_depths(rows) and not redraw.is_lr_control(rows)
    lr_rows = [{"model": "resnet56", "setting": "resnet56", "lr": 0.1},
               {"model": "resnet56", "setting": "resnet56 optim.lr=0.2", "lr": 0.2}]
    assert redraw.is_lr_control(lr_rows)
    assert not redraw.is_lr_control([*lr_rows, {"model": "resnet56", "lr": 0.1,
                                                "setting": "resnet56 model.norm=none"}])
    assert redraw.compares_add_and_concat([{"family": "residual"}, {"family": "dense"}])


def test_redraw_hands_measurement_folders_to_their_experiment(tmp_path, monkeypatch, capsys):
    import zoo.experiments.__main__ as experiments_cli

    def draw_elsewhere(folder: Path, out: Path) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        (out / "direct.png").write_bytes(b"\x89PNG direct")
        return [out / "direct.png"]

    monkeypatch.setitem(experiments_cli.EXPERIMENTS, "toy2", (None, draw_elsewhere))
    for name in ("toy2", "unknown"):
        (tmp_path / "results" / name).mkdir(parents=True)
        (tmp_path / "results" / name / "meta.json").write_text(json.dumps({"experiment": name}))
    (tmp_path / "results" / "toy2_named_folder").mkdir()  # no meta.json: the name decides nothing
    written = redraw.redraw(tmp_path / "results", tmp_path / "figures")
    # "unknown" and the folder without meta.json are skipped, not fatal
    assert written == [tmp_path / "figures" / "toy2" / "direct.png"]
    assert written[0].read_bytes() == b"\x89PNG direct"
    said = capsys.readouterr().err
    assert "no redraw for experiment 'unknown'" in said and "no meta.json" in said


def test_command_line_errors_are_one_line(tmp_path, capsys):
    assert collect.main(["redraw", str(tmp_path / "missing")]) == 2
    assert "collect RUN_DIRS" in capsys.readouterr().err
    assert collect.main(["collect", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: no runs under")


def test_redraw_draws_the_gradient_flow_during_training_from_its_committed_runs(tmp_path):
    import shutil

    from zoo.results.redraw import redraw

    results = tmp_path / "gradient_flow_training"
    committed = Path(__file__).resolve().parents[1] / "docs" / "results"
    shutil.copytree(committed / "gradient_flow_training", results)
    for root in (results, tmp_path):  # the folder itself, or the folder of all results
        written = redraw(root, tmp_path / "figures")
        names = sorted(path.name for path in written)
        assert names == ["gradient_flow_depth.png", "gradient_flow_ratio.png",
                         "gradient_flow_vs_training_error.png"]
        figures = tmp_path / "figures" / "gradient_flow_training"
        assert all(path.parent == figures for path in written)
