"""Tests of the measurements (zoo/measure) and their callbacks (zoo/callbacks/); the figures
of zoo/results/plot.py are in test_plot.py.

The Lightning runs use a small LightningModule of their own around ``zoo.create`` so that they
test the callbacks alone, on random data, on the CPU."""

from __future__ import annotations

import copy
import csv
import glob
import math
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.plugins import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import zoo
from zoo.callbacks import (
    ExplosionGuard,
    GradientFlowCallback,
    ResidualGainCallback,
    TrainingDivergedError,
    build_measurement_callbacks,
)
from zoo.config.schemas import load_group_file
from zoo.measure.gradients import GradientNormMeter, SharedGradientNorms, residual_gains
from zoo.models.common import DepthUnit

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 16  # px: the CIFAR nets pool adaptively, so small images keep the runs fast
BATCH_SIZE = 8


class Classifier(pl.LightningModule):
    """The smallest LightningModule the callbacks need: ``self.net`` and a logged loss."""

    def __init__(self, net: nn.Module, lr: float = 0.05) -> None:
        super().__init__()
        self.net = net
        self.lr = lr

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor],
                      batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = F.cross_entropy(self.net(images), labels)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        accuracy = (self.net(images).argmax(1) == labels).float().mean()
        self.log("val/acc", accuracy)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def random_images(count: int, seed: int = 0, size: int = IMAGE_SIZE) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, size, size, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    return TensorDataset(images, labels)


def loaders(count: int = 32) -> tuple[DataLoader, DataLoader]:
    # No shuffling: step 0 sees the dataset's first batch, which the precision test recomputes.
    return (
        DataLoader(random_images(count, seed=0), batch_size=BATCH_SIZE),
        DataLoader(random_images(16, seed=1), batch_size=BATCH_SIZE),
    )


def trainer(tmp_path: Path, callbacks: list[pl.Callback], logger, **options) -> pl.Trainer:
    settings = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 2,
        "limit_train_batches": 3,
        "limit_val_batches": 1,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": str(tmp_path),
        "num_sanity_val_steps": 0,
    }
    settings.update(options)
    return pl.Trainer(callbacks=callbacks, logger=logger, **settings)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def unit_count(name: str) -> int:
    return len(zoo.create(name, num_classes=10).depth_units())


# ---------------------------------------------------------------- (a) plain vs residual


def stem_over_head_ratio(name: str, seed: int) -> float:
    torch.manual_seed(seed)
    net = zoo.create(name, num_classes=10)  # train mode: batch statistics, as in training
    generator = torch.Generator().manual_seed(1234)
    images = torch.randn(32, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (32,), generator=generator)
    F.cross_entropy(net(images), labels).backward()
    units = GradientNormMeter(net).measure().units.tolist()
    return units[0] / units[-1]


@pytest.mark.parametrize("seed", [0, 1])
def test_plain56_gradient_profile_is_far_from_flat_at_init_resnet56_is_not(seed: int) -> None:
    # Measured (seeds 0-2, batch 32, train-mode BN): plain56 stem/head = 2.9e3..7.9e3 -- the
    # gradient *grows* towards the input (BN plain nets explode at init: Philipp et al. 2018,
    # Yang et al. 2019) -- while resnet56 stays at 1.1..1.6. In eval mode (BN = identity at
    # init) plain56 instead vanishes towards the input (ratio ~0.06).
    plain = stem_over_head_ratio("plain56", seed)
    residual = stem_over_head_ratio("resnet56", seed)
    assert 0.2 < residual < 5.0
    assert abs(math.log10(plain)) > abs(math.log10(residual)) + 2.0  # 100x further from flat


