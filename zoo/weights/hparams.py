"""The hyper-parameters a checkpoint of the zoo carries, checked before anything uses them.

A checkpoint is data from anywhere (a colleague, a download, a damaged disk): its
``hyper_parameters`` may hold a string where the zoo wrote a dict, a string learning rate, a
2 MB model name. Each would surface as a traceback far from the file, or as a "one line" of
megabytes. :func:`check_hyper_parameters` turns the first wrong value into one
:class:`~zoo.weights.pretrained.CheckpointError` line that names the file, the key and the
value, cut to 80 characters. Loading a zoo checkpoint (``zoo.load``,
``ZooModule.load_from_checkpoint``, ``model.pretrained=``, ``ckpt_path=``) calls it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zoo.weights.predict import Preprocess, cut
from zoo.weights.pretrained import CheckpointError


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _model_problems(model: Any) -> Iterator[str]:
    from zoo.models import describe

    if not isinstance(model, dict):
        yield f"hyper_parameters.model is {type(model).__name__}, not a dict: {cut(model)}"
        return
    name = model.get("name")
    if not isinstance(name, str):
        yield f"hyper_parameters.model.name is {cut(name)}, not a network's name"
        return
    try:
        if len(name) > 100:  # no network's name is that long; difflib would compare it all
            raise ValueError(name)
        describe(name)
    except ValueError:  # UnknownModelError lists every name: not wanted in this line
        yield f"hyper_parameters.model.name={cut(name)} is not a network of the zoo"
    for key in ("num_classes", "in_channels"):
        value = model.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool)
                                      and value > 0):
            yield f"hyper_parameters.model.{key}={cut(value)} is not a whole number > 0"


def _training_problems(hyper_parameters: dict[str, Any]) -> Iterator[str]:
    from zoo.config.schemas import (  # Hydra's ConfigStore: not at `import zoo`
        OPTIMIZERS,
        SCHEDULERS,
    )

    for key, names in (("optim", OPTIMIZERS), ("scheduler", SCHEDULERS)):
        section = hyper_parameters.get(key)
        if section is None:
            continue
        if not isinstance(section, dict):
            yield f"hyper_parameters.{key} is {type(section).__name__}, not a dict: {cut(section)}"
        elif section.get("name") not in names:
            yield f"hyper_parameters.{key}.name={cut(section.get('name'))} is not one of {names}"
    optim = hyper_parameters.get("optim")
    lr = optim.get("lr") if isinstance(optim, dict) else None
    if lr is not None and not (_is_number(lr) and lr > 0):
        yield f"hyper_parameters.optim.lr={cut(lr)} is not a finite number > 0"
    smoothing = hyper_parameters.get("label_smoothing", 0.0)
    if not (_is_number(smoothing) and 0 <= smoothing < 1):
        yield f"hyper_parameters.label_smoothing={cut(smoothing)} is not a number in [0, 1)"
    batch_size = hyper_parameters.get("batch_size")
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size > 0):
        yield f"hyper_parameters.batch_size={cut(batch_size)} is not a whole number > 0"
    if not isinstance(hyper_parameters.get("channels_last", False), bool):
        yield f"hyper_parameters.channels_last={cut(hyper_parameters['channels_last'])} is " \
              "not true or false"


def problems_of(hyper_parameters: Any) -> Iterator[str]:
    """What is wrong with a checkpoint's ``hyper_parameters``, one sentence per problem."""
    if not isinstance(hyper_parameters, dict):
        yield (f"hyper_parameters is {type(hyper_parameters).__name__}, not a dict: "
               f"{cut(hyper_parameters)}")
        return
    yield from _model_problems(hyper_parameters.get("model"))
    yield from _training_problems(hyper_parameters)
    dataset = hyper_parameters.get("dataset")
    if dataset is not None:
        if not isinstance(dataset, dict):
            yield (f"hyper_parameters.dataset is {type(dataset).__name__}, not a dict: "
                   f"{cut(dataset)}")
            return
        try:
            Preprocess.from_facts(dataset)
        except ValueError as error:
            yield f"hyper_parameters.dataset: {str(error).split(';')[0]}"


def check_hyper_parameters(content: Any, path: str | Path, required: bool = False) -> None:
    """Raise a one-line :class:`CheckpointError` naming ``path`` for the first wrong value of its
    hyper-parameters; ``required``: a checkpoint without them (not the zoo's) is refused too."""
    if not isinstance(content, dict) or "hyper_parameters" not in content:
        if required:
            raise CheckpointError(
                f"{path} is not a checkpoint of this project (no saved hyper-parameters); load "
                "its weights with zoo.create(name, pretrained=...) instead")
        return
    for problem in problems_of(content["hyper_parameters"]):
        raise CheckpointError(f"{path}: {problem}; the file is damaged or was not written by the "
                              "zoo: use another checkpoint of the run")
