"""The zoo's additions to Hydra: a model config for every depth, and the config schemas.

``register_configs()`` (idempotent; ``train.py``, :mod:`zoo.run` and the tests call it before
composing) does two things:

* **Model configs by name.** ``configs/model/`` holds a YAML file per named network. Any other
  depth that :func:`zoo.create` accepts (``resnet14``, ``plain26``: 6n+2 CIFAR nets;
  ``preact_plain110``) gets its config from :class:`ModelNameSource`, a Hydra config source
  searched after ``configs/``: the config of its family's template file (``resnet20``,
  ``plain20``, ``preact_resnet110``) with its own ``name``. So ``model=resnet14`` composes on
  the command line, in sweeps and in tests exactly as a file would, and a wrong depth
  (``model=resnet15``) gets the family's one-line rule instead of Hydra's list of files.
* **Schemas** (:mod:`zoo.schemas`): dataclasses in Hydra's ConfigStore that the YAML groups name
  in their defaults lists, so a wrong type or an unknown choice fails when Hydra composes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hydra.core.object_type import ObjectType
from hydra.core.plugins import Plugins
from hydra.errors import HydraException, MissingConfigException
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from zoo.schemas import register_schemas

# The model files whose settings a generated config takes, per family and skip type.
TEMPLATES = {
    ("cifar_resnet", "add"): "resnet20",
    ("cifar_resnet", "none"): "plain20",
    ("preact_resnet", "add"): "preact_resnet110",
    ("preact_resnet", "none"): "preact_resnet110",
    ("vit", "add"): "vit_tiny_p4_d8",
    ("vit", "none"): "plain_vit_tiny_p4_d8",
}
# Names that look like a depth of a family with a depth rule: these get that rule when invalid.
DEPTH_NAME = re.compile(r"^(preact_)?(resnet|plain)\d+$|^(plain_)?vit_[a-z]+_p\d+_d\d+$")
SCHEME = "zoo-models"


def generated_model_config(name: str) -> dict[str, Any]:
    """The config of ``model=<name>`` for a valid name without a YAML file.

    Raises ValueError (one line, the family's depth rule) for a depth the family cannot build.
    """
    from zoo.models import describe  # the registry says which family builds the name

    facts = describe(name)
    template = TEMPLATES.get((facts["family"], facts["skip"]))
    if template is None:  # every other family's networks each have a file in configs/model/
        raise ValueError(f"model={name}: no config template for the {facts['family']} family")
    return {"defaults": [template, "_self_"], "name": name}


class ModelNameSource(ConfigSource):
    """``model/<name>`` for every depth the registry builds (see the module docstring)."""

    @staticmethod
    def scheme() -> str:
        return SCHEME

    def _model_name(self, config_path: str) -> str | None:
        group, _, name = self._normalize_file_name(config_path).rpartition("/")
        name = name.removesuffix(".yaml")
        return name if group == "model" and DEPTH_NAME.match(name) else None

    def load_config(self, config_path: str) -> ConfigResult:
        name = self._model_name(config_path)
        if name is None:
            raise ConfigLoadError(f"{SCHEME}: no config {config_path}")
        node = OmegaConf.create(generated_model_config(name))
        return ConfigResult(config=node, path=f"{SCHEME}://", provider=self.provider,
                            header={"package": None})

    def available(self) -> bool:
        return True

    def is_group(self, config_path: str) -> bool:
        return config_path.rstrip("/") == "model"

    def is_config(self, config_path: str) -> bool:
        # An invalid depth counts as a config so that loading it reports the depth rule.
        return self._model_name(config_path) is not None

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        return []  # infinitely many names: `model=` completion lists the files only


class ModelNameSearchPath(SearchPathPlugin):
    """Put :class:`ModelNameSource` after ``configs/``, so that a YAML file always wins."""

    def manipulate_search_path(self, search_path: Any) -> None:
        search_path.append(provider="zoo", path=f"{SCHEME}://")


_registered = False


def register_configs() -> None:
    """Register the model-name source and the schemas with Hydra (once per process)."""
    global _registered
    if _registered:
        return
    Plugins.instance().register(ModelNameSource)
    Plugins.instance().register(ModelNameSearchPath)
    register_schemas()
    _registered = True


# ------------------------------------------------------------------ errors in one line


def config_error_line(error: BaseException) -> str:
    """One line for an error Hydra or OmegaConf raised while composing: the key and the rule."""
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        # "Value 'x' of type 'str' could not be converted to Integer", "Invalid value 'foo',
        # expected one of [sgd, adamw]": OmegaConf's first line, after the key it is about
        message = str(getattr(cause, "msg", None) or cause).splitlines()[0]
        schema = getattr(cause, "object_type", None)
        if (isinstance(cause, (ConfigAttributeError, ConfigKeyError))
                and dataclasses.is_dataclass(schema)):
            # "Key 'typo' not in 'CifarResNetConfig'": say which keys there are instead
            keys = ", ".join(sorted(f.name for f in dataclasses.fields(schema)))
            parent = cause.full_key.rpartition(".")[0] or "the config"
            message = f"no such setting; {parent} has: {keys}"
        return f"{cause.full_key}: {message}"
    if isinstance(error, MissingConfigException) and error.options:
        first = str(error).splitlines()[0]
        return f"{first}; choose one of: {', '.join(error.options)}"
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _raised_in_job(error: BaseException) -> bool:
    # Hydra's own test: frames below run_job belong to the job (zoo.run), not to composition.
    return any(frame.name == "run_job" for frame in traceback.extract_tb(error.__traceback__))


@contextmanager
def one_line_config_errors(exit_code: int = 2) -> Iterator[None]:
    """Around a ``@hydra.main`` function: a config that does not compose gets one line.

    Hydra prints its composition errors over several lines with a hint about HYDRA_FULL_ERROR;
    here it re-raises them (HYDRA_FULL_ERROR=1) and they become ``error: <key>: <rule>``.
    Errors of the job itself pass through unchanged; ZOO_DEBUG=1 or the user's own
    HYDRA_FULL_ERROR keeps Hydra's report.
    """
    keep_hydra_report = bool(os.environ.get("ZOO_DEBUG") or os.environ.get("HYDRA_FULL_ERROR"))
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        yield
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        if keep_hydra_report or _raised_in_job(error):
            raise
        print(f"error: {config_error_line(error)}", file=sys.stderr, flush=True)
        sys.exit(exit_code)
