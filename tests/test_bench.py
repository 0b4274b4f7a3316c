"""The benchmark harness (issue 7): every subcommand runs at its smallest size on the CPU and
prints JSON lines with the required fields; the time-to-accuracy experiment composes.

Only the shape and sanity of the results are checked here, never a speed: performance is
shown by ``python -m zoo.bench`` and recorded in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import REPO

import zoo
from zoo import bench
from zoo.training.precision import cpu_flags

ENVIRONMENT_FIELDS = ("device", "device_name", "cpu_model", "cpu_cores", "cpu_avx512_bf16",
                      "cpu_amx_bf16", "torch", "pytorch_lightning", "size")
COMPARISON_FIELDS = ("benchmark", "case", "zoo", "baseline", "zoo_img_per_s", "baseline_img_per_s",
                     "ratio", "ratio_paired_median", "repeats")
TINY = ["--device", "cpu", "--size", "small", "--repeats", "1", "--threads", "1"]


def check_records(records: list[dict], out_file, benchmark: str) -> None:
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert lines == records  # --out appends exactly what was printed
    for record in records:
        assert record["benchmark"] == benchmark
        for field in ENVIRONMENT_FIELDS + COMPARISON_FIELDS:
            assert field in record, f"{record['case']}: no {field!r}"
        assert record["device"] == "cpu" and record["cpu_cores"] >= 1
        assert record["torch"] == __import__("torch").__version__
        flags = cpu_flags()
        assert (record["cpu_avx512_bf16"], record["cpu_amx_bf16"]) == (
            "avx512_bf16" in flags, "amx_bf16" in flags)
        assert record["zoo_img_per_s"] > 0 and record["baseline_img_per_s"] > 0
        assert math.isclose(record["ratio"], record["zoo_img_per_s"] / record["baseline_img_per_s"])
        assert record["ratio_paired_median"] > 0


def test_loop_compares_every_variant_with_the_hand_written_loop(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    records = bench.main(["loop", *TINY, "--steps", "4", "--warmup-steps", "1", "--batch-size", "4",
                          "--precision", "32-true", "--out", str(out)])
    check_records(records, out, "loop")
    assert [r["case"] for r in records] == list(bench.LOOP_VARIANTS)
    for record in records:
        assert record["model"] == "resnet20" and record["batch_size"] == 4
        assert record["timed_steps"] == 2 and record["precision"] == "32-true"
        assert record["target"] == (0.97 if record["case"] == "zoo" else 0.95)
    # the same baseline figure in every record: one baseline, measured in the same run
    assert len({r["baseline_img_per_s"] for r in records}) == 1
    stdout = capsys.readouterr().out
    printed = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert printed == records
    # and a table for a person at the end: one row per record
    table = stdout.split("\nbenchmark ")[1].splitlines()
    assert len(table) == 2 + len(records) and "zoo_gradient_flow" in table[3]


def test_loop_at_both_precisions_reports_bf16_over_fp32_from_the_same_run(tmp_path):
    out = tmp_path / "bench.jsonl"
    records = bench.main(["loop", *TINY, "--steps", "3", "--warmup-steps", "1", "--batch-size", "2",
                          "--model", "resnet8", "--input", "1x28x28", "--variants", "zoo",
                          "--precision", "32-true", "bf16-mixed", "--channels-last", "off",
                          "--out", str(out)])
    check_records(records, out, "loop")
    by_case = {(r["case"], r["precision"]): r for r in records}
    assert sorted(by_case) == [
        ("hand_loop_bf16_over_fp32", "bf16-mixed / 32-true"), ("zoo", "32-true"),
        ("zoo", "bf16-mixed"), ("zoo_bf16_over_fp32", "bf16-mixed / 32-true")]
    fp32, bf16 = by_case[("zoo", "32-true")], by_case[("zoo", "bf16-mixed")]
    for record in records:
        assert record["input_shape"] == [1, 28, 28] and record["model"] == "resnet8"
    assert fp32["channels_last"] is False and bf16["channels_last"] is False
    # each ratio is of figures measured in this run: the zoo's and the hand loop's rates
    zoo_speedup = by_case[("zoo_bf16_over_fp32", "bf16-mixed / 32-true")]
    assert zoo_speedup["zoo_img_per_s"] == bf16["zoo_img_per_s"]
    assert zoo_speedup["baseline_img_per_s"] == fp32["zoo_img_per_s"]
    hand_speedup = by_case[("hand_loop_bf16_over_fp32", "bf16-mixed / 32-true")]
    assert hand_speedup["zoo_img_per_s"] == bf16["baseline_img_per_s"]
    assert hand_speedup["baseline_img_per_s"] == fp32["baseline_img_per_s"]
    assert hand_speedup["target"] == (1.6 if records[0]["cpu_avx512_bf16"] or
                                      records[0]["cpu_amx_bf16"] else None)


def test_precision_auto_is_what_train_py_picks():
    from zoo.training.precision import choose_precision

    args = bench.parse_args(["loop", "--device", "cpu"])
    bench.cli.resolve_numerics(args, __import__("torch").device("cpu"))
    assert args.precisions == [choose_precision("auto", "cpu", 32)[0]]
    assert args.channels_last_of == {args.precisions[0]: True}  # channels_last=auto on the CPU


def test_a_bad_input_shape_gets_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(["loop", "--input", "28x28"])
    assert exit_.value.code == 2
    assert "'28x28': give CxHxW, e.g. 1x28x28" in capsys.readouterr().err


def test_loop_refuses_a_run_with_no_timed_step():
    with pytest.raises(ValueError, match="no timed step"):
        bench.main(["loop", *TINY, "--steps", "2", "--warmup-steps", "1", "--variants", "zoo"])


def test_data_compares_the_device_loader_with_the_best_dataloader(tmp_path):
    out = tmp_path / "bench.jsonl"
    records = bench.main(["data", *TINY, "--workers", "0,1", "--images", "256",
                          "--batch-size", "64", "--precision", "32-true", "--out", str(out)])
    check_records(records, out, "data")
    assert [r["case"] for r in records] == [
        "cifar_shape_iterate", "fashion_mnist_shape_iterate", "cifar_shape_resnet20"]
    for record in records:
        per_workers = record["baseline_epoch_s_per_workers"]
        assert set(per_workers) == {"0", "1"}
        # the baseline is the fastest worker count, and its img/s matches its epoch time
        assert record["baseline_epoch_s"] == min(per_workers.values())
        assert per_workers[str(record["baseline_workers"])] == record["baseline_epoch_s"]
        assert record["zoo_epoch_s"] > 0
        assert math.isclose(record["baseline_img_per_s"] * record["baseline_epoch_s"],
                            record["images_per_epoch"], rel_tol=1e-9)
    assert records[0]["image_shape"] == [3, 32, 32] and records[1]["image_shape"] == [1, 28, 28]


def test_models_measures_speed_and_memory_with_and_without_memory_efficient_mode(tmp_path):
    out = tmp_path / "bench.jsonl"
    records = bench.main(["models", *TINY, "--models", "resnet20,densenet40_12",
                          "--batch-size", "2", "--steps", "1", "--warmup-steps", "1",
                          "--no-compile", "--precision", "32-true", "--out", str(out)])
    check_records(records, out, "models")
    assert [(r["model"], r["memory_efficient"], r["compiled"]) for r in records] == [
        ("resnet20", False, False), ("resnet20", True, False),
        ("densenet40_12", False, False), ("densenet40_12", True, False),
    ]
    for record in records:
        assert record["image_size"] == 32
        if record["memory_method"].startswith("unavailable"):
            continue  # torch < 2.5 has no MemTracker
        assert record["peak_memory_mb"] > 0
        assert math.isclose(record["memory_ratio"],
                            record["peak_memory_mb"] / record["baseline_peak_memory_mb"])
        parameters_mb = zoo.count_parameters(zoo.create(record["model"])) * 4 / 2**20
        # weights + momentum + gradients at least; the baseline row is its own baseline
        assert record["peak_memory_mb"] > 3 * parameters_mb
        if not record["memory_efficient"]:
            assert record["ratio"] == 1.0 and record["memory_ratio"] == 1.0
    dense, dense_checkpointed = records[2], records[3]
    # checkpointing the bottlenecks must save memory (issue target: <= 0.55x at full size)
    assert dense_checkpointed["peak_memory_mb"] < dense["peak_memory_mb"]


def test_models_at_both_precisions(tmp_path):
    out = tmp_path / "bench.jsonl"
    records = bench.main(["models", *TINY, "--models", "resnet20", "--batch-size", "2",
                          "--steps", "1", "--warmup-steps", "1", "--no-compile",
                          "--precision", "32-true", "bf16-mixed", "--out", str(out)])
    check_records(records, out, "models")
    assert [(r["case"], r["precision"]) for r in records] == [
        ("resnet20_eager", "32-true"), ("resnet20_eager_memory_efficient", "32-true"),
        ("resnet20_eager", "bf16-mixed"), ("resnet20_eager_memory_efficient", "bf16-mixed"),
        ("resnet20_bf16_over_fp32", "bf16-mixed / 32-true")]
    fp32, bf16, speedup = records[0], records[2], records[4]
    assert speedup["zoo_img_per_s"] == bf16["zoo_img_per_s"]
    assert speedup["baseline_img_per_s"] == fp32["zoo_img_per_s"]
    if not bf16["memory_method"].startswith("unavailable"):
        assert (bf16["peak_memory_mb"] > 0
                and bf16["baseline_peak_memory_mb"] == bf16["peak_memory_mb"])


def test_native_resolution_per_family():
    assert bench.native_input("resnet20", "full")[:2] == (32, 256)
    assert bench.native_input("densenet_bc_100_12", "full")[0] == 32
    assert bench.native_input("preact_resnet164", "full")[0] == 32
    side, _, options = bench.native_input("resnet50", "full")
    assert side == 224 and options == {"stem": "imagenet"}
    assert bench.native_input("densenet121", "full")[0] == 224
    for size in bench.SIZES:  # every default model exists, and every family is covered
        names = bench.MODEL_SIZES[size]["models"]
        families = {zoo.describe(name)["family"] for name in names}
        assert families == {"cifar_resnet", "resnet", "preact_resnet", "densenet"}


def test_environment_names_the_cpu():
    import os

    from zoo.training.precision import cpu_model

    env = bench.environment(__import__("torch").device("cpu"), "small")
    cores = len(os.sched_getaffinity(0))  # the cores this process may use, not the host's
    assert env["device_name"].startswith(f"{cpu_model()} ({cores} cores, ")
    assert env["cpu_cores"] == cores and env["cpu_model"] == cpu_model() and env["size"] == "small"


# ---------------------------------------------------------------- the time-to-accuracy recipe


def test_fmnist_speed_experiment_composes(compose):
    # every value the overlay sets wins over train.yaml's and the groups' defaults (the overlay's
    # keys are read from its file, not restated here), and the result resolves
    from omegaconf import OmegaConf

    overlay = OmegaConf.load(REPO / "configs" / "experiment" / "fmnist_speed.yaml")
    cfg = compose("experiment=fmnist_speed")
    OmegaConf.to_container(cfg, resolve=True)
    settings = {key: value for key, value in flatten(OmegaConf.to_container(overlay)).items()
                if not key.startswith(("defaults", "hydra"))}
    assert len(settings) >= 5
    for key, value in settings.items():
        assert OmegaConf.select(cfg, key) == value, key
    picked = {key.split()[-1].strip("/"): name for entry in overlay.defaults
              for key, name in entry.items()}  # "override /model": "resnet18"
    assert cfg.model.name == picked["model"] and cfg.data.name == picked["data"]


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_fmnist_speed_has_a_cpu_smoke_variant(compose):
    cfg = compose("experiment=fmnist_speed", "trainer=cpu", "trainer.precision=32-true",
                  "channels_last=false", "data.train_subset=256", "data.batch_size=32",
                  "trainer.max_epochs=1")
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.precision == "32-true"
    assert cfg.data.batch_size == 32 and cfg.trainer.max_epochs == 1
    assert cfg.channels_last is False


# ---------------------------------------------------------------- the CUDA paths


@pytest.mark.gpu
def test_every_benchmark_runs_on_cuda_with_bf16_channels_last_and_compile(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.fail("marked gpu but torch sees no CUDA device")
    out = tmp_path / "bench.jsonl"
    tiny = ["--device", "cuda", "--size", "small", "--repeats", "1", "--out", str(out)]
    records = bench.main(["loop", *tiny, "--steps", "6", "--warmup-steps", "2", "--compile"])
    records += bench.main(["data", *tiny, "--workers", "0,2", "--images", "1024"])
    records += bench.main(["models", *tiny, "--models", "resnet20,densenet40_12", "--compile"])
    for record in records:
        assert record["device"] == "cuda" and record["device_name"] == torch.cuda.get_device_name()
        assert record["zoo_img_per_s"] > 0 and record["baseline_img_per_s"] > 0
    assert all(r["precision"] == "bf16-mixed" and r["channels_last"] for r in records
               if r["benchmark"] in ("loop", "models"))
    models = [r for r in records if r["benchmark"] == "models"]
    assert {r["compiled"] for r in models} == {False, True}
    assert all(r["memory_method"] == "torch.cuda.max_memory_allocated" for r in models)
