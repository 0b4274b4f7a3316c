"""Measurement callbacks: gradient flow through depth, residual gain, and an explosion guard.

What a skip connection does shows in two numbers measured per *depth unit* (stem, every residual
block / dense layer / transition, head; see ``depth_units()`` in :mod:`zoo.models.common`):

* the gradient norm as a function of depth (He et al. 2015, section 4.1; Glorot & Bengio 2010):
  in a deep plain net the stem's gradient is orders of magnitude away from the head's (smaller
  without normalisation; with BatchNorm, larger), in a ResNet it stays within a small factor;
* the residual gain ||f(x)|| / ||x|| of every block (He et al. 2016, "Identity Mappings"; Veit
  et al. 2016): near 0, a block has learned to pass its input through unchanged.

Every number goes to every attached logger: W&B (histograms, scalars, and a table + line chart
of norm against depth), TensorBoard (histograms, scalars), CSV (scalars), and a *tidy* CSV file
in ``trainer.default_root_dir`` (one row per unit and logged step) that ``python -m zoo.plot``
draws from without W&B.

Cost: the gradient norms are computed on the device from ``p.grad`` (no module hooks, so
``torch.compile`` is unaffected) and copied to the host once per *logged* step; steps that do
not log never synchronise. Only global rank zero measures and writes: under DDP the gradients
are already all-reduced when ``on_before_optimizer_step`` runs, so its norms are the global ones.
"""

from __future__ import annotations

import csv
import math
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from torch import nn

from zoo.models.common import DepthUnit, SkipBlock

GRADIENT_FLOW_COLUMNS = ["step", "unit_index", "unit_name", "stage", "grad_norm"]
PARAMETER_GRADIENT_COLUMNS = ["step", "unit_index", "unit_name", "parameter", "grad_norm"]
RESIDUAL_GAIN_COLUMNS = ["epoch", "step", "unit_index", "unit_name", "stage", "residual_gain"]


# ---------------------------------------------------------------- reading the network


def network_of(pl_module: nn.Module) -> nn.Module:
    """The zoo network inside a LightningModule (``pl_module.net``), unwrapped from torch.compile."""
    net = getattr(pl_module, "net", pl_module)
    # torch.compile returns an OptimizedModule that shares parameters with the original module.
    return getattr(net, "_orig_mod", net)


def depth_units_of(net: nn.Module) -> list[DepthUnit]:
    """``net.depth_units()``; for a network outside the zoo, its top-level children with parameters."""
    if hasattr(net, "depth_units"):
        return list(net.depth_units())
    return [
        DepthUnit(name, "body", child)
        for name, child in net.named_children()
        if any(True for _ in child.parameters())
    ]


@dataclass
class GradientNorms:
    """L2 gradient norms, still on the device: one host copy per measurement happens later."""

    units: torch.Tensor  # [num_units], depth order
    parameters: torch.Tensor  # [num_parameters]; 0 for a parameter without a gradient
    total: torch.Tensor  # [] over every parameter of the network


