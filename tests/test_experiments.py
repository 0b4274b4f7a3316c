"""The skip-connection experiments: configs compose, the non-training experiments measure what
they claim, write meta.json and redraw from their tidy files (the lesion's own tests:
tests/test_lesion.py; zoo.results.report's: tests/test_report.py)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zoo
from zoo import experiments
from zoo.experiments import gradients, lesion, lesion_figures, memory, tidy
from zoo.experiments.__main__ import main
from zoo.results import report
from zoo.runs import reader

REPO = Path(__file__).resolve().parents[1]
# The overlays of issue 6 (other overlays in configs/experiment/ are tested by their owners).
SKIP_EXPERIMENTS = ("degradation", "depth_1000", "explosion", "add_vs_concat")
EXPERIMENTS = [n for n in SKIP_EXPERIMENTS
               if (REPO / "configs" / "experiment" / f"{n}.yaml").exists()]


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_config_composes(compose, name):
    cfg = compose(f"experiment={name}")
    zoo.describe(cfg.model.name)  # a registered model
    assert cfg.data.name in ("fashion_mnist", "cifar10", "cifar100")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_overlay_sets_its_group(compose, name):
    # train.yaml lists _self_ first, so an overlay's keys win over train.yaml's own
    assert compose(f"experiment={name}").group == name


@pytest.mark.parametrize("name", ["depth_1000", "add_vs_concat"])
def test_deep_resnet_overlays_warm_up(compose, name):
    # He et al. warm their 110- and 1202-layer nets up (train.yaml now warms every run up too)
    assert compose(f"experiment={name}").scheduler.warmup_fraction > 0


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_sweep_names_registered_models(name):
    from omegaconf import OmegaConf

    overlay = OmegaConf.load(REPO / "configs" / "experiment" / f"{name}.yaml")
    sweep = OmegaConf.select(overlay, "hydra.sweeper.params.model")
    if sweep is None:
        pytest.skip(f"{name} is a single run, not a sweep")
    for model in str(sweep).split(","):
        zoo.describe(model)  # raises for a name that is not in the registry


def test_degradation_sweeps_plain_and_residual_twins():
    from omegaconf import OmegaConf

    overlay = OmegaConf.load(REPO / "configs" / "experiment" / "degradation.yaml")
    models = str(overlay.hydra.sweeper.params.model).split(",")
    assert {"plain20", "plain56", "resnet20", "resnet56"} <= set(models)


# ---------------------------------------------------------------- gradient at init


def test_gradient_at_init_plain_gradient_departs_from_the_head_with_depth():
    """At depth 56 the plain net's stem gradient is off the head's by orders of magnitude
    (with BatchNorm it explodes rather than vanishes, Yang et al. 2019); the ResNet's is not."""
    rows = experiments.gradient_at_init(
        [("plain56", "plain", 56), ("resnet56", "ResNet", 56)], seeds=(0,), batch_size=4,
        image_size=16)
    summary = {row["model"]: row for row in experiments.summarise_gradients(rows)}
    plain = abs(math.log10(summary["plain56"]["first_over_head"]))
    residual = abs(math.log10(summary["resnet56"]["first_over_head"]))
    assert residual < 1.0  # within 10x of the head
    assert plain > residual + 2.0  # at least 100x further off


def test_gradient_at_init_without_normalisation_shows_the_textbook_picture(tmp_path):
    """No BatchNorm: the plain net's gradient *vanishes* toward the input, the ResNet's does not
    vanish (its activations grow about 2x in variance per block instead)."""
    nets = experiments.gradient_nets([56], others=False, norms=["none"])
    assert nets == [("plain56", "plain (no norm)", 56, {"norm": "none"}),
                    ("resnet56", "ResNet (no norm)", 56, {"norm": "none"})]
    rows = experiments.gradient_at_init(nets, seeds=(0,), batch_size=4, image_size=16)
    summary = {row["model"]: row for row in experiments.summarise_gradients(rows)}
    assert set(summary) == {"plain56 norm=none", "resnet56 norm=none"}
    assert summary["plain56 norm=none"]["first_over_head"] < 1e-2
    assert summary["resnet56 norm=none"]["first_over_head"] > 0.1
    paths = experiments.plot_gradient_at_init(rows, tmp_path)
    assert all(p.stat().st_size > 0 for p in paths)


