"""The skip-connection zoo: plain nets, ResNets and DenseNets, measured side by side."""

from zoo.models import UnknownModelError, count_parameters, describe, list_models
from zoo.pretrained import create  # zoo.models.create, with pretrained=... weights loaded

__version__ = "0.1.0"

__all__ = ["UnknownModelError", "count_parameters", "create", "describe", "list_models"]