class GradientNormMeter:
    """Per-unit and per-parameter gradient norms of a network, computed without a host sync.

    A unit's norm is sqrt(sum of squared gradient entries over all its parameters). Parameters
    outside every unit (none in the zoo's networks) count in the total only.
    """

    def __init__(self, net: nn.Module) -> None:
        self.units = depth_units_of(net)
        names = {id(parameter): name for name, parameter in net.named_parameters()}
        self.parameter_names: list[str] = []
        self.parameters: list[nn.Parameter] = []
        self.unit_of_parameter: list[int] = []
        seen: set[int] = set()
        for unit_index, unit in enumerate(self.units):
            for parameter in unit.module.parameters():
                if id(parameter) not in seen:
                    seen.add(id(parameter))
                    self.parameters.append(parameter)
                    self.parameter_names.append(names.get(id(parameter), f"{unit.name}.?"))
                    self.unit_of_parameter.append(unit_index)
        for name, parameter in net.named_parameters():
            if id(parameter) not in seen:
                self.parameters.append(parameter)
                self.parameter_names.append(name)
                self.unit_of_parameter.append(len(self.units))  # the "outside" bucket
        self._index_cache: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def measure(self) -> GradientNorms | None:
        """Norms of the current ``p.grad``; None when no parameter has a gradient."""
        present = [i for i, p in enumerate(self.parameters) if p.grad is not None]
        if not present:
            return None
        grads = [self.parameters[i].grad for i in present]
        device = grads[0].device
        # One fused kernel per device/dtype group, as clip_grad_norm_ does; float32 so that a
        # bf16-true model's squared sums do not lose the small units.
        norms = torch.stack([n.to(device) for n in torch._foreach_norm(grads)]).float()
        key = tuple(present)
        if key not in self._index_cache:
            units = torch.tensor([self.unit_of_parameter[i] for i in present], device=device)
            positions = torch.tensor(present, device=device)
            self._index_cache = {key: (units, positions)}  # the present set rarely changes
        units, positions = self._index_cache[key]
        squares = norms.square()
        unit_squares = torch.zeros(len(self.units) + 1, device=device).index_add_(0, units, squares)
        parameter_norms = torch.zeros(len(self.parameters), device=device)
        parameter_norms.index_copy_(0, positions, norms)
        return GradientNorms(unit_squares[:-1].sqrt(), parameter_norms, squares.sum().sqrt())


class _MeterState:
    def __init__(self, net: nn.Module) -> None:
        self.meter = GradientNormMeter(net)
        self.norms: GradientNorms | None = None
        self.fresh = False  # whether ``norms`` belong to the gradients of the latest backward


# One meter per network and one measurement per backward pass, whichever callbacks ask for it
# (the gradient-flow view and the explosion guard read the same norms on a logged step).
_SHARED_METERS: weakref.WeakKeyDictionary[nn.Module, _MeterState] = weakref.WeakKeyDictionary()


def _shared_state(pl_module: nn.Module) -> _MeterState:
    net = network_of(pl_module)
    state = _SHARED_METERS.get(net)
    if state is None:
        state = _SHARED_METERS[net] = _MeterState(net)
    return state


def gradients_changed(pl_module: nn.Module) -> None:
    """Forget the shared measurement: call from ``on_after_backward`` (new gradients exist)."""
    _shared_state(pl_module).fresh = False


def current_gradient_norms(pl_module: nn.Module) -> tuple[GradientNormMeter, GradientNorms | None]:
    """The network's meter and the norms of its current gradients, measured once per backward."""
    state = _shared_state(pl_module)
    if not state.fresh:
        state.norms, state.fresh = state.meter.measure(), True
    return state.meter, state.norms


# ---------------------------------------------------------------- writing


class TidyCsvFile:
    """A CSV file appended to, one batch of rows at a time, flushed at once (crash-safe)."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns

    def append(self, rows: Iterable[Iterable[Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        # Appending, not truncating: a resumed run (same Hydra run dir) continues its file.
        with self.path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(self.columns)
            writer.writerows(rows)


def _tidy_file(trainer: pl.Trainer, name: str | None) -> Path | None:
    if not name:
        return None
    path = Path(name)
    if not path.is_absolute():
        path = Path(trainer.default_root_dir) / path
    return path


def _finite(values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values), dtype=np.float64)
    # Histograms of NaN/inf raise in both W&B and TensorBoard; the scalars still show them.
    return array[np.isfinite(array)]


def publish(
    trainer: pl.Trainer,
    step: int,
    scalars: Mapping[str, float],
    distributions: Mapping[str, np.ndarray],
) -> None:
    """Scalars to every logger; distributions as W&B / TensorBoard histograms."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            payload: dict[str, Any] = dict(scalars)
            for key, values in distributions.items():
                if len(values):
                    payload[key] = wandb.Histogram(values)
            # Lightning's WandbLogger records the step as "trainer/global_step" and lets W&B
            # number its own rows, so this never sends a step lower than W&B's current one.
            logger.log_metrics(payload, step=step)
            continue
        logger.log_metrics(dict(scalars), step=step)
        if isinstance(logger, TensorBoardLogger):
            for key, values in distributions.items():
                if len(values):
                    logger.experiment.add_histogram(key, values, global_step=step)