def test_gradient_summary_survives_an_overflowing_net():
    rows = [{"model": "plain1202", "family": "plain", "depth": 1202, "seed": seed,
             "unit_index": unit, "unit_name": "u", "stage": "s", "grad_norm": value}
            for seed, values in enumerate([(math.inf, 1.0), (1e30, 2.0)])
            for unit, value in enumerate(values)]
    (row,) = experiments.summarise_gradients(rows)
    assert row["first_unit_grad_norm"] == math.inf and math.isnan(row["first_unit_grad_norm_std"])
    assert row["head_grad_norm"] == 1.5


def test_gradient_at_init_rows_cover_every_unit(tmp_path):
    rows = experiments.gradient_at_init([("resnet8", "ResNet", 8)], seeds=(0, 1), batch_size=2,
                                        image_size=8)
    units = zoo.create("resnet8").depth_units()
    assert len(rows) == 2 * len(units)
    assert all(row["grad_norm"] > 0 for row in rows)
    paths = experiments.plot_gradient_at_init(rows, tmp_path)
    assert all(p.stat().st_size > 0 for p in paths)


def test_ratio_summary_is_the_mean_and_std_of_per_seed_ratios():
    # stem / middle / head norms per seed: ratios 2, 2, 3 (the ratio of the means would be 2.5)
    norms = {0: (2.0, 7.0, 1.0), 1: (4.0, 7.0, 2.0), 2: (9.0, 7.0, 3.0)}
    rows = [{"model": "plain20", "family": "plain", "norm": "batch", "depth": 20, "seed": seed,
             "unit_index": unit, "unit_name": "u", "stage": "s", "grad_norm": value}
            for seed, values in norms.items() for unit, value in enumerate(values)]
    (row,) = experiments.summarise_gradients(rows)
    assert row["seeds"] == 3 and row["head_grad_norm"] == pytest.approx(2.0)
    assert row["stem_over_head_mean"] == pytest.approx(7 / 3)
    spread = math.sqrt(((2 - 7 / 3) ** 2 * 2 + (3 - 7 / 3) ** 2) / 2)  # sample std (n - 1)
    assert row["stem_over_head_std"] == pytest.approx(spread)
    assert row["first_over_head"] == pytest.approx(2.5)
    assert row["first_unit_grad_norm_std"] == pytest.approx(math.sqrt(26 / 2))


# ---------------------------------------------------------------- memory


def test_memory_checkpointing_keeps_fewer_activations():
    normal = experiments.measure_memory("resnet8", False, batch_size=2, image_size=8, steps=1)
    efficient = experiments.measure_memory("resnet8", True, batch_size=2, image_size=8, steps=1)
    assert normal["saved_for_backward_mb"] > efficient["saved_for_backward_mb"] > 0
    assert normal["parameters"] == efficient["parameters"]
    assert normal["step_time_ms"] > 0
    # the peak is the benchmark's measure: at least weights + gradients + momentum (fp32)
    weights_gradients_momentum = 3 * 4 * normal["parameters"] / 2**20
    assert normal["train_peak_mb"] >= efficient["train_peak_mb"] > weights_gradients_momentum


def test_memory_rows_hold_training_and_inference_peaks():
    rows = memory.memory_rows(["resnet8"], [16], report=lambda row: None, batch_size=4,
                              image_size=8, steps=1)
    assert [(r["model"], r["memory_efficient"], r["group"]) for r in rows] == [
        ("resnet8", False, "comparison"), ("resnet8", True, "comparison"),
        ("densenet_bc_16_12", False, "densenet_depth"),
        ("densenet_bc_16_12", True, "densenet_depth")]
    for row in rows:
        # inference keeps no gradients, momentum or saved activations, but holds the weights
        assert row["weights_mb"] < row["inference_peak_mb"] < row["train_peak_mb"]
    # checkpointing changes only what backward needs
    assert rows[0]["inference_peak_mb"] == pytest.approx(rows[1]["inference_peak_mb"])


