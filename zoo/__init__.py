"""The skip-connection zoo: plain nets, ResNets and DenseNets, measured side by side."""

from __future__ import annotations

import os
from typing import Any

from zoo.models import UnknownModelError, count_parameters, describe, list_models
from zoo.weights import predict  # zoo.predict.predict(net, images), as before the packages
from zoo.weights.pretrained import create  # zoo.models.create, with pretrained=... weights loaded

__version__ = "0.1.0"


def load(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """A trained checkpoint of the zoo (a path or an http(s) URL) as a ``ZooModule`` in eval
    mode, ready for ``model.predict(images)`` (:mod:`zoo.weights.predict` lists the image layouts).
    Read as data only: weights-only, its hyper-parameters checked (one clear error if not)."""
    from zoo.training.module import load_trained  # Lightning: imported when a checkpoint is loaded

    return load_trained(path, map_location=map_location)


__all__ = ["UnknownModelError", "count_parameters", "create", "describe", "list_models", "load",
           "predict"]
