"""Gradient flow: the gradient norm of every depth unit, logged every N optimizer steps.

The norms come from :mod:`zoo.measure.gradients` (fp32, on the device) and are copied to the
host once per *logged* step; steps that do not log never synchronise. Only global rank zero
measures and writes: under DDP the gradients are already all-reduced when
``on_before_optimizer_step`` runs, so its norms are the global ones.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch

from zoo.callbacks.publish import LoggerPublisher, TidyCsvFile, finite, has_wandb, tidy_file_path
from zoo.measure.gradients import GradientNormMeter, SharedGradientNorms, network_of

GRADIENT_FLOW_COLUMNS = ["step", "unit_index", "unit_name", "stage", "grad_norm"]
PARAMETER_GRADIENT_COLUMNS = ["step", "unit_index", "unit_name", "parameter", "grad_norm"]


class GradientFlowCallback(pl.Callback):
    """Gradient norm of every depth unit, every ``every_n_steps`` optimizer steps (and step 0).

    Read in ``on_before_optimizer_step``: after backward, after AMP unscaling and gradient
    clipping's *input* (Lightning clips after this hook), after the DDP all-reduce.

    Logged keys: histograms ``grad_flow/units``, ``grad_flow/units_log10``,
    ``grad_flow/stage/<stage>``, ``grad_flow/parameters``; scalars ``grad_norm/first`` (stem),
    ``grad_norm/last`` (head), ``grad_norm/first_over_last``, ``grad_norm/total``; at the end
    of training a W&B table ``grad_flow/table`` and chart ``grad_flow/chart``. Tidy files:
    ``tidy_file`` (per unit) and ``parameter_tidy_file`` (per parameter tensor; None to skip).

    ``gradients``: the per-step measurement shared with an :class:`ExplosionGuard` (see
    :func:`zoo.callbacks.build_measurement_callbacks`); by default this callback measures alone.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        tidy_file: str | None = "gradient_flow.csv",
        parameter_tidy_file: str | None = "gradient_flow_parameters.csv",
        chart_max_lines: int = 12,
        gradients: SharedGradientNorms | None = None,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.tidy_file = tidy_file
        self.parameter_tidy_file = parameter_tidy_file
        self.chart_max_lines = chart_max_lines
        self.gradients = gradients if gradients is not None else SharedGradientNorms()
        self.publisher = LoggerPublisher("gradient-flow")
        self._last_logged_step = -1
        self._chart_rows: list[list] = []

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.gradients.gradients_changed()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.global_step
        # Several optimizers call this hook once each per step: log the step once.
        if step % self.every_n_steps != 0 or step == self._last_logged_step:
            return
        if not trainer.is_global_zero:
            return
        meter, norms = self.gradients.current(network_of(pl_module))
        if norms is None:
            return
        self._last_logged_step = step
        units = norms.units.numel()
        # The one host sync of this step.
        values = torch.cat([norms.units, norms.total.view(1), norms.parameters]).tolist()
        unit_norms, total, parameter_norms = values[:units], values[units], values[units + 1 :]
        self._publish(trainer, meter, step, unit_norms, total, parameter_norms)
        self._write_tidy(trainer, meter, step, unit_norms, parameter_norms)

    def _publish(self, trainer: pl.Trainer, meter: GradientNormMeter, step: int,
                 unit_norms: list[float], total: float, parameter_norms: list[float]) -> None:
        first, last = unit_norms[0], unit_norms[-1]
        scalars = {
            "grad_norm/first": first,
            "grad_norm/last": last,
            "grad_norm/first_over_last": first / last if last > 0 else float("nan"),
            "grad_norm/total": total,
        }
        distributions = {
            "grad_flow/units": finite(unit_norms),
            "grad_flow/units_log10": np.log10(finite(n for n in unit_norms if n > 0)),
            "grad_flow/parameters": finite(parameter_norms),
        }
        for stage in dict.fromkeys(unit.stage for unit in meter.units):
            distributions[f"grad_flow/stage/{stage}"] = finite(
                n for unit, n in zip(meter.units, unit_norms, strict=True) if unit.stage == stage
            )
        self.publisher.publish(trainer, step, scalars, distributions)

    def _write_tidy(self, trainer: pl.Trainer, meter: GradientNormMeter, step: int,
                    unit_norms: list[float], parameter_norms: list[float]) -> None:
        rows = [
            [step, index, unit.name, unit.stage, norm]
            for index, (unit, norm) in enumerate(zip(meter.units, unit_norms, strict=True))
        ]
        if has_wandb(trainer):
            self._chart_rows.extend(rows)
        unit_file = tidy_file_path(trainer, self.tidy_file)
        if unit_file is not None:
            TidyCsvFile(unit_file, GRADIENT_FLOW_COLUMNS).append(rows)
        parameter_file = tidy_file_path(trainer, self.parameter_tidy_file)
        if parameter_file is not None:
            names = [unit.name for unit in meter.units] + ["(outside units)"]
            TidyCsvFile(parameter_file, PARAMETER_GRADIENT_COLUMNS).append(
                [step, unit_index, names[unit_index], name, norm]
                for unit_index, name, norm in zip(
                    meter.unit_of_parameter, meter.parameter_names, parameter_norms, strict=True
                )
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.publisher.publish_depth_chart(
                trainer, "grad_flow", GRADIENT_FLOW_COLUMNS, self._chart_rows,
                series_column="step", value_column="grad_norm",
                max_lines=self.chart_max_lines, log10=True,
            )
