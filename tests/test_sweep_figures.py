"""zoo.results.sweep_figures: the addition-vs-concatenation and learning-rate figures state what
their rows show, and zoo.results.redraw routes each sweep to them."""

from __future__ import annotations

import csv

import pytest

from zoo.results import collect, redraw, sweep_figures


def _row(model: str, seed: int, test_acc: float, seconds: float, parameters: int,
         lr: float | None = None, train_err: float = 0.1, setting: str | None = None) -> dict:
    family = "dense" if model.startswith("densenet") else "residual"
    return {"run": f"{model}-s{seed}", "model": model, "depth": None, "family": family,
            "data": "fashion_mnist", "seed": seed, "setting": setting or model, "status": "done",
            "steps": 100, "train_eval_err": train_err, "test_acc": test_acc, "best_val_acc": None,
            "fit_seconds": seconds, "parameters": parameters, "lr": lr}


def _sweep(dense_acc: float, residual_acc: float) -> list[dict]:
    return ([_row("resnet20", s, residual_acc + 0.001 * s, 10.0 + s, 270_000) for s in range(3)]
            + [_row("densenet40_12", s, dense_acc - 0.001 * s, 100.0, 1_020_000)
               for s in range(3)])


def test_the_cost_title_compares_the_best_of_each_family_from_the_rows():
    points = sweep_figures._per_model(_sweep(dense_acc=0.80, residual_acc=0.77))
    title = sweep_figures.cost_finding(points)
    assert title.startswith("Concatenation beats addition: densenet40_12 20.1% vs resnet20 22.9%")
    assert "3.8x the parameters and 9.1x the training seconds" in title
    reversed_title = sweep_figures.cost_finding(
        sweep_figures._per_model(_sweep(dense_acc=0.70, residual_acc=0.77)))
    assert reversed_title.startswith("Addition beats concatenation")
    level = sweep_figures.cost_finding(
        sweep_figures._per_model(_sweep(dense_acc=0.7715, residual_acc=0.7695)))
    assert level.startswith("Addition and concatenation are level")


def test_only_the_default_setting_of_a_model_is_a_cost_point():
    rows = _sweep(0.8, 0.77) + [_row("resnet20", 0, 0.10, 5.0, 270_000, setting="resnet20 x=1")]
    assert sweep_figures._per_model(rows)["resnet20"]["test_err"][0] == pytest.approx(22.9)