def test_meter_matches_manual_norms() -> None:
    torch.manual_seed(0)
    net = zoo.create("resnet8", num_classes=10)
    images, labels = random_images(8)[:]
    F.cross_entropy(net(images), labels).backward()
    norms = GradientNormMeter(net).measure()
    for unit, measured in zip(net.depth_units(), norms.units.tolist(), strict=True):
        squares = sum(float(p.grad.double().square().sum()) for p in unit.module.parameters())
        assert measured == pytest.approx(math.sqrt(squares), rel=1e-5)
    total = math.sqrt(sum(float(p.grad.double().square().sum()) for p in net.parameters()))
    assert float(norms.total) == pytest.approx(total, rel=1e-5)
    assert norms.parameters.numel() == len(list(net.parameters()))


def test_meter_computes_norms_in_fp32_for_bf16_gradients() -> None:
    # bf16 gradients (a bf16-true net): the norm of the very same values must come out as in
    # fp32. A norm taken in bf16 keeps ~3 significant digits: off by ~1e-3 relative.
    torch.manual_seed(0)
    net = zoo.create("resnet20", num_classes=10)
    images, labels = random_images(16)[:]
    F.cross_entropy(net(images), labels).backward()
    bf16_net = copy.deepcopy(net).to(torch.bfloat16)
    for parameter, reference in zip(bf16_net.parameters(), net.parameters(), strict=True):
        parameter.grad = reference.grad.to(torch.bfloat16)
    norms = GradientNormMeter(bf16_net).measure()
    assert norms.units.dtype == norms.total.dtype == torch.float32
    for unit, measured in zip(bf16_net.depth_units(), norms.units.tolist(), strict=True):
        exact = math.sqrt(sum(float(p.grad.double().square().sum())
                              for p in unit.module.parameters()))
        assert measured == pytest.approx(exact, rel=1e-5)


def test_gradient_norms_under_bf16_autocast_read_as_fp32() -> None:
    # Same weights, same batch: the per-unit norms of a bf16-autocast backward are the fp32 ones
    # up to bf16's rounding of the activations (a few percent), not off by a dtype's range.
    torch.manual_seed(0)
    fp32_net = zoo.create("resnet20", num_classes=10)
    bf16_net = copy.deepcopy(fp32_net)
    images, labels = random_images(32)[:]
    F.cross_entropy(fp32_net(images), labels).backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(bf16_net(images), labels)
    loss.backward()
    fp32_norms = GradientNormMeter(fp32_net).measure()
    bf16_norms = GradientNormMeter(bf16_net).measure()
    assert bf16_norms.units.dtype == torch.float32
    assert torch.allclose(bf16_norms.units, fp32_norms.units, rtol=0.05)
    assert float(bf16_norms.total) == pytest.approx(float(fp32_norms.total), rel=0.03)


def test_meter_reads_through_torch_compile_wrapper() -> None:
    net = zoo.create("resnet8", num_classes=10)
    compiled = torch.compile(net)  # an OptimizedModule; not run, only unwrapped
    module = Classifier(compiled)
    from zoo.measure.gradients import network_of

    assert network_of(module) is net


# ---------------------------------------------------------------- (b) CSV, TensorBoard, tidy