def test_densenet_bc_of_any_depth_is_bc_100_with_fewer_layers():
    registered = zoo.create("densenet_bc_100_12", num_classes=10)
    built = memory.build_net("densenet_bc_100_12", False)
    assert zoo.count_parameters(built) == zoo.count_parameters(registered)
    dense_layers = [u for u in memory.build_net("densenet_bc_40_12", False).depth_units()
                    if u.stage.startswith("dense")]
    assert len(dense_layers) == 3 * 6  # (40 - 4) / 6 bottleneck layers per block
    with pytest.raises(ValueError, match="6n\\+4"):
        memory.build_net("densenet_bc_42_12", False)


def test_memory_concatenation_keeps_more_than_addition():
    # DenseNet-BC-100-12 (0.8M parameters) against ResNet-56 (0.85M): concatenation keeps every
    # earlier feature map, so far more activation memory at about the same size.
    resnet = experiments.measure_memory("resnet56", False, batch_size=2, image_size=8, steps=1)
    dense = experiments.measure_memory("densenet_bc_100_12", False, batch_size=2, image_size=8,
                                       steps=1)
    # 1.9x at 8 px, 6x at 16 px
    assert dense["saved_for_backward_mb"] > 1.5 * resnet["saved_for_backward_mb"]


# ---------------------------------------------------------------- command line, meta.json, redraw


def test_gradient_command_writes_meta_and_redraws_from_its_csv(tmp_path, monkeypatch):
    out = tmp_path / "grad"
    argv = ["gradient_at_init", "--out", str(out), "--depths", "8", "--seeds", "2",
            "--batch-size", "2", "--image-size", "8", "--no-others"]
    assert main(argv) == 0
    meta = tidy.read_meta(out)
    assert meta["experiment"] == "gradient_at_init"
    assert meta["command"].endswith("-m zoo.experiments " + " ".join(argv))
    assert meta["machine"]["cpu"] and meta["machine"]["cpu_cores"] >= 1
    assert meta["torch"] == torch.__version__ and meta["wall_seconds"] > 0
    assert meta["git_commit"] == "unknown" or len(meta["git_commit"]) == 40
    assert meta["files"] == ["gradient_at_init.csv", "gradient_at_init_summary.csv"]
    rows = tidy.read_csv(out / "gradient_at_init.csv")
    nets = [("plain8", "batch"), ("resnet8", "batch"), ("plain8 norm=none", "none"),
            ("resnet8 norm=none", "none")]
    assert {(r["model"], r["norm"], r["seed"]) for r in rows} == {
        (model, norm, seed) for model, norm in nets for seed in (0, 1)}
    figures = [out / "gradient_at_init_ratio.png", out / "gradient_at_init_profile.png"]
    for figure in figures:
        figure.unlink()
    monkeypatch.setattr(gradients, "gradient_at_init", None)  # redrawing must not measure
    assert main(["redraw", str(out)]) == 0
    assert all(figure.stat().st_size > 0 for figure in figures)


def test_git_commit_outside_a_repository_is_unknown(tmp_path):
    assert tidy.git_commit(tmp_path) == "unknown"


def _lesion_rows(run: str, model: str, accuracies: list[float]) -> tuple[list[dict], list[dict]]:
    facts = {"run": run, "model": model, "skip": "x", "split": "test", "images": 10, "chance": 0.1}
    single = [{**facts, "unit_index": i - 1, "unit_name": f"u{i}", "stage": "s",
               "downsampling": i == 2, "deleted": "intact" if i == 0 else "bypassed", "accuracy": a}
              for i, a in enumerate(accuracies)]
    randomised = [{**facts, "k": k, "draw": d, "deleted_units": "u1", "accuracy": 0.5 + 0.1 * d}
                  for k in range(3) for d in range(2 if k else 1)]
    return single, randomised


