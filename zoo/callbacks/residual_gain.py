"""Residual gain: ||f(x)|| / ||x|| of every residual block, at the end of every validation epoch.

Near 0, a block has learned to pass its input through unchanged (He et al. 2016, "Identity
Mappings"; Veit et al. 2016). The measurement is :func:`zoo.measure.gradients.residual_gains`;
this callback picks the probe batch, publishes and writes the tidy file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from zoo.callbacks.publish import LoggerPublisher, TidyCsvFile, finite, has_wandb, tidy_file_path
from zoo.measure.gradients import network_of, residual_gains

RESIDUAL_GAIN_COLUMNS = ["epoch", "step", "unit_index", "unit_name", "stage", "residual_gain"]


def images_of(batch: Any) -> torch.Tensor:
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
        self.publisher = LoggerPublisher("residual-gain")
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
            images = images_of(batch)[: self.probe_batch_size]
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
        scalars = {
            "residual_gain/mean": float(np.mean(gains)),
            "residual_gain/min": float(np.min(gains)),
            "residual_gain/max": float(np.max(gains)),
        }
        self.publisher.publish(trainer, step, scalars, {"residual_gain/blocks": finite(gains)})
        rows = [[epoch, step, index, unit.name, unit.stage, gain] for index, unit, gain in measured]
        if has_wandb(trainer):
            self._chart_rows.extend(rows)
        path = tidy_file_path(trainer, self.tidy_file)
        if path is not None:
            TidyCsvFile(path, RESIDUAL_GAIN_COLUMNS).append(rows)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.publisher.publish_depth_chart(
                trainer, "residual_gain", RESIDUAL_GAIN_COLUMNS, self._chart_rows,
                series_column="epoch", value_column="residual_gain",
                max_lines=self.chart_max_lines, log10=False,
            )