def test_csv_tensorboard_and_tidy_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = zoo.create("resnet8", num_classes=10)
    train, val = loaders()
    csv_logger = CSVLogger(tmp_path, name="csv")
    tb_logger = TensorBoardLogger(tmp_path, name="tb")
    callbacks = [GradientFlowCallback(every_n_steps=2), ResidualGainCallback(probe_batch_size=4)]
    run = trainer(tmp_path, callbacks, [csv_logger, tb_logger])
    run.fit(Classifier(net), train, val)  # 2 epochs x 3 steps: logged steps 0, 2, 4

    units = net.depth_units()
    rows = read_csv(tmp_path / "gradient_flow.csv")
    assert list(rows[0]) == ["step", "unit_index", "unit_name", "stage", "grad_norm"]
    assert len(rows) == 3 * len(units)
    assert sorted({int(r["step"]) for r in rows}) == [0, 2, 4]
    assert [r["unit_name"] for r in rows[: len(units)]] == [u.name for u in units]
    assert [r["stage"] for r in rows[: len(units)]] == [u.stage for u in units]
    assert all(float(r["grad_norm"]) > 0 for r in rows)

    parameter_rows = read_csv(tmp_path / "gradient_flow_parameters.csv")
    assert len(parameter_rows) == 3 * len(list(net.parameters()))

    gains = read_csv(tmp_path / "residual_gain.csv")
    blocks = [u for u in units if u.stage.startswith("layer")]
    assert len(gains) == 2 * len(blocks)  # two validation epochs
    assert sorted({int(r["epoch"]) for r in gains}) == [0, 1]
    assert all(float(r["residual_gain"]) > 0 for r in gains)

    metrics = read_csv(Path(csv_logger.log_dir) / "metrics.csv")
    for key in ("grad_norm/first", "grad_norm/last", "grad_norm/first_over_last",
                "grad_norm/total"):
        logged = [(int(r["step"]), float(r[key])) for r in metrics if r.get(key)]
        assert [step for step, _ in logged] == [0, 2, 4], key
    first = {int(r["step"]): float(r["grad_norm/first"])
             for r in metrics if r.get("grad_norm/first")}
    tidy_first = {int(r["step"]): float(r["grad_norm"]) for r in rows if r["unit_index"] == "0"}
    assert first == pytest.approx(tidy_first, rel=1e-6)
    assert sum(1 for r in metrics if r.get("residual_gain/mean")) == 2

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(tb_logger.log_dir, size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    histograms = set(events.Tags()["histograms"])
    assert {"grad_flow/units", "grad_flow/stage/layer1", "grad_flow/parameters",
            "residual_gain/blocks"} <= histograms
    assert [e.step for e in events.Histograms("grad_flow/units")] == [0, 2, 4]
    assert "grad_norm/first_over_last" in events.Tags()["scalars"]


def test_plain_net_logs_no_residual_gain(tmp_path: Path) -> None:
    net = zoo.create("plain8", num_classes=10)
    assert residual_gains(net, torch.randn(2, 3, 16, 16)) == []
    train, val = loaders(16)
    csv_logger = CSVLogger(tmp_path, name="csv")
    run = trainer(tmp_path, [ResidualGainCallback(probe_batch_size=4)], csv_logger, max_epochs=1)
    run.fit(Classifier(net), train, val)
    assert not (tmp_path / "residual_gain.csv").exists()
    metrics = read_csv(Path(csv_logger.log_dir) / "metrics.csv")
    assert not any(key.startswith("residual_gain") for key in metrics[0])


# ---------------------------------------------------------------- (b) W&B offline


def wandb_records(run_file: Path):
    """Records of a W&B ``.wandb`` transaction log (LevelDB-style 32 KiB blocks of chunks)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    block, position, pending = 32768, 7, b""  # 7-byte file header: ident, magic, version
    while position + 7 <= len(data):
        left_in_block = block - position % block
        if left_in_block < 7:  # block trailer too small for a chunk header
            position += left_in_block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if length == 0 and kind == 0:  # zero padding up to the next block
            position += left_in_block
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def test_wandb_offline_run_has_histograms_and_gradient_flow_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    torch.manual_seed(0)
    net = zoo.create("resnet8", num_classes=10)
    train, val = loaders()
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="zoo-tests")
    callbacks = [GradientFlowCallback(every_n_steps=2), ResidualGainCallback(probe_batch_size=4)]
    try:
        trainer(tmp_path, callbacks, logger).fit(Classifier(net), train, val)
    finally:
        wandb.finish()

    (run_file,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    # wandb-core may still be writing the file's last block when finish() returns: wait for
    # the run's closing "exit" record before reading.
    for _ in range(600):
        records = list(wandb_records(Path(run_file)))
        if any(record.WhichOneof("record_type") == "exit" for record in records):
            break
        time.sleep(0.1)
    values: dict[str, list[str]] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = "/".join(item.nested_key) if item.nested_key else item.key
                values.setdefault(key, []).append(item.value_json)

    for histogram in ("grad_flow/units", "grad_flow/units_log10", "grad_flow/stage/layer1",
                      "grad_flow/stage/head", "grad_flow/parameters", "residual_gain/blocks"):
        assert (values.get(f"{histogram}/_type")
                and set(values[f"{histogram}/_type"]) == {'"histogram"'})
        assert f"{histogram}/bins" in values
    assert len(values["grad_flow/units/_type"]) == 3  # steps 0, 2, 4
    for scalar in ("grad_norm/first", "grad_norm/last", "grad_norm/first_over_last",
                   "grad_norm/total", "residual_gain/mean"):
        assert scalar in values, scalar
    assert values["grad_flow/table/_type"] == ['"table-file"']
    assert values["grad_flow/table/ncols"] == ["5"]
    assert values["grad_flow/table/nrows"] == [str(3 * len(net.depth_units()))]
    assert "grad_flow/chart_table/_type" in values  # the line chart's data
    assert values["residual_gain/table/_type"] == ['"table-file"']
    # Lightning's own x-axis rides along with every row the callbacks log.
    assert "trainer/global_step" in values


class ClassifierWithTest(Classifier):
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.log("test/acc", (self.net(images).argmax(1) == labels).float().mean())


@pytest.mark.parametrize("failing", ["histograms and tables", "end-of-training tables"])
def test_a_wandb_write_error_is_a_warning_and_training_and_test_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    # As on a full disk (issue 15, item 4): W&B writes media (histograms, tables) to files in the
    # run directory from the training process, so those payloads raise OSError; plain scalars
    # still go through. "end-of-training tables": the depth charts of on_train_end alone fail.
    import wandb

    media = (wandb.Histogram, wandb.Table) if failing == "histograms and tables" else (wandb.Table,)

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="zoo-tests")
    log = logger.experiment.log
    failures: list[str] = []

    def log_or_fail(payload, *args, **kwargs):
        if any(isinstance(v, media) for v in payload.values()):
            failures.append(min(payload))
            raise OSError(28, "No space left on device")
        return log(payload, *args, **kwargs)

    monkeypatch.setattr(logger.experiment, "log", log_or_fail)
    torch.manual_seed(0)
    train, val = loaders()
    callbacks = [GradientFlowCallback(every_n_steps=1), ResidualGainCallback(probe_batch_size=4)]
    run = trainer(tmp_path, callbacks, logger)
    module = ClassifierWithTest(zoo.create("resnet8", num_classes=10))
    try:
        with warnings.catch_warnings(record=True) as caught:  # all of them: none may escape
            warnings.simplefilter("always", RuntimeWarning)
            run.fit(module, train, val)
        results = run.test(module, val)
    finally:
        wandb.finish()
    assert run.global_step == 6 and "test/acc" in results[0]
    # One failure per callback: a logger that failed once is left out, not retried every step;
    # each said so in one warning, caught here rather than left for the test summary.
    assert len(failures) == 2
    said = sorted(str(w.message) for w in caught if issubclass(w.category, RuntimeWarning))
    assert [line.split(" (")[0] for line in said] == [
        "WandbLogger could not write the gradient-flow measurements",
        "WandbLogger could not write the residual-gain measurements"], said
    assert all("No space left on device" in line for line in said)
    # The tidy files, the run's record of the measurements, are complete.
    assert sorted({int(r["step"])
                   for r in read_csv(tmp_path / "gradient_flow.csv")}) == list(range(6))
    assert len(read_csv(tmp_path / "residual_gain.csv")) == 2 * 3  # 2 validations, 3 blocks


# ---------------------------------------------------------------- (c) mixed precision


class GradientCapture(pl.Callback):
    """The gradients as the optimizer will see them, at each step."""

    def __init__(self) -> None:
        self.grads: dict[int, list[torch.Tensor]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads[trainer.global_step] = [p.grad.detach().clone()
                                           for p in pl_module.net.parameters()]


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16)]
)
def test_logged_norms_are_the_unscaled_gradients_under_autocast(
    tmp_path: Path, precision: str, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    net = zoo.create("resnet8", num_classes=10)
    initial = copy.deepcopy(net)
    train, val = loaders()
    capture = GradientCapture()
    if precision == "16-mixed":
        # Lightning turns CPU 16-mixed into bf16-mixed unless it is given the plugin itself.
        scaler = torch.amp.GradScaler(device="cpu")
        options = {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=scaler)]}
    else:
        options = {"precision": precision}
    run = trainer(tmp_path, [GradientFlowCallback(every_n_steps=1), capture], False,
                  max_epochs=1, limit_train_batches=2, **options)
    run.fit(Classifier(net), train, val)
    if precision == "16-mixed":  # the loss really was scaled, so an unscaled read matters
        assert (run.precision_plugin.scaler is not None
                and run.precision_plugin.scaler.get_scale() > 1)

    rows = read_csv(tmp_path / "gradient_flow.csv")
    logged = {(int(r["step"]), int(r["unit_index"])): float(r["grad_norm"]) for r in rows}
    units = net.depth_units()
    unit_of = {id(p): i for i, u in enumerate(units) for p in u.module.parameters()}
    for step, grads in capture.grads.items():
        squares = [0.0] * len(units)
        for parameter, grad in zip(net.parameters(), grads, strict=True):
            squares[unit_of[id(parameter)]] += float(grad.double().square().sum())
        for index, square in enumerate(squares):
            assert logged[(step, index)] == pytest.approx(math.sqrt(square), rel=1e-5)

    # An independent step-0 computation: same weights, same batch, same autocast, no scaler.
    images, labels = next(iter(train))
    with torch.autocast("cpu", dtype=dtype):
        loss = F.cross_entropy(initial(images), labels)
    loss.backward()
    for index, unit in enumerate(initial.depth_units()):
        manual = math.sqrt(sum(float(p.grad.double().square().sum())
                               for p in unit.module.parameters()))
        assert logged[(0, index)] == pytest.approx(manual, rel=2e-2)


# ---------------------------------------------------------------- (d) DDP


DDP_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import pytorch_lightning as pl
import torch
import zoo
from pytorch_lightning.loggers import CSVLogger
from test_callbacks import Classifier, loaders
from zoo.callbacks import ExplosionGuard, GradientFlowCallback, ResidualGainCallback

if __name__ == "__main__":
    root = Path(sys.argv[1])
    torch.manual_seed(0)
    train, val = loaders()
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, limit_train_batches=2,
        limit_val_batches=1, num_sanity_val_steps=0, log_every_n_steps=1,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=str(root), logger=CSVLogger(root, name="csv"),
        callbacks=[GradientFlowCallback(every_n_steps=1), ResidualGainCallback(probe_batch_size=4),
                   ExplosionGuard(check_every_n_steps=1)],  # its checks are collectives: no hang
    )
    trainer.fit(Classifier(zoo.create("resnet8", num_classes=10)), train, val)
    print("rank", trainer.global_rank, "done")
"""


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_only_rank_zero_writes(tmp_path: Path) -> None:
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, check=False,
        timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    units = unit_count("resnet8")
    rows = read_csv(tmp_path / "gradient_flow.csv")
    assert len(rows) == 2 * units  # two steps, written once: rank 1 wrote nothing
    assert sorted({int(r["step"]) for r in rows}) == [0, 1]
    assert len(read_csv(tmp_path / "residual_gain.csv")) == 3  # resnet8: one validation, 3 blocks


# ---------------------------------------------------------------- (e) explosion guard


class PlainMLP(nn.Module):
    """A deep fully connected net without normalisation or skips: it diverges at a huge lr."""

    def __init__(self, depth: int = 8, width: int = 64) -> None:
        super().__init__()
        layers = [nn.Flatten(), nn.Linear(3 * IMAGE_SIZE * IMAGE_SIZE, width)]
        for _ in range(depth - 2):
            layers += [nn.ReLU(), nn.Linear(width, width)]
        layers += [nn.ReLU(), nn.Linear(width, 10)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def depth_units(self) -> list[DepthUnit]:
        linears = [(name, m) for name, m in self.layers.named_children()
                   if isinstance(m, nn.Linear)]
        stages = ["stem"] + ["body"] * (len(linears) - 2) + ["head"]
        return [DepthUnit(f"layers.{name}", stage, m)
                for (name, m), stage in zip(linears, stages, strict=True)]


def test_explosion_guard_stops_before_a_diverged_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train = DataLoader(random_images(128, seed=0), batch_size=BATCH_SIZE)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True,
                                 save_on_exception=True)
    guard = ExplosionGuard(max_loss=1.0e4, max_grad_norm=1.0e8, check_every_n_steps=10)
    run = trainer(tmp_path, [guard, checkpoint], False, enable_checkpointing=True,
                  max_epochs=1, limit_train_batches=16)
    module = Classifier(PlainMLP(), lr=5.0)
    with pytest.raises(TrainingDivergedError) as caught:
        run.fit(module, train)
    message = str(caught.value)
    assert "training diverged at step" in message
    bad_step = int(message.split("training diverged at step ")[1].split(":")[0])
    assert bad_step >= 1  # step 0 is sane: there is a good checkpoint to name
    assert "largest gradient norm in unit 'layers." in message
    assert caught.value.step == bad_step
    last = tmp_path / "ckpt" / "last.ckpt"
    assert f"Last good checkpoint: {last}" in message

    saved = torch.load(last, weights_only=True, map_location="cpu")
    # Saved after step `bad_step` finished would mean global_step > bad_step.
    assert saved["global_step"] <= bad_step
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())
    restored = Classifier(PlainMLP())
    restored.load_state_dict(saved["state_dict"])
    assert all(torch.isfinite(p).all() for p in restored.parameters())
    # No checkpoint at all from after divergence, not even the save-on-exception one.
    steps = [int(p.stem.split("step=")[1]) for p in (tmp_path / "ckpt").glob("*step=*.ckpt")]
    assert steps and max(steps) <= bad_step