def publish_depth_chart(
    trainer: pl.Trainer,
    prefix: str,
    columns: list[str],
    rows: list[list[Any]],
    series_column: str,
    value_column: str,
    max_lines: int,
    log10: bool,
) -> None:
    """A W&B table plus a line chart of value against depth index, one line per series value.

    The chart keeps at most ``max_lines`` series (first, last and evenly spaced between) so that
    it stays readable; the table holds the same rows for overlaying runs in the W&B UI.
    """
    wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
    if not wandb_loggers or not rows:
        return
    import wandb

    series_at = columns.index(series_column)
    series = sorted({row[series_at] for row in rows})
    if len(series) > max_lines:
        picks = np.linspace(0, len(series) - 1, max_lines).round().astype(int)
        series = [series[i] for i in sorted(set(picks.tolist()))]
    kept = set(series)
    rows = [row for row in rows if row[series_at] in kept]
    index_at, value_at = columns.index("unit_index"), columns.index(value_column)
    xs, ys = [], []
    for value in series:
        line = sorted((row[index_at], row[value_at]) for row in rows if row[series_at] == value)
        xs.append([x for x, _ in line])
        # W&B line charts have no log axis: log10 makes a 1000x gradient ratio visible.
        if log10:
            ys.append([math.log10(y) if y > 0 else float("nan") for _, y in line])
        else:
            ys.append([y for _, y in line])
    chart = wandb.plot.line_series(
        xs=xs,
        ys=ys,
        keys=[f"{series_column} {value}" for value in series],
        title=f"{'log10 ' if log10 else ''}{value_column} against depth",
        xname="unit index (depth order)",
    )
    for logger in wandb_loggers:
        logger.log_metrics(
            {f"{prefix}/table": wandb.Table(columns=columns, data=rows), f"{prefix}/chart": chart},
            step=trainer.global_step,
        )


# ---------------------------------------------------------------- gradient flow


