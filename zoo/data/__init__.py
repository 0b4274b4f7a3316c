"""Data for the zoo: one LightningDataModule for every dataset, and its two loader paths.

``build_datamodule(cfg.data)`` is what train.py calls. The benchmark builds the two paths over
the same arrays with ``DeviceLoader(split, ...)`` and ``torch_loader(split, ...)``.
"""

from zoo.data.loaders import DeviceLoader, torch_loader
from zoo.data.module import ZooDataModule, build_datamodule
from zoo.data.sources import (
    DATASET_NAMES,
    CorruptDataError,
    ImageArrays,
    MissingDataError,
    load_in_memory,
)

__all__ = [
    "DATASET_NAMES",
    "CorruptDataError",
    "DeviceLoader",
    "ImageArrays",
    "MissingDataError",
    "ZooDataModule",
    "build_datamodule",
    "load_in_memory",
    "torch_loader",
]