def test_explosion_guard_names_the_first_bad_step_when_it_checks_late(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train = DataLoader(random_images(128, seed=0), batch_size=BATCH_SIZE)
    # max_loss 0: every step is "bad", so the first bad step is 0 while the check runs at 4.
    guard = ExplosionGuard(max_loss=0.0, max_grad_norm=None, check_every_n_steps=4)
    run = trainer(tmp_path, [guard], False, max_epochs=1, limit_train_batches=16)
    with pytest.raises(TrainingDivergedError, match=r"diverged at step 0: .*Detected at step 4"):
        run.fit(Classifier(zoo.create("resnet8", num_classes=10)), train)


@pytest.mark.parametrize(("max_loss", "max_grad_norm", "went_bad"), [
    (None, 1.0e-3, "unit"),  # the gradient norm breaks its bound: the unit the message names
    (1.0e-3, None, "loss"),  # only the loss does
])
def test_explosion_guard_says_what_went_bad(
    tmp_path: Path, max_loss: float | None, max_grad_norm: float | None, went_bad: str
) -> None:
    torch.manual_seed(0)
    train = DataLoader(random_images(64, seed=0), batch_size=BATCH_SIZE)
    guard = ExplosionGuard(max_loss=max_loss, max_grad_norm=max_grad_norm, check_every_n_steps=1)
    run = trainer(tmp_path, [guard], False, max_epochs=1, limit_train_batches=2)
    with pytest.raises(TrainingDivergedError) as caught:
        run.fit(Classifier(PlainMLP()), train)
    error = caught.value
    assert error.step == 0
    if went_bad == "loss":
        assert error.unit == "loss"
    else:  # run.json's diverged.unit: a depth unit of the network, as the message names it
        assert error.unit in [unit.name for unit in PlainMLP().depth_units()]
        assert f"largest gradient norm in unit '{error.unit}'" in str(error)


def test_explosion_guard_says_when_every_gradient_is_nan(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train = DataLoader(random_images(64, seed=0), batch_size=BATCH_SIZE)
    net = zoo.create("resnet8", num_classes=10)
    with torch.no_grad():
        net.linear.weight.fill_(float("nan"))  # NaN logits: a NaN loss and NaN in every gradient
    guard = ExplosionGuard(check_every_n_steps=1)
    run = trainer(tmp_path, [guard], False, max_epochs=1, limit_train_batches=4)
    with pytest.raises(TrainingDivergedError) as caught:
        run.fit(Classifier(net), train)
    message = str(caught.value)
    assert "diverged at step 0: loss nan" in message
    assert "every unit's gradient is NaN" in message
    assert caught.value.unit == "loss"  # no unit stands out: the loss went bad first
    assert "no gradient norms measured" not in message
    assert "checked every step and before every checkpoint save" in message


def gradient_readers(how: str, tidy_file: str) -> list[pl.Callback]:
    """A gradient-flow view logging every step and a guard checking every step."""
    if how == "factory":
        return build_measurement_callbacks({
            "gradient_flow": {"every_n_steps": 1, "tidy_file": tidy_file,
                              "parameter_tidy_file": None},
            "explosion_guard": {"check_every_n_steps": 1},
        })
    shared = SharedGradientNorms() if how == "shared" else None
    return [GradientFlowCallback(every_n_steps=1, tidy_file=tidy_file, parameter_tidy_file=None,
                                 gradients=shared),
            ExplosionGuard(check_every_n_steps=1, gradients=shared)]


@pytest.mark.parametrize(("how", "measurements_per_step"),
                         [("factory", 1), ("shared", 1), ("apart", 2)])
def test_gradient_flow_and_guard_share_one_measurement_per_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, measurements_per_step: int
) -> None:
    calls: list[int] = []
    measure = GradientNormMeter.measure

    def counted(meter: GradientNormMeter):
        calls.append(1)
        return measure(meter)

    monkeypatch.setattr(GradientNormMeter, "measure", counted)
    train = DataLoader(random_images(48, seed=0), batch_size=BATCH_SIZE)
    run = trainer(tmp_path, gradient_readers(how, "flow.csv"), False, max_epochs=1,
                  limit_train_batches=6)
    run.fit(Classifier(zoo.create("resnet8", num_classes=10)), train)
    assert run.global_step == 6
    # Built together (by the config's factory, or handed one SharedGradientNorms) both callbacks
    # read the same norms of each step; built apart, each measures for itself.
    assert len(calls) == 6 * measurements_per_step
    rows = read_csv(tmp_path / "flow.csv")
    assert sorted({int(r["step"]) for r in rows}) == list(range(6))


def test_shared_measurement_is_redone_after_each_backward_only() -> None:
    torch.manual_seed(0)
    net = zoo.create("resnet8", num_classes=10)
    images, labels = random_images(8)[:]
    F.cross_entropy(net(images), labels).backward()
    shared = SharedGradientNorms()
    meter, first = shared.current(net)
    assert shared.current(net)[1] is first  # a second reader: the same tensors, no new kernel
    F.cross_entropy(net(images * 2), labels).backward()  # accumulates: new gradients
    assert shared.current(net)[1] is first  # nobody said so: still the old reading
    shared.gradients_changed()
    second = shared.current(net)[1]
    assert second is not first and not torch.equal(second.units, first.units)
    other = zoo.create("resnet8", num_classes=10)
    assert shared.meter(other) is not meter  # another network gets its own meter


def test_explosion_guard_leaves_a_healthy_run_alone(tmp_path: Path) -> None:
    train, val = loaders()
    run = trainer(tmp_path, [ExplosionGuard(check_every_n_steps=1)], False)
    run.fit(Classifier(zoo.create("resnet8", num_classes=10)), train, val)
    assert run.global_step == 6


# ---------------------------------------------------------------- (f) residual gain


def test_residual_gain_is_zero_when_the_last_bn_is_zeroed() -> None:
    torch.manual_seed(0)
    net = zoo.create("resnet8", num_classes=10)
    for block in (unit.module for unit in net.depth_units() if unit.stage.startswith("layer")):
        nn.init.zeros_(block.bn2.weight)  # f(x) = bn2(...) = beta = 0: the block is the identity
    net.train()
    running_mean = net.layer1[0].bn1.running_mean.clone()
    gains = residual_gains(net, torch.randn(4, 3, 16, 16))
    assert [unit.name for _, unit, _ in gains] == ["layer1.0", "layer2.0", "layer3.0"]
    assert [gain for _, _, gain in gains] == [0.0, 0.0, 0.0]
    assert net.training and net.layer1[0].bn1.training  # modes restored
    assert torch.equal(net.layer1[0].bn1.running_mean, running_mean)  # eval mode: stats untouched
    assert all(not module._forward_pre_hooks for module in net.modules())  # hooks removed


def test_residual_gain_matches_a_direct_computation() -> None:
    torch.manual_seed(0)
    net = zoo.create("resnet8", num_classes=10).eval()
    probe = torch.randn(4, 3, 16, 16)
    gains = {unit.name: gain for _, unit, gain in residual_gains(net, probe)}
    with torch.no_grad():
        x = net.relu(net.bn1(net.conv1(probe)))
        block = net.layer1[0]
        expected = (block.residual_branch(x).flatten(1).norm(dim=1)
                    / x.flatten(1).norm(dim=1)).mean()
    assert gains["layer1.0"] == pytest.approx(float(expected), rel=1e-5)


# ---------------------------------------------------------------- config


def test_build_measurement_callbacks_from_the_real_config() -> None:
    callbacks_config = load_group_file(REPO / "configs" / "callbacks" / "default.yaml")
    config = OmegaConf.create({"trainer": {"log_every_n_steps": 7}, "callbacks": callbacks_config})
    built = build_measurement_callbacks(config.callbacks)
    assert [type(c) for c in built] == [GradientFlowCallback, ResidualGainCallback, ExplosionGuard]
    assert built[0].every_n_steps == 7
    assert built[1].probe_batch_size == 64
    assert (built[2].max_loss, built[2].max_grad_norm) == (1.0e4, 1.0e8)

    none = load_group_file(REPO / "configs" / "callbacks" / "none.yaml")
    assert build_measurement_callbacks(none) == []
    with pytest.raises(ValueError, match="callbacks.gradient_flow"):
        build_measurement_callbacks({"gradient_flow": {"enabled": True, "every_n_step": 5}})


# ---------------------------------------------------------------- host syncs


def test_gradient_flow_syncs_once_per_logged_step_and_never_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    torch.manual_seed(0)
    net = zoo.create("resnet8", num_classes=10)
    images, labels = random_images(4)[:]
    F.cross_entropy(net(images), labels).backward()
    callback = GradientFlowCallback(every_n_steps=5)
    fake_trainer = SimpleNamespace(global_step=0, is_global_zero=True, loggers=[],
                                   default_root_dir=str(tmp_path))
    reads: list[str] = []
    for method in ("item", "tolist", "cpu", "numpy"):
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, _name=method, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    for step in range(11):
        fake_trainer.global_step = step
        callback.on_before_optimizer_step(fake_trainer, Classifier(net), None)
    monkeypatch.undo()
    assert reads == ["tolist"] * 3  # steps 0, 5, 10
    assert len(read_csv(tmp_path / "gradient_flow.csv")) == 3 * len(net.depth_units())