def test_lesion_and_memory_figures_redraw_from_their_csv_files(tmp_path):
    lesion_dir, memory_dir = tmp_path / "lesion", tmp_path / "memory"
    # unit 2 is a downsampling block (no median of one-block deletions counts it)
    # runs of one model (seeds) are pooled: a block's point is its mean over the runs
    plain = _lesion_rows("0-plain20", "plain20", [0.9, 0.1, float("nan"), 0.3, 0.2])
    plain_again = _lesion_rows("2-plain20", "plain20", [0.8, 0.3, float("nan"), 0.1, 0.4])
    resnet = _lesion_rows("1-resnet20", "resnet20", [0.95, 0.9, 0.8, 0.93, 0.91])
    single, randomised = (plain[i] + plain_again[i] + resnet[i] for i in (0, 1))
    tidy.write_csv(lesion_dir / "lesion_single.csv", single, lesion.SINGLE_COLUMNS)
    tidy.write_csv(lesion_dir / "lesion_random.csv", randomised, lesion.RANDOM_COLUMNS)
    tidy.write_meta(lesion_dir, "lesion", 1.0, ["lesion"])
    finding = lesion_figures.lesion_finding(tidy.read_csv(lesion_dir / "lesion_single.csv"))
    # 90% of intact: plain20 (mean 0.85) keeps none of u1, u3, u4; resnet20 (0.95) all three
    assert finding.endswith("(mean over seeds): plain20 0/3, resnet20 3/3")
    row = {"skip": "x", "device": "cpu", "batch_size": 64, "image_size": 32, "parameters": 1,
           "weights_mb": 1.0, "saved_for_backward_mb": 2.0, "step_time_ms": 1.0, "measured_by": "m"}
    nets = [("resnet56", 56, "comparison", 10.0), ("densenet_bc_40_12", 40, "densenet_depth", 20.0),
            ("densenet_bc_64_12", 64, "densenet_depth", 40.0)]
    rows = [{**row, "model": m, "depth": d, "memory_efficient": e, "group": g, "train_peak_mb": t,
             "inference_peak_mb": t / 4} for m, d, g, t in nets for e in (False, True)]
    tidy.write_csv(memory_dir / "memory.csv", rows, memory.MEMORY_COLUMNS)
    tidy.write_meta(memory_dir, "memory", 1.0, ["memory"])
    assert main(["redraw", str(lesion_dir), str(memory_dir)]) == 0
    assert (lesion_dir / "lesion.png").stat().st_size > 0
    assert (memory_dir / "memory.png").stat().st_size > 0


def test_bad_input_gets_one_error_line(tmp_path, capsys):
    assert main(["lesion", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path)]) == 2
    assert main(["gradient_at_init", "--out", str(tmp_path), "--seeds", "0"]) == 2
    assert main(["redraw", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)
    assert "no checkpoint" in lines[0] and "--seeds" in lines[1] and "meta.json" in lines[2]


# What each overlay's sweep gives at a tiny size: every job runs (a diverged job does not stop
# its sweep), and the sweep exits 3 when one of them diverged, as these are meant to.
TINY_SWEEPS = {
    # plain1202 overflows at step 0
    "depth_1000": (["plain1202", "resnet1202", "preact_resnet1001"], 3),
    # model.norm=batch trains, model.norm=none is stopped
    "explosion": (["resnet56", "resnet56"], 3),
    "add_vs_concat": (["resnet56", "resnet110", "densenet_bc_100_12"], 0),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY_SWEEPS))
def test_experiment_sweep_runs_tiny_to_completion(tmp_path, name):
    models, exit_code = TINY_SWEEPS[name]
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable, str(REPO / "train.py"), "-m", f"experiment={name}", "data=digits",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "trainer.accelerator=cpu", "data.batch_size=8",
        "data.loader=device", "logger=csv", "callbacks.progress_bar=none",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    result = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    runs = reader.find_run_dirs([sweep_dir])
    assert [reader.read_run(r).model for r in runs] == models
    written = report.write_report([sweep_dir], tmp_path / "report")
    assert written["figure"].stat().st_size > 0


