"""zoo.results.plot: gradient-flow and residual-gain figures from the callbacks' tidy files."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from zoo.results.plot import _labels, main, run_label
from zoo.runs.reader import read_run

GRADIENT_FLOW_COLUMNS = ["step", "unit_index", "unit_name", "stage", "grad_norm"]
RESIDUAL_GAIN_COLUMNS = ["epoch", "step", "unit_index", "unit_name", "stage", "residual_gain"]


def _write(path: Path, columns: list[str], rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


def _config(run_dir: Path, text: str) -> Path:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(text)
    return run_dir


def test_plot_draws_pngs_from_two_runs(tmp_path: Path) -> None:
    runs = []
    for name, slope in (("plain20", 0.5), ("resnet20", 0.05)):
        run_dir = _config(tmp_path / name, f"model:\n  name: {name}\ndata:\n  name: digits\n")
        _write(run_dir / "gradient_flow.csv", GRADIENT_FLOW_COLUMNS,
               [[step, i, f"u{i}", "body", 10 ** (-slope * (10 - i)) * (1 + step)]
                for step in (0, 50, 100) for i in range(11)])
        _write(run_dir / "residual_gain.csv", RESIDUAL_GAIN_COLUMNS,
               [[epoch, 10 * epoch, i, f"u{i}", "body", 0.1 * i / (epoch + 1)]
                for epoch in (0, 1) for i in range(1, 10)])
        runs.append(run_dir)
    assert run_label(read_run(runs[0])) == "plain20/digits"

    out = tmp_path / "plots"
    written = main(["gradflow", *map(str, runs), "--out", str(out)])
    written += main(["gain", *map(str, runs), "--out", str(out)])
    written += main(["gradflow", *map(str, runs), "--out", str(out / "mean"), "--at", "mean"])
    assert {p.name for p in written} == {
        "gradient_flow_depth.png", "gradient_flow_ratio.png", "residual_gain.png"
    }
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_plot_labels_tell_sweep_siblings_apart(tmp_path: Path) -> None:
    runs = []
    for job, (norm, seed) in enumerate([("batch", 1), ("none", 1), ("none", 2)]):
        runs.append(_config(
            tmp_path / f"{job}-resnet56",
            f"seed: {seed}\nmodel:\n  name: resnet56\n  norm: {norm}\n"
            "  num_classes: ${data.num_classes}\n"
            "data:\n  name: digits\n  num_classes: 10\n"))
    assert _labels(runs)[1] == [
        "resnet56/digits model.norm=batch",
        "resnet56/digits model.norm=none (1-resnet56)",  # same model options: the directory decides
        "resnet56/digits model.norm=none (2-resnet56)",
    ]


def test_plot_command_line_on_a_bare_folder_of_tidy_files(tmp_path: Path) -> None:
    _write(tmp_path / "run" / "gradient_flow.csv", GRADIENT_FLOW_COLUMNS,
           [[0, 0, "conv1", "stem", 1.0], [0, 1, "linear", "head", 2.0]])
    assert _labels([tmp_path / "run"])[1] == ["run"]
    result = subprocess.run(
        [sys.executable, "-m", "zoo.results", "gradflow", str(tmp_path / "run"), "--out",
         str(tmp_path / "out")], capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "gradient_flow_depth.png").is_file()


def test_a_run_without_tidy_files_gets_one_line_saying_what_to_do(tmp_path: Path) -> None:
    _config(tmp_path / "run", "model:\n  name: plain20\n")
    result = subprocess.run([sys.executable, "-m", "zoo.results", "gain", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        (f"error: {tmp_path / 'run' / 'residual_gain.csv'} not found: was the run made with the "
         "measurement callbacks on (callbacks=default)?")]


def test_in_training_ratio_leaves_out_the_start_and_the_finding_reads_the_ranges(tmp_path):
    from zoo.results import plot
    from zoo.runs.reader import Run

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = ["step,unit_index,unit_name,stage,grad_norm"]
    for step, stem in ((0, 1000.0), (50, 4.0), (100, 2.0), (150, 3.0)):  # step 0: at init
        rows += [f"{step},0,conv1,stem,{stem}", f"{step},1,fc,head,1.0"]
    (run_dir / "gradient_flow.csv").write_text("\n".join(rows) + "\n")
    assert plot.in_training_ratio(Run(run_dir, {})) == 3.0  # median of 4, 2, 3; not 1000
    same = [("none", 0.5, 30.0), ("none", 2.0, 20.0), ("add", 1.0, 10.0), ("add", 4.0, 9.0)]
    assert plot.ratio_finding(same).startswith("plain and residual nets train with stem/head "
                                               "ratios in the same range (plain 0.5-2, residual")
    apart = [("none", 50.0, 30.0), ("add", 1.0, 10.0)]
    assert "different stem/head ratios" in plot.ratio_finding(apart)