def _write_runs(folder, rows):
    folder.mkdir(parents=True)
    with (folder / collect.RUNS_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, collect.RUN_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def test_redraw_routes_add_vs_concat_and_lr_folders_to_their_figures(tmp_path):
    _write_runs(tmp_path / "res" / "add_vs_concat", _sweep(0.8, 0.77))
    lr_rows = [_row("plain56", s, 0.6, 30.0, 850_000, lr=lr, train_err=err,
                    setting=f"plain56 optim.lr={lr}")
               for lr, err in ((0.05, 0.40), (0.1, 0.30), (0.2, 0.50)) for s in range(3)]
    _write_runs(tmp_path / "res" / "degradation_lr", lr_rows)
    written = {p.relative_to(tmp_path / "fig").as_posix()
               for p in redraw.redraw(tmp_path / "res", tmp_path / "fig")}
    assert {"add_vs_concat/error_vs_cost.png", "degradation_lr/error_vs_lr.png"} <= written
    assert "degradation_lr/train_error_vs_depth.png" not in written  # one depth: no depth plot
    assert (tmp_path / "fig" / "add_vs_concat" / "error_vs_cost.png").stat().st_size > 10_000


def test_the_curves_title_names_the_stopped_settings_and_the_best_one(tmp_path):
    def row(setting, model, seed, status, steps, test_acc):
        return {"setting": setting, "model": model, "family": "residual" if "res" in model
                else "plain", "depth": 56, "seed": seed, "status": status, "steps": steps,
                "test_acc": test_acc, "train_eval_err": None}
    rows = [row("resnet56 model.norm=none", "resnet56", s, "diverged", step, None)
            for s, step in enumerate([1, 2, 2])]
    rows += [row("resnet56 model.norm=batch", "resnet56", s, "done", 624, acc)
             for s, acc in enumerate([0.90, 0.91, 0.92])]
    rows += [row("plain56", "plain56", s, "done", 624, 0.80) for s in range(3)]
    groups = sweep_figures._setting_groups(rows)
    assert sweep_figures.curves_finding(groups) == (
        "1 of 3 settings stopped by the explosion guard (steps 1-2); "
        "lowest test error: resnet56 norm=batch, 9.0 ± 1.0%")
    colours = sweep_figures.setting_colours(groups)
    assert len({str(c) for c in colours.values()}) == 3  # two ResNet-56 settings: two colours
    assert sweep_figures.stopped_steps(groups["resnet56 model.norm=none"]) == [1, 2, 2]
    assert sweep_figures.plot_curves(rows, [], tmp_path / "curves.png").stat().st_size > 10_000


def test_an_option_sweep_names_its_settings_and_a_vit_sweep_counts_blocks():
    from zoo.results.sweep_figures import depth_finding, depth_series, depth_unit, setting_label

    assert setting_label("model.norm=post scheduler.warmup_fraction=0.0") == \
        "norm=post, warmup_fraction=0.0"
    rows = [{"model": model, "depth": depth, "family": family, "train_eval_err": err,
             "setting": f"{model} model.norm={norm}"}
            for model, depth, family, norm, err in (
                ("vit_mini_p7_d2", 2, "residual", "pre", 0.36),
                ("vit_mini_p7_d12", 12, "residual", "pre", 0.35),
                ("vit_mini_p7_d2", 2, "residual", "post", 0.42),
                ("vit_mini_p7_d12", 12, "residual", "post", 0.39),
                ("plain_vit_mini_p7_d2", 2, "plain", "pre", 0.37),
                ("plain_vit_mini_p7_d12", 12, "plain", "pre", 0.52))]
    unit = depth_unit(rows)
    title = depth_finding(depth_series(rows, "train_eval_err"), "training error", unit)
    assert unit == "blocks" and "residual norm=post 42.0% at 2 → 39.0% at 12 blocks" in title
    assert title.startswith("Deeper plain nets have a higher training error; residual nets do not")
    assert depth_unit([{**rows[0], "model": "resnet20"}]) == "layers"


def test_a_sweep_whose_meta_names_a_memory_folder_gets_a_memory_panel(tmp_path):
    import json

    from zoo.experiments.memory import MEMORY_COLUMNS, MEMORY_FILE

    sweep = tmp_path / "res" / "add_vs_concat_long"
    _write_runs(sweep, _sweep(0.8, 0.77))
    memory = tmp_path / "res" / "add_vs_concat_memory"
    memory.mkdir()
    with (memory / MEMORY_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, MEMORY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for model, efficient, peak in (("resnet20", False, 74.0), ("resnet20", True, 33.7),
                                       ("densenet40_12", False, 592.0)):
            writer.writerow({"model": model, "memory_efficient": efficient, "batch_size": 64,
                             "image_size": 28, "device": "cpu", "train_peak_mb": peak})
    (sweep / collect.META_FILE).write_text(json.dumps({"memory": "../add_vs_concat_memory"}))
    rows = redraw.measured_memory(sweep)
    points = sweep_figures._per_model(_sweep(0.8, 0.77))
    for model, peak in sweep_figures._memory_peaks(rows).items():
        points[model]["memory"] = (peak, 0.0)
    assert "9.1x the training seconds and 8.0x the training memory" in \
        sweep_figures.cost_finding(points)  # as built: 592 / 74, not the checkpointed 33.7
    redraw.redraw(tmp_path / "res", tmp_path / "fig")
    assert (tmp_path / "fig" / "add_vs_concat_long" / "error_vs_cost.png").is_file()
    (sweep / collect.META_FILE).write_text(json.dumps({"memory": "../gone"}))
    with pytest.raises(FileNotFoundError, match="names ../gone for memory"):
        redraw.measured_memory(sweep)


def test_collect_refuses_a_memory_folder_without_measurements(tmp_path):
    with pytest.raises(FileNotFoundError, match="no memory.csv; measure it first"):
        collect.collect([tmp_path], tmp_path / "out", [], memory=tmp_path / "nothing")


def test_curves_of_plain_and_residual_nets_of_one_depth_state_the_contrast():
    def rows(model, family, depth, acc):
        return [{**_row(model, s, acc, 10.0, 600_000), "family": family, "depth": depth}
                for s in range(3)]

    one_depth = {"plain_vit_mini_p7_d12": rows("plain_vit_mini_p7_d12", "plain", 12, 0.62),
                 "vit_mini_p7_d12": rows("vit_mini_p7_d12", "residual", 12, 0.75)}
    title = sweep_figures.curves_finding(one_depth)
    assert title.startswith("Best test error without skips 38.0 ± 0.0%, with skips 25.0 ± 0.0%")
    across = {**one_depth, "plain_vit_mini_p7_d2": rows("plain_vit_mini_p7_d2", "plain", 2, 0.8)}
    assert sweep_figures.curves_finding(across).startswith("lowest test error")