@pytest.mark.slow
def test_degradation_sweep_tiny_then_report_and_lesion(tmp_path):
    """The real overlay's sweep (4 nets) on digits, 3 batches each; then the report and the
    lesion."""
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable, str(REPO / "train.py"), "-m", "experiment=degradation", "data=digits",
        # four of the overlay's ten nets and one of its three seeds (command line over sweeper)
        "model=plain20,plain56,resnet20,resnet56", "seed=0",
        "trainer.max_epochs=1", "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "trainer.accelerator=cpu",
        "data.batch_size=32", "data.num_workers=0", "logger=csv", "callbacks.progress_bar=none",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    result = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = reader.find_run_dirs([sweep_dir])
    models = ["plain20", "plain56", "resnet20", "resnet56"]
    assert [reader.read_run(r).model for r in runs] == models
    written = report.write_report([sweep_dir], tmp_path / "report")
    assert written["figure"].stat().st_size > 0
    assert "| resnet56 |" in written["summary"].read_text()

    checkpoints = [runs[0], runs[2] / "checkpoints" / "last.ckpt"]  # a run directory, a file
    rows, randomised = experiments.lesion_runs(
        checkpoints, split="val", max_images=64, max_deleted=2, draws=2, bf16=True,
        random_max_images=32, calibration_images=64, gain_images=32)
    assert {(r["model"], r["k"]) for r in randomised} == {
        (m, k) for m in ("plain20", "resnet20") for k in range(3)}
    assert all(r["images"] == 64 and r["chance"] == 0.1 and r["seed"] == 0 for r in rows)
    assert all(r["images"] == 32 for r in randomised)  # the k-random subset
    deletable = [r for r in rows if r["deleted"] != "cannot be deleted"]
    assert all(0 <= r["accuracy_bn_reestimated"] <= 1 for r in deletable)  # the control ran
    gains = {r["model"]: r["residual_gain"] for r in rows if r["unit_name"] == "layer1.0"}
    assert gains["resnet20"] > 0 and math.isnan(gains["plain20"])  # plain blocks have no gain
    assert {r["model"] for r in rows} == {"plain20", "resnet20"}
    resnet_rows = [r for r in rows if r["model"] == "resnet20" and r["unit_index"] >= 0]
    assert [r["deleted"] for r in resnet_rows] == ["shortcut only"] * 9
    plain_rows = [r for r in rows if r["model"] == "plain20" and r["unit_index"] >= 0]
    refused = [r["unit_name"] for r in plain_rows if r["deleted"] == "cannot be deleted"]
    assert refused == ["layer2.0", "layer3.0"]
    assert experiments.plot_lesion(rows, tmp_path / "lesion", randomised).stat().st_size > 0


def test_committed_commands_name_paths_as_typed_in_the_repository(tmp_path):
    argv = [str(tmp_path / "multirun" / "x"), f"--out={tmp_path}/docs/results/y", "/elsewhere/z"]
    assert tidy.as_typed(argv, tmp_path) == ["multirun/x", "--out=docs/results/y", "/elsewhere/z"]
    repo = Path(__file__).resolve().parents[1]
    for meta in (repo / "docs" / "results").rglob("meta.json"):
        assert "/work/" not in meta.read_text() and "/tmp/" not in meta.read_text(), meta


def test_lesion_of_shipped_weights_that_do_not_exist_is_one_line(tmp_path, capsys):
    assert main(["lesion", "resnet1202:fashion_mnist", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no shipped fashion_mnist weights for resnet1202")
    assert err.count("\n") == 1


def test_lesion_of_a_densenet_says_so_before_reading_data(tmp_path, capsys):
    from zoo import weights

    dense = [e["name"] for e in weights.manifest() if e["name"].startswith("densenet")]
    assert dense, "the zoo ships DenseNet weights (docs/WEIGHTS.md)"
    out = tmp_path / "lesion"
    assert main(["lesion", f"{dense[0]}:fashion_mnist", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{dense[0]} has no block that can be deleted" in err and "concatenate" in err
    assert err.count("\n") == 1 and not out.exists()  # no table of NaN, no folder


def test_the_gradient_table_keeps_two_significant_figures_and_names_overflow():
    from zoo.experiments import gradients
    rows = [{"model": m, "family": f, "depth": d, "stem_over_head_mean": v, "stem_over_head_std": e}
            for m, f, d, v, e in [("plain20", "plain", 20, 4.2, 0.85),
                                  ("plain56", "plain", 56, 1826.0, 632.0),
                                  ("plain110", "plain", 110, 1.55e7, 2.16e6),
                                  ("resnet20", "ResNet", 20, 0.39, 0.097),
                                  ("plain1202", "plain", 1202, float("nan"), float("nan"))]]
    table = gradients.summary_markdown(rows).splitlines()
    assert table[0] == "| depth | plain | ResNet |"
    assert table[2] == "| 20 | 4.2 ± 0.8 | 0.39 ± 0.10 |"
    assert table[3] == "| 56 | 1,826 ± 632 |  |"
    assert table[4] == "| 110 | 1.6e7 ± 2.2e6 |  |"
    assert table[5] == "| 1202 | float32 overflow |  |"
