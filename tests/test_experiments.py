"""The skip-connection experiments: configs compose, the non-training experiments measure what
they claim, the lesion puts the network back, and the report reads their sweeps (zoo.report's own
tests: tests/test_report.py)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zoo
from zoo import experiments, report
from zoo.experiments import LesionError, ShortcutOnly, lesioned

REPO = Path(__file__).resolve().parents[1]
# The overlays of issue 6 (other overlays in configs/experiment/ are tested by their owners).
SKIP_EXPERIMENTS = ("degradation", "depth_1000", "explosion", "add_vs_concat")
EXPERIMENTS = [n for n in SKIP_EXPERIMENTS if (REPO / "configs" / "experiment" / f"{n}.yaml").exists()]


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
    # He et al. warm their 110- and 1202-layer nets up; train.yaml's default is no warm-up
    assert compose().scheduler.warmup_fraction == 0.0
    assert compose(f"experiment={name}").scheduler.warmup_fraction == pytest.approx(0.02)


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


# ---------------------------------------------------------------- lesion


def _net(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = zoo.create(name, num_classes=10, in_channels=1)
    net.train()
    with torch.no_grad():  # non-trivial BN statistics, so that eval mode is not the identity
        net(torch.randn(16, 1, 16, 16))
    return net.eval()


@pytest.mark.parametrize("name", ["resnet8", "plain8", "preact_resnet110"])
def test_lesion_restores_the_network(name):
    net = _net(name)
    x = torch.randn(4, 1, 16, 16)
    before_state = {k: v.clone() for k, v in net.state_dict().items()}
    blocks = [u.name for u in net.depth_units() if u.stage not in ("stem", "head")]
    before_modules = [net.get_submodule(name) for name in blocks]
    with torch.no_grad():
        before = net(x)
    deletable = [u for u in net.depth_units() if u.stage not in ("stem", "head")]
    changed = 0
    for unit in deletable:
        try:
            with lesioned(net, unit.name) as replacement, torch.no_grad():
                assert net.get_submodule(unit.name) is replacement
                changed += not torch.allclose(net(x), before)
        except LesionError:
            assert not unit.module.skip  # only plain blocks that change the shape are refused
    assert changed > 0  # the lesions did something
    with torch.no_grad():
        after = net(x)
    assert torch.equal(after, before)
    assert all(net.get_submodule(name) is module for name, module in zip(blocks, before_modules))
    state = net.state_dict()
    assert state.keys() == before_state.keys()
    assert all(torch.equal(state[k], before_state[k]) for k in state)


def test_lesion_restores_on_error():
    net = _net("resnet8")
    original = net.get_submodule("layer1.0")
    with pytest.raises(RuntimeError), lesioned(net, "layer1.0"):
        raise RuntimeError("boom")
    assert net.get_submodule("layer1.0") is original


def test_residual_lesion_keeps_only_the_shortcut():
    net = _net("resnet8")
    block = net.get_submodule("layer2.0")  # stride 2: the option-A shortcut pads and subsamples
    x = torch.relu(torch.randn(2, 16, 8, 8))
    with lesioned(net, "layer2.0") as replacement, torch.no_grad():
        assert isinstance(replacement, ShortcutOnly)
        assert torch.equal(replacement(x), torch.relu(block.shortcut_branch(x)))
        identity_block = net.get_submodule("layer1.0")
    with lesioned(net, "layer1.0") as replacement, torch.no_grad():
        # post-activation identity block without f: relu(x) = x for the non-negative x it receives
        assert torch.equal(replacement(x), x)
    assert net.get_submodule("layer1.0") is identity_block
    assert "layer1.0.conv1.weight" in net.state_dict()


def test_preact_lesion_has_no_relu_after_the_addition():
    net = _net("preact_resnet110")
    x = torch.randn(2, 16, 8, 8)  # negative entries survive: nothing follows a pre-act sum
    with lesioned(net, "layer1.3") as replacement, torch.no_grad():
        assert torch.equal(replacement(x), x)


def test_plain_lesion_bypasses_or_refuses():
    net = _net("plain8")
    with lesioned(net, "layer1.0") as replacement:
        assert isinstance(replacement, torch.nn.Identity)
    with pytest.raises(LesionError, match="changes the shape"), lesioned(net, "layer2.0"):
        pass
    dense = zoo.create("densenet40_12", num_classes=10, in_channels=1)
    layer = next(u for u in dense.depth_units() if u.stage == "dense1")
    with pytest.raises(LesionError), lesioned(dense, layer.name):
        pass


def test_lesion_network_rows():
    net = _net("resnet8")
    batches = [(torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,)))]
    rows = experiments.lesion_network(net, batches)
    assert rows[0]["deleted"] == "intact"
    assert [r["unit_name"] for r in rows[1:]] == [f"layer{s}.0" for s in (1, 2, 3)]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)


# ---------------------------------------------------------------- gradient at init


def test_gradient_at_init_plain_gradient_departs_from_the_head_with_depth():
    """At depth 56 the plain net's stem gradient is off the head's by orders of magnitude
    (with BatchNorm it explodes rather than vanishes, Yang et al. 2019); the ResNet's is not."""
    rows = experiments.gradient_at_init(
        [("plain56", "plain", 56), ("resnet56", "ResNet", 56)], seeds=(0,), batch_size=4, image_size=16)
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
    rows = [{"model": "plain1202", "family": "plain", "depth": 1202, "seed": seed, "unit_index": unit,
             "unit_name": "u", "stage": "s", "grad_norm": value}
            for seed, values in enumerate([(math.inf, 1.0), (1e30, 2.0)]) for unit, value in enumerate(values)]
    (row,) = experiments.summarise_gradients(rows)
    assert row["first_unit_grad_norm"] == math.inf and math.isnan(row["first_unit_grad_norm_std"])
    assert row["head_grad_norm"] == 1.5