class GradientFlowCallback(pl.Callback):
    """Gradient norm of every depth unit, every ``every_n_steps`` optimizer steps (and step 0).

    Read in ``on_before_optimizer_step``: after backward, after AMP unscaling and gradient
    clipping's *input* (Lightning clips after this hook), after the DDP all-reduce.

    Logged keys: histograms ``grad_flow/units``, ``grad_flow/units_log10``,
    ``grad_flow/stage/<stage>``, ``grad_flow/parameters``; scalars ``grad_norm/first`` (stem),
    ``grad_norm/last`` (head), ``grad_norm/first_over_last``, ``grad_norm/total``; at the end
    of training a W&B table ``grad_flow/table`` and chart ``grad_flow/chart``. Tidy files:
    ``tidy_file`` (per unit) and ``parameter_tidy_file`` (per parameter tensor; None to skip).
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        tidy_file: str | None = "gradient_flow.csv",
        parameter_tidy_file: str | None = "gradient_flow_parameters.csv",
        chart_max_lines: int = 12,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.tidy_file = tidy_file
        self.parameter_tidy_file = parameter_tidy_file
        self.chart_max_lines = chart_max_lines
        self._last_logged_step = -1
        self._chart_rows: list[list[Any]] = []

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        gradients_changed(pl_module)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.global_step
        # Several optimizers call this hook once each per step: log the step once.
        if step % self.every_n_steps != 0 or step == self._last_logged_step:
            return
        if not trainer.is_global_zero:
            return
        meter, norms = current_gradient_norms(pl_module)
        if norms is None:
            return
        self._last_logged_step = step
        units = norms.units.numel()
        # The one host sync of this step.
        values = torch.cat([norms.units, norms.total.view(1), norms.parameters]).tolist()
        unit_norms, total, parameter_norms = values[:units], values[units], values[units + 1 :]
        self._write(trainer, meter, step, unit_norms, total, parameter_norms)

    def _write(
        self,
        trainer: pl.Trainer,
        meter: GradientNormMeter,
        step: int,
        unit_norms: list[float],
        total: float,
        parameter_norms: list[float],
    ) -> None:
        first, last = unit_norms[0], unit_norms[-1]
        scalars = {
            "grad_norm/first": first,
            "grad_norm/last": last,
            "grad_norm/first_over_last": first / last if last > 0 else float("nan"),
            "grad_norm/total": total,
        }
        distributions = {
            "grad_flow/units": _finite(unit_norms),
            "grad_flow/units_log10": np.log10(_finite(n for n in unit_norms if n > 0)),
            "grad_flow/parameters": _finite(parameter_norms),
        }
        for stage in dict.fromkeys(unit.stage for unit in meter.units):
            distributions[f"grad_flow/stage/{stage}"] = _finite(
                n for unit, n in zip(meter.units, unit_norms) if unit.stage == stage
            )
        publish(trainer, step, scalars, distributions)

        rows = [
            [step, index, unit.name, unit.stage, norm]
            for index, (unit, norm) in enumerate(zip(meter.units, unit_norms))
        ]
        if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
            self._chart_rows.extend(rows)
        unit_file = _tidy_file(trainer, self.tidy_file)
        if unit_file is not None:
            TidyCsvFile(unit_file, GRADIENT_FLOW_COLUMNS).append(rows)
        parameter_file = _tidy_file(trainer, self.parameter_tidy_file)
        if parameter_file is not None:
            names = [unit.name for unit in meter.units] + ["(outside units)"]
            TidyCsvFile(parameter_file, PARAMETER_GRADIENT_COLUMNS).append(
                [step, unit_index, names[unit_index], name, norm]
                for unit_index, name, norm in zip(
                    meter.unit_of_parameter, meter.parameter_names, parameter_norms
                )
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            publish_depth_chart(
                trainer, "grad_flow", GRADIENT_FLOW_COLUMNS, self._chart_rows,
                series_column="step", value_column="grad_norm",
                max_lines=self.chart_max_lines, log10=True,
            )


# ---------------------------------------------------------------- residual gain


def residual_gains(net: nn.Module, probe: torch.Tensor) -> list[tuple[int, DepthUnit, float]]:
    """(unit index, unit, ||f(x)|| / ||x||) of every block with an active skip connection.

    ``x`` is the block's input as the forward pass delivers it, ``f`` its
    ``residual_branch``; the ratio is taken per sample and averaged over the probe batch, so
    that a few large-norm images do not dominate it. Runs ``net`` once in eval mode under
    ``no_grad`` (batch-norm running statistics untouched) and restores every module's mode.
    Plain blocks (``skip=False``) and concatenation blocks have no gain and are left out.
    """
    units = depth_units_of(net)
    blocks = [
        (index, unit)
        for index, unit in enumerate(units)
        if isinstance(unit.module, SkipBlock) and unit.module.skip
    ]
    if not blocks:
        return []
    gains: dict[int, torch.Tensor] = {}

    def capture(index: int):
        def hook(block: SkipBlock, args: tuple[Any, ...]) -> None:
            x = args[0]
            # A clone: a branch that starts with an in-place op must not change the real input.
            branch = block.residual_branch(x.clone())
            ratio = branch.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(1e-12)
            gains[index] = ratio.float().mean()

        return hook

    handles = [unit.module.register_forward_pre_hook(capture(index)) for index, unit in blocks]
    modes = [(module, module.training) for module in net.modules()]
    try:
        net.eval()
        with torch.no_grad():
            net(probe)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    values = torch.stack([gains[index] for index, _ in blocks]).tolist()
    return [(index, unit, value) for (index, unit), value in zip(blocks, values)]


def _images_of(batch: Any) -> torch.Tensor:
    """The input images of a batch: ``(x, y)``, ``[x, y]``, ``{"image": x, ...}`` or ``x``."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, Mapping):
        for key in ("image", "images", "input", "inputs", "x"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
    raise TypeError(f"cannot find the images in a validation batch of type {type(batch).__name__}")


class ResidualGainCallback(pl.Callback):
    """||f(x)|| / ||x|| of every residual block at the end of every validation epoch.

    The probe batch is fixed for the whole run (the first ``probe_batch_size`` images of the
    first validation batch) so that the values are comparable across epochs. Logged keys:
    histogram ``residual_gain/blocks``; scalars ``residual_gain/mean``, ``/min``, ``/max``; at the
    end of training a W&B table ``residual_gain/table`` and chart ``residual_gain/chart``; tidy
    file ``tidy_file``. Nets without active skips (plain twins, DenseNets) log nothing.
    """

    def __init__(
        self,
        probe_batch_size: int = 64,
        tidy_file: str | None = "residual_gain.csv",
        chart_max_lines: int = 12,
    ) -> None:
        if probe_batch_size < 1:
            raise ValueError(f"probe_batch_size must be >= 1, got {probe_batch_size}")
        self.probe_batch_size = probe_batch_size
        self.tidy_file = tidy_file
        self.chart_max_lines = chart_max_lines
        self.probe: torch.Tensor | None = None
        self._chart_rows: list[list[Any]] = []

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.probe is None and batch_idx == 0 and dataloader_idx == 0 and trainer.is_global_zero:
            images = _images_of(batch)[: self.probe_batch_size]
            self.probe = images.detach().to(pl_module.device).clone()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.probe is None or not trainer.is_global_zero:
            return
        net = network_of(pl_module)
        parameter = next(net.parameters(), None)
        probe = self.probe
        if parameter is not None and probe.is_floating_point():
            probe = probe.to(device=parameter.device, dtype=parameter.dtype)
        measured = residual_gains(net, probe)
        if not measured:
            return
        epoch, step = trainer.current_epoch, trainer.global_step
        gains = [gain for _, _, gain in measured]
        finite = _finite(gains)
        scalars = {
            "residual_gain/mean": float(np.mean(gains)),
            "residual_gain/min": float(np.min(gains)),
            "residual_gain/max": float(np.max(gains)),
        }
        publish(trainer, step, scalars, {"residual_gain/blocks": finite})
        rows = [[epoch, step, index, unit.name, unit.stage, gain] for index, unit, gain in measured]
        if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
            self._chart_rows.extend(rows)
        path = _tidy_file(trainer, self.tidy_file)
        if path is not None:
            TidyCsvFile(path, RESIDUAL_GAIN_COLUMNS).append(rows)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            publish_depth_chart(
                trainer, "residual_gain", RESIDUAL_GAIN_COLUMNS, self._chart_rows,
                series_column="epoch", value_column="residual_gain",
                max_lines=self.chart_max_lines, log10=False,
            )


# ---------------------------------------------------------------- explosion guard


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm of a run became non-finite or exceeded its bound.

    ``step`` is the first bad optimizer step (None when another rank diverged).
    """

    def __init__(self, message: str, step: int | None = None) -> None:
        super().__init__(message)
        self.step = step


class ExplosionGuard(pl.Callback):
    """Stop a run whose loss or total gradient norm is non-finite or above a bound.

    Checking a device value needs a host sync, which would cost throughput every step. So each
    step only updates a flag and the first bad step's record *on the device*; the flag is read
    every ``check_every_n_steps`` steps and always just before a ModelCheckpoint can save
    (every-n-steps saves, validation, epoch end, train end). The run therefore stops at most
    ``check_every_n_steps - 1`` steps after it diverged, the message still names the first bad
    step, and no checkpoint written after divergence exists: the last good one is kept.

    "Last good" means the weights *before* the first bad update: a step's loss is known only
    after the previous step's checkpoint was written, so that checkpoint (finite weights, which
    produced the first bad loss) is the one kept and named. ``save_on_exception`` of every
    ModelCheckpoint is switched off before raising, as it would overwrite ``last.ckpt``.

    ``max_loss`` / ``max_grad_norm`` None removes that bound; non-finite values always stop.
    """

    def __init__(
        self,
        max_loss: float | None = 1.0e4,
        max_grad_norm: float | None = 1.0e8,
        check_every_n_steps: int = 10,
    ) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.max_loss = max_loss
        self.max_grad_norm = max_grad_norm
        self.check_every_n_steps = check_every_n_steps
        self._meter: GradientNormMeter | None = None
        self._step = 0
        self._pending_grads: GradientNorms | None = None
        self._diverged: torch.Tensor | None = None  # bool, on the device
        self._first_bad: torch.Tensor | None = None  # [step, measured, loss, total grad norm, *units]

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step = trainer.global_step  # the optimizer step this batch contributes to

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._pending_grads = current_gradient_norms(pl_module)[1]

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        gradients_changed(pl_module)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        self._record(pl_module, loss if isinstance(loss, torch.Tensor) else None)
        due = (trainer.global_step % self.check_every_n_steps == 0) or self._checkpoint_due(trainer)
        if due:
            self.check(trainer)

    def _record(self, pl_module: pl.LightningModule, loss: torch.Tensor | None) -> None:
        meter = self._meter = _shared_state(pl_module).meter
        grads, self._pending_grads = self._pending_grads, None
        device = grads.total.device if grads is not None else pl_module.device
        # torch.full launches a fill kernel; torch.tensor(...) would copy from the host and,
        # from pageable memory, wait for the device: a sync per step.
        nan = torch.full((), float("nan"), device=device)
        bad = torch.zeros((), dtype=torch.bool, device=device)
        loss_value = nan
        if loss is not None:
            loss_value = loss.detach().float().to(device).reshape(())
            bad = bad | ~torch.isfinite(loss_value)
            if self.max_loss is not None:
                bad = bad | (loss_value > self.max_loss)
        if grads is not None:
            total, units = grads.total, grads.units
            bad = bad | ~torch.isfinite(total)
            if self.max_grad_norm is not None:
                bad = bad | (total > self.max_grad_norm)
        else:  # a batch that only accumulated gradients: no optimizer step to judge
            total, units = nan, nan.expand(len(meter.units))
        # [step, gradients measured (1/0), loss, total gradient norm, *unit norms]
        header = torch.full((2,), float(self._step), device=device, dtype=torch.float64)
        header[1] = float(grads is not None)
        record = torch.cat([loss_value.view(1), total.view(1), units]).double()
        record = torch.cat([header, record])
        if self._diverged is None or self._first_bad is None or self._first_bad.shape != record.shape:
            self._diverged = torch.zeros((), dtype=torch.bool, device=device)
            self._first_bad = torch.full_like(record, float("nan"))
        # Keep the first bad step's record: no sync, just a select on the device.
        self._first_bad = torch.where(bad & ~self._diverged, record, self._first_bad)
        self._diverged = self._diverged | bad

    @staticmethod
    def _checkpoint_due(trainer: pl.Trainer) -> bool:
        """Whether a ModelCheckpoint may save in this on_train_batch_end (it runs after us)."""
        for checkpoint in trainer.checkpoint_callbacks:
            if getattr(checkpoint, "_train_time_interval", None) is not None:
                return True
            every = getattr(checkpoint, "_every_n_train_steps", 0) or 0
            if every >= 1 and trainer.global_step % every == 0:
                return True
        return False

    # Lightning orders ModelCheckpoint callbacks last, so these run before any save they guard.
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)

    def check(self, trainer: pl.Trainer) -> None:
        """Read the device flag (one host sync); raise TrainingDivergedError when it is set."""
        local = bool(self._diverged.item()) if self._diverged is not None else False
        # Every rank reaches the same checks, so this collective cannot hang; all ranks stop.
        if not trainer.strategy.reduce_boolean_decision(local, all=False):
            return
        for checkpoint in trainer.checkpoint_callbacks:
            # A save-on-exception would overwrite last.ckpt with the diverged weights.
            if hasattr(checkpoint, "save_on_exception"):
                checkpoint.save_on_exception = False
        step = int(self._first_bad[0].item()) if local and self._first_bad is not None else None
        raise TrainingDivergedError(self._message(trainer, local), step)

    def _message(self, trainer: pl.Trainer, local: bool) -> str:
        last_good = [
            getattr(c, "last_model_path", "") or getattr(c, "best_model_path", "")
            for c in trainer.checkpoint_callbacks
        ]
        last_good = [path for path in last_good if path]
        checkpoint = last_good[0] if last_good else "none saved yet"
        if not local or self._first_bad is None:
            return (
                f"training diverged on another rank (detected at step {trainer.global_step}); "
                f"last good checkpoint: {checkpoint}"
            )
        step, measured, loss, total, *units = self._first_bad.tolist()
        names = [unit.name for unit in self._meter.units] if self._meter else []
        loss_bound = f" (bound {self.max_loss:g})" if self.max_loss is not None else ""
        grad_bound = f" (bound {self.max_grad_norm:g})" if self.max_grad_norm is not None else ""
        if not measured:
            unit_text = "no gradient norms measured at that step (it only accumulated gradients)"
        elif all(math.isnan(u) for u in units):
            unit_text = "every unit's gradient is NaN"
        else:
            # A non-finite unit outranks every finite one; among non-finite ones the shallowest.
            worst = max(
                range(len(units)),
                key=lambda i: (not math.isfinite(units[i]), units[i] if math.isfinite(units[i]) else -i),
            )
            unit_text = f"largest gradient norm in unit {names[worst]!r} (index {worst}): {units[worst]:.4g}"
        n = self.check_every_n_steps
        checked = "every step" if n == 1 else f"every {n} steps"
        return (
            f"training diverged at step {int(step)}: loss {loss:.4g}{loss_bound}, "
            f"total gradient norm {total:.4g}{grad_bound}; {unit_text}. "
            f"Last good checkpoint: {checkpoint}. "
            f"(Detected at step {trainer.global_step}; checked {checked} and before every "
            f"checkpoint save.)"
        )


# ---------------------------------------------------------------- from the config


MEASUREMENT_CALLBACKS: dict[str, type[pl.Callback]] = {
    "gradient_flow": GradientFlowCallback,
    "residual_gain": ResidualGainCallback,
    "explosion_guard": ExplosionGuard,
}


def build_measurement_callbacks(cfg: Mapping[str, Any]) -> list[pl.Callback]:
    """The measurement callbacks a ``callbacks=`` config turns on.

    Reads the sections ``gradient_flow``, ``residual_gain`` and ``explosion_guard``; each has
    ``enabled`` (true when omitted) and the callback's arguments. Other keys (``checkpoint``,
    ``progress_bar``, ``lr_monitor``) belong to train.py and are ignored here.
    """
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with hydra-core
        pass
    callbacks: list[pl.Callback] = []
    for key, callback_class in MEASUREMENT_CALLBACKS.items():
        section = cfg.get(key)
        if section is None:
            continue
        arguments = dict(section)
        if not arguments.pop("enabled", True):
            continue
        try:
            callbacks.append(callback_class(**arguments))
        except TypeError as error:
            raise ValueError(f"callbacks.{key}: {error}") from error
    return callbacks


__all__ = [
    "ExplosionGuard",
    "GradientFlowCallback",
    "GradientNormMeter",
    "ResidualGainCallback",
    "TrainingDivergedError",
    "build_measurement_callbacks",
    "depth_units_of",
    "network_of",
    "residual_gains",
]
