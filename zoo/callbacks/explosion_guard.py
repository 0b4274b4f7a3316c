"""Explosion guard: stop a run whose loss or gradient norm turns non-finite or exceeds a bound.

The gradient norms are :mod:`zoo.measure.gradients`' (fp32), shared with the gradient-flow view
when both are on, so a step is measured once. Nothing here synchronises with the device except
the periodic check of one flag.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch

from zoo.measure.gradients import GradientNormMeter, GradientNorms, SharedGradientNorms, network_of
from zoo.training.compat import checkpoint_may_save_at_step


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm of a run became non-finite or exceeded its bound.

    ``step`` is the first bad optimizer step; ``unit`` what went bad at that step: the name of the
    depth unit with the worst gradient norm (``"layer2.3"``, as the message names it) when the
    gradient norm did, else ``"loss"``. Both are None when another rank diverged.
    """

    def __init__(self, message: str, step: int | None = None, unit: str | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.unit = unit


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
    ``gradients``: the per-step measurement shared with a :class:`GradientFlowCallback` (see
    :func:`zoo.callbacks.build_measurement_callbacks`); by default the guard measures alone.
    """

    def __init__(
        self,
        max_loss: float | None = 1.0e4,
        max_grad_norm: float | None = 1.0e8,
        check_every_n_steps: int = 10,
        gradients: SharedGradientNorms | None = None,
    ) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.max_loss = max_loss
        self.max_grad_norm = max_grad_norm
        self.check_every_n_steps = check_every_n_steps
        self.gradients = gradients if gradients is not None else SharedGradientNorms()
        self._meter: GradientNormMeter | None = None
        self._step = 0
        self._pending_grads: GradientNorms | None = None
        self._diverged: torch.Tensor | None = None  # bool, on the device
        # [step, gradients measured, loss, total gradient norm, *unit norms], on the device
        self._first_bad: torch.Tensor | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step = trainer.global_step  # the optimizer step this batch contributes to

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._pending_grads = self.gradients.current(network_of(pl_module))[1]

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.gradients.gradients_changed()

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
        meter = self._meter = self.gradients.meter(network_of(pl_module))
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
        fresh = self._first_bad is None or self._first_bad.shape != record.shape
        if self._diverged is None or fresh:
            self._diverged = torch.zeros((), dtype=torch.bool, device=device)
            self._first_bad = torch.full_like(record, float("nan"))
        # Keep the first bad step's record: no sync, just a select on the device.
        self._first_bad = torch.where(bad & ~self._diverged, record, self._first_bad)
        self._diverged = self._diverged | bad

    @staticmethod
    def _checkpoint_due(trainer: pl.Trainer) -> bool:
        """Whether a ModelCheckpoint may save in this on_train_batch_end (it runs after us)."""
        return any(checkpoint_may_save_at_step(checkpoint, trainer.global_step)
                   for checkpoint in trainer.checkpoint_callbacks)

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
        step, unit = None, None
        if local and self._first_bad is not None:
            first_bad = self._first_bad.tolist()
            step, unit = int(first_bad[0]), self._bad_unit(first_bad)
        raise TrainingDivergedError(self._message(trainer, local), step, unit)

    @staticmethod
    def _worst_unit(measured: float, units: list[float]) -> int | None:
        """The index of the unit the message names, None when no unit has a number.

        A non-finite unit outranks every finite one; among non-finite ones the shallowest.
        """
        if not measured or all(math.isnan(u) for u in units):
            return None
        return max(range(len(units)),
                   key=lambda i: (not math.isfinite(units[i]),
                                  units[i] if math.isfinite(units[i]) else -i))

    def _bad_unit(self, first_bad: list[float]) -> str | None:
        """What went bad at the first bad step: a depth unit's name, ``"loss"``, or None."""
        _, measured, loss, total, *units = first_bad
        worst = self._worst_unit(measured, units)
        grad_bad = not math.isfinite(total) or (
            self.max_grad_norm is not None and total > self.max_grad_norm)
        if measured and grad_bad and worst is not None and self._meter is not None:
            return self._meter.units[worst].name
        loss_bad = not math.isfinite(loss) or (self.max_loss is not None and loss > self.max_loss)
        return "loss" if loss_bad else None

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
        worst = self._worst_unit(measured, units)
        if not measured:
            unit_text = "no gradient norms measured at that step (it only accumulated gradients)"
        elif worst is None:
            unit_text = "every unit's gradient is NaN"
        else:
            unit_text = (f"largest gradient norm in unit {names[worst]!r} (index {worst}): "
                         f"{units[worst]:.4g}")
        n = self.check_every_n_steps
        checked = "every step" if n == 1 else f"every {n} steps"
        return (
            f"training diverged at step {int(step)}: loss {loss:.4g}{loss_bound}, "
            f"total gradient norm {total:.4g}{grad_bound}; {unit_text}. "
            f"Last good checkpoint: {checkpoint}. "
            f"(Detected at step {trainer.global_step}; checked {checked} and before every "
            f"checkpoint save.)"
        )