def test_gradient_at_init_rows_cover_every_unit(tmp_path):
    rows = experiments.gradient_at_init([("resnet8", "ResNet", 8)], seeds=(0, 1), batch_size=2, image_size=8)
    units = zoo.create("resnet8").depth_units()
    assert len(rows) == 2 * len(units)
    assert all(row["grad_norm"] > 0 for row in rows)
    paths = experiments.plot_gradient_at_init(rows, tmp_path)
    assert all(p.stat().st_size > 0 for p in paths)


# ---------------------------------------------------------------- memory


def test_memory_checkpointing_keeps_fewer_activations():
    normal = experiments.measure_memory("resnet8", False, batch_size=2, image_size=8, steps=1)
    efficient = experiments.measure_memory("resnet8", True, batch_size=2, image_size=8, steps=1)
    assert normal["saved_for_backward_mb"] > efficient["saved_for_backward_mb"] > 0
    assert normal["parameters"] == efficient["parameters"]
    assert normal["step_time_ms"] > 0
    # the peak is the benchmark's measure: at least weights + gradients + momentum (fp32)
    weights_gradients_momentum = 3 * 4 * normal["parameters"] / 2**20
    assert normal["peak_memory_mb"] >= efficient["peak_memory_mb"] > weights_gradients_momentum


def test_memory_concatenation_keeps_more_than_addition():
    # DenseNet-BC-100-12 (0.8M parameters) against ResNet-56 (0.85M): concatenation keeps every
    # earlier feature map, so far more activation memory at about the same size.
    resnet = experiments.measure_memory("resnet56", False, batch_size=2, image_size=8, steps=1)
    dense = experiments.measure_memory("densenet_bc_100_12", False, batch_size=2, image_size=8, steps=1)
    assert dense["saved_for_backward_mb"] > 1.5 * resnet["saved_for_backward_mb"]  # 1.9x at 8 px, 6x at 16 px


# What each overlay's sweep gives at a tiny size: every job runs (a diverged job does not stop
# its sweep), and the sweep exits 3 when one of them diverged, as these are meant to.
TINY_SWEEPS = {
    "depth_1000": (["plain1202", "resnet1202", "preact_resnet1001"], 3),  # plain1202 overflows at step 0
    "explosion": (["resnet56", "resnet56"], 3),  # model.norm=batch trains, model.norm=none is stopped
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
        "data.loader=device", "logger=csv", "callbacks.progress_bar=none", f"hydra.sweep.dir={sweep_dir}",
    ]
    result = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    runs = report.find_run_dirs([sweep_dir])
    assert [report.read_run(r).model for r in runs] == models
    written = report.write_report([sweep_dir], tmp_path / "report")
    assert written["figure"].stat().st_size > 0


@pytest.mark.slow
def test_degradation_sweep_tiny_then_report_and_lesion(tmp_path):
    """The real overlay's sweep (4 nets) on digits, 3 batches each; then the report and the lesion."""
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable, str(REPO / "train.py"), "-m", "experiment=degradation", "data=digits",
        "trainer.max_epochs=1", "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "trainer.accelerator=cpu",
        "data.batch_size=32", "data.num_workers=0", "logger=csv", "callbacks.progress_bar=none",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    result = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = report.find_run_dirs([sweep_dir])
    assert [report.read_run(r).model for r in runs] == ["plain20", "plain56", "resnet20", "resnet56"]
    written = report.write_report([sweep_dir], tmp_path / "report")
    assert written["figure"].stat().st_size > 0
    assert "| resnet56 |" in written["summary"].read_text()

    checkpoints = [runs[0] / "checkpoints" / "last.ckpt", runs[2] / "checkpoints" / "last.ckpt"]
    rows = experiments.lesion_checkpoints(checkpoints, split="val", max_images=64)
    assert {r["model"] for r in rows} == {"plain20", "resnet20"}
    resnet_rows = [r for r in rows if r["model"] == "resnet20" and r["unit_index"] >= 0]
    assert [r["deleted"] for r in resnet_rows] == ["shortcut only"] * 9
    plain_rows = [r for r in rows if r["model"] == "plain20" and r["unit_index"] >= 0]
    assert [r["unit_name"] for r in plain_rows if r["deleted"] == "cannot be deleted"] == ["layer2.0", "layer3.0"]
    assert experiments.plot_lesion(rows, tmp_path / "lesion").stat().st_size > 0
