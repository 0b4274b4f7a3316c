"""The registry: every network of the zoo by name.

Each family module (``cifar_resnet``, ``resnet``, ``preact_resnet``, ``densenet``, ``vit``, and
any other file of this folder that has them) holds a table ``VARIANTS`` of names to constructor
arguments (with their ``depth``), one ``build(variant, num_classes, in_channels, **options)``
function, ``skip_type(variant)``, its ``DEFAULT_NUM_CLASSES``, ``PAPER``, ``INPUT_SIZE`` and
``RELU_AFTER_ADDITION``, and optionally ``resolve(name)`` for names of any depth. Variants are
data; there is no class per variant.

This is the bottom layer: it imports nothing else of the zoo. Weights are loaded above it, by
``zoo.create(name, pretrained=...)`` (:func:`zoo.weights.pretrained.create`, which builds with
:func:`create` here).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from types import ModuleType
from typing import Any

from torch import nn

from zoo.models.common import DepthUnit, SkipBlock, count_parameters

NOT_FAMILIES = ("common", "catalogue")  # the shared pieces and the table, not families


def _families() -> list[ModuleType]:
    """Every family file of this folder: a module with ``VARIANTS`` and ``build``. Adding a
    family is adding its file (and its schema, zoo/config/schemas.py); nothing lists it."""
    found = []
    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("_") or module.name in NOT_FAMILIES:
            continue
        family = importlib.import_module(f"{__name__}.{module.name}")
        if hasattr(family, "VARIANTS") and hasattr(family, "build"):
            found.append(family)
    return found


FAMILIES: list[ModuleType] = _families()


class UnknownModelError(ValueError):
    """Raised for a name that is not in the registry (the message lists the valid names)."""


def _registry() -> dict[str, tuple[ModuleType, dict[str, Any]]]:
    table: dict[str, tuple[ModuleType, dict[str, Any]]] = {}
    for family in FAMILIES:
        for name, arguments in family.VARIANTS.items():
            table[name] = (family, arguments)
    return table


def list_models(detail: bool = False) -> list[str] | list[dict[str, Any]]:
    """Sorted names of every registered network; ``detail=True``: the catalogue's facts of each
    (family, skip, depth, parameters, FLOPs at its native input, paper) as dicts."""
    if not detail:
        return sorted(_registry())
    # zoo.models.catalogue builds networks through this module: it is imported when asked for
    from zoo.models.catalogue import as_dicts, catalogue

    return as_dicts(catalogue())


def _resolve(name: str) -> tuple[ModuleType, dict[str, Any]]:
    table = _registry()
    if name in table:
        return table[name]
    for family in FAMILIES:
        # Families with a depth formula (6n+2 for the CIFAR nets) accept any valid depth, and
        # explain the formula when the depth is wrong.
        resolve = getattr(family, "resolve", None)
        if resolve is not None:
            arguments = resolve(name)
            if arguments is not None:
                return family, arguments
    close = difflib.get_close_matches(name, table, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}.{hint} Valid names: {', '.join(sorted(table))}."
    )


def family_of(name: str) -> str:
    """The family name of a model (``"cifar_resnet"``, ``"resnet"``, ...)."""
    return _resolve(name)[0].__name__.rsplit(".", 1)[-1]


def describe(net_or_name: str | nn.Module) -> dict[str, Any]:
    """What a network is, from the registry (never from its name's spelling):

    ``family`` (the family file: ``cifar_resnet``, ``resnet``, ``preact_resnet``, ``densenet``,
    ``vit``), ``skip`` (``"add"``, ``"concat"`` or ``"none"``: the one vocabulary), ``depth``
    (weighted layers; a ViT's blocks), ``paper``, ``input_size`` (native pixels per side),
    ``default_num_classes`` and ``relu_after_addition`` (True: a ReLU follows the sum, He et al.
    2015; False: the block ends in the sum; None: no addition). A network built by
    :func:`create` carries its name, so ``describe(net)`` works as well."""
    name = net_or_name if isinstance(net_or_name, str) else getattr(net_or_name, "zoo_name", None)
    if name is None:
        raise TypeError(f"describe() takes a registry name or a network built by zoo.create, "
                        f"got {type(net_or_name).__name__}")
    family, arguments = _resolve(name)
    return {
        "name": name,
        "family": family.__name__.rsplit(".", 1)[-1],
        "skip": family.skip_type(arguments),
        "default_num_classes": arguments.get("default_num_classes", family.DEFAULT_NUM_CLASSES),
        "depth": arguments["depth"],
        "paper": family.PAPER,
        "input_size": arguments.get("input_size", family.INPUT_SIZE),
        "relu_after_addition": family.RELU_AFTER_ADDITION,
    }


def create(
    name: str,
    num_classes: int | None = None,
    in_channels: int = 3,
    **options: Any,
) -> nn.Module:
    """Build a network by name, freshly initialised (``zoo.create`` also loads weights).

    ``num_classes`` defaults to the family's dataset (1000 for ImageNet families, 10 for CIFAR).
    ``options`` are the family's own switches (``stem``, ``shortcut``, ``zero_init_residual``,
    ``drop_path``, ``memory_efficient``, ...); an option the family does not have is an error.
    """
    family, arguments = _resolve(name)
    if num_classes is None:
        # CIFAR variants inside an ImageNet family (the CIFAR DenseNets) say so in their table
        num_classes = arguments.get("default_num_classes", family.DEFAULT_NUM_CLASSES)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    accepted = set(inspect.signature(family.build).parameters) - {
        "variant", "num_classes", "in_channels"
    }
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(
            f"{name} does not take option(s) {', '.join(unknown)}; "
            f"its options are: {', '.join(sorted(accepted)) or 'none'}"
        )
    net = family.build(dict(arguments), num_classes=num_classes, in_channels=in_channels,
                       **options)
    net.zoo_name = name  # describe(net); a plain attribute, not in the state dict
    return net


__all__ = [
    "DepthUnit",
    "SkipBlock",
    "UnknownModelError",
    "count_parameters",
    "create",
    "describe",
    "family_of",
    "list_models",
]
