"""Measurement callbacks, one per file, all built on :mod:`zoo.measure`:

* :mod:`~zoo.callbacks.gradient_flow` -- gradient norm of every depth unit (``gradient_flow.csv``);
* :mod:`~zoo.callbacks.residual_gain` -- ||f(x)|| / ||x|| of every residual block
  (``residual_gain.csv``);
* :mod:`~zoo.callbacks.explosion_guard` -- stops a diverging run before it overwrites a good
  checkpoint;
* :mod:`~zoo.callbacks.publish` -- writing to W&B / TensorBoard / CSV loggers and tidy files.

:func:`build_measurement_callbacks` turns a ``callbacks=`` config into these callbacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl

from zoo.callbacks.explosion_guard import ExplosionGuard, TrainingDivergedError
from zoo.callbacks.gradient_flow import (
    GRADIENT_FLOW_COLUMNS,
    PARAMETER_GRADIENT_COLUMNS,
    GradientFlowCallback,
)
from zoo.callbacks.publish import TidyCsvFile
from zoo.callbacks.residual_gain import RESIDUAL_GAIN_COLUMNS, ResidualGainCallback
from zoo.measure.gradients import SharedGradientNorms

MEASUREMENT_CALLBACKS: dict[str, type[pl.Callback]] = {
    "gradient_flow": GradientFlowCallback,
    "residual_gain": ResidualGainCallback,
    "explosion_guard": ExplosionGuard,
}
# The callbacks that read gradient norms: built together, they share one measurement per step.
READS_GRADIENTS = ("gradient_flow", "explosion_guard")


def build_measurement_callbacks(cfg: Mapping[str, Any]) -> list[pl.Callback]:
    """The measurement callbacks a ``callbacks=`` config turns on.

    Reads the sections ``gradient_flow``, ``residual_gain`` and ``explosion_guard``; each has
    ``enabled`` (true when omitted) and the callback's arguments. Other keys (``checkpoint``,
    ``progress_bar``, ``lr_monitor``) belong to train.py and are ignored here. The gradient-flow
    view and the explosion guard get one :class:`SharedGradientNorms`, so each step's gradients
    are measured once whichever of them asks first.
    """
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with hydra-core
        pass
    shared_gradients = SharedGradientNorms()
    callbacks: list[pl.Callback] = []
    for key, callback_class in MEASUREMENT_CALLBACKS.items():
        section = cfg.get(key)
        if section is None:
            continue
        arguments = dict(section)
        if not arguments.pop("enabled", True):
            continue
        if key in READS_GRADIENTS:
            arguments["gradients"] = shared_gradients
        try:
            callbacks.append(callback_class(**arguments))
        except TypeError as error:
            raise ValueError(f"callbacks.{key}: {error}") from error
    return callbacks


__all__ = [
    "GRADIENT_FLOW_COLUMNS",
    "PARAMETER_GRADIENT_COLUMNS",
    "RESIDUAL_GAIN_COLUMNS",
    "ExplosionGuard",
    "GradientFlowCallback",
    "ResidualGainCallback",
    "TidyCsvFile",
    "TrainingDivergedError",
    "build_measurement_callbacks",
]
