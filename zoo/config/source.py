"""The zoo's additions to Hydra: a model config for every depth, and the config schemas.

``register_configs()`` (idempotent; ``train.py``, :mod:`zoo.runs.train` and the tests call it before
composing) does two things:

* **Model configs by name.** ``configs/model/`` holds a YAML file only where a name has settings
  of its own: the family templates (``resnet20``, ``plain20``, ``preact_resnet110``, the two
  ViTs), whose comments document the family's options. Every other name that :func:`zoo.create`
  accepts, named (``resnet56``, ``densenet40_12``) or any valid depth (``resnet14``,
  ``plain26``, ``preact_plain110``), gets its config from :class:`ModelNameSource`, a Hydra
  config source searched after ``configs/``: the config of its family's template file with its
  own ``name``, or, for a family without one, its schema's defaults (``_<family>_schema``): a
  new family needs no model file. So ``model=resnet14`` composes on the command line, in sweeps
  and in tests exactly as a file would, and a wrong depth (``model=resnet15``) gets the family's
  one-line rule instead of Hydra's list of files.
* **Schemas** (:mod:`zoo.config.schemas`): dataclasses in Hydra's ConfigStore that the YAML
  groups name in their defaults lists, so a wrong type or an unknown choice fails when Hydra
  composes.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from hydra.core.object_type import ObjectType
from hydra.core.plugins import Plugins
from hydra.errors import HydraException, MissingConfigException
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from zoo.config.schemas import register_schemas

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
    # a family's model file with its settings, or else its schema alone (every key has a default)
    first = TEMPLATES.get((facts["family"], facts["skip"]), f"_{facts['family']}_schema")
    return {"defaults": [first, "_self_"], "name": name}


def is_registered(name: str) -> bool:
    """Whether the registry builds ``name`` (a new family's names need no model file)."""
    from zoo.models import describe

    try:
        describe(name)
    except ValueError:
        return False
    return True


class ModelNameSource(ConfigSource):
    """``model/<name>`` for every depth the registry builds (see the module docstring)."""

    @staticmethod
    def scheme() -> str:
        return SCHEME

    def _model_name(self, config_path: str) -> str | None:
        group, _, name = self._normalize_file_name(config_path).rpartition("/")
        name = name.removesuffix(".yaml")
        if group != "model" or name.startswith("_"):  # "_..._schema": the ConfigStore's
            return None
        return name if DEPTH_NAME.match(name) or is_registered(name) else None

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
        # the registry's named nets (any other valid depth composes too): for `model=` completion
        # and for the "choose one of" of a misspelt name
        if not self.is_group(config_path) or results_filter == ObjectType.GROUP:
            return []
        from zoo.models import list_models

        return list_models()


class ModelNameSearchPath(SearchPathPlugin):
    """Put :class:`ModelNameSource` after ``configs/``, so that a YAML file always wins."""

    def manipulate_search_path(self, search_path: Any) -> None:
        search_path.append(provider="zoo", path=f"{SCHEME}://")


_registered = False
# Hydra callbacks the zoo lets a config name: its own, and code that ships as Hydra or its plugins
OWN_HYDRA_CALLBACKS = ("zoo.runs.directory.RunDirectoryCheck", "zoo.runs.resume.ResumeSettings")
TRUSTED_CALLBACK_PACKAGES = ("hydra.experimental.callbacks.", "hydra_plugins.")


def check_hydra_callbacks(config: Any) -> None:
    """Refuse ``hydra.callbacks`` entries whose ``_target_`` is not a callback the zoo expects.

    Hydra instantiates them before the job, with any ``_target_`` (``shutil.copyfile``,
    ``torch.load``): an experiment YAML could run code there. Launchers and sweepers need no
    check: Hydra instantiates only registered plugins for them.
    """
    callbacks = OmegaConf.select(config, "hydra.callbacks") if config is not None else None
    for name, params in (callbacks or {}).items():
        arguments = OmegaConf.to_container(params, resolve=False) \
            if isinstance(params, DictConfig) else {}
        target = str(arguments.pop("_target_", ""))
        # instantiate() is recursive: a _target_ among the arguments would be called as well
        nested = "_target_" in repr(arguments)
        if nested or (target not in OWN_HYDRA_CALLBACKS
                      and not target.startswith(TRUSTED_CALLBACK_PACKAGES)):
            raise ValueError(
                f"hydra.callbacks.{name}._target_={target[:80] or '(none)'}: the zoo runs only "
                f"its own Hydra callbacks ({', '.join(OWN_HYDRA_CALLBACKS)}) and Hydra's "
                "(hydra.experimental.callbacks.*, hydra_plugins.*), with no _target_ among its "
                "arguments; remove it from the config (docs/RELIABILITY.md, trust model)")


def _checked_hydra_callbacks() -> None:
    """Run :func:`check_hydra_callbacks` before Hydra instantiates its callbacks (Hydra has no
    hook there: its ``Callbacks`` class is wrapped, once per process)."""
    from hydra._internal.callbacks import Callbacks

    original = Callbacks.__init__
    if getattr(original, "zoo_checked", False):
        return

    def checked(self: Any, config: Any = None, *args: Any, **kwargs: Any) -> None:
        check_hydra_callbacks(config)
        original(self, config, *args, **kwargs)

    checked.zoo_checked = True  # type: ignore[attr-defined]
    Callbacks.__init__ = checked


def register_configs() -> None:
    """Register the model-name source and the schemas with Hydra (once per process)."""
    global _registered
    if _registered:
        return
    Plugins.instance().register(ModelNameSource)
    Plugins.instance().register(ModelNameSearchPath)
    register_schemas()
    _checked_hydra_callbacks()
    _registered = True


# ------------------------------------------------------------------ errors in one line


def _close(name: str, choices: Any) -> str:
    close = difflib.get_close_matches(name, [str(c) for c in choices], n=3, cutoff=0.6)
    return f"did you mean {' or '.join(close)}? " if close else ""


def _no_such_key(cause: OmegaConfBaseException) -> str:
    """"Key 'max_epoch' is not in struct": the closest keys, then every key of the parent."""
    schema = getattr(cause, "object_type", None)
    parent_node = getattr(cause, "parent_node", None)
    if dataclasses.is_dataclass(schema):
        keys = sorted(f.name for f in dataclasses.fields(schema))
    elif isinstance(parent_node, DictConfig):
        keys = sorted(str(key) for key in parent_node.keys())
    else:
        return str(getattr(cause, "msg", None) or cause).splitlines()[0]
    parent, _, key = cause.full_key.rpartition(".")
    return f"no such setting; {_close(key, keys)}{parent or 'the config'} has: {', '.join(keys)}"


def config_error_line(error: BaseException) -> str:
    """One line for an error Hydra or OmegaConf raised while composing: the key and the rule."""
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        # "Value 'x' of type 'str' could not be converted to Integer", "Invalid value 'foo',
        # expected one of [sgd, adamw]": OmegaConf's first line, after the key it is about
        message = str(getattr(cause, "msg", None) or cause).splitlines()[0]
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
            message = _no_such_key(cause)
        return f"{cause.full_key}: {message}"
    if isinstance(error, MissingConfigException) and error.options:
        first = str(error).splitlines()[0]
        # the schemas (_schema, _cifar_resnet_schema) share the groups' folders: not choices
        options = [option for option in error.options if not option.startswith("_")]
        missing = str(error.missing_cfg_file or "").rpartition("/")[2]
        return f"{first}; {_close(missing, options)}choose one of: {', '.join(options)}"
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def internal_choice(arguments: Sequence[str]) -> str | None:
    """The first command-line override that picks a schema as a group's config (``data=_schema``:
    composed as data, it would fail deep inside the run), as a one-line error, or None."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    try:
        overrides = OverridesParser.create().parse_overrides(
            [text for text in arguments if "=" in text and not text.startswith("-")])
    except HydraException:  # Hydra reports a malformed override itself
        return None
    repo = ConfigStore.instance().repo
    for override in overrides:
        value = override.value()
        names = value.list if isinstance(value, ChoiceSweep) else [value]
        group = repo
        for part in override.key_or_group.split("/"):
            group = group.get(part, {}) if isinstance(group, dict) else {}
        for name in names:
            if isinstance(name, str) and name.startswith("_") and f"{name}.yaml" in group:
                return (f"{override.key_or_group}={name}: names that start with _ are the zoo's "
                        f"config schemas, not choices; pick a {override.key_or_group} config "
                        f"(configs/{override.key_or_group}/)")
    return None


def _raised_in_job(error: BaseException) -> bool:
    # Hydra's own test: frames below run_job belong to the job (zoo.runs.train), not to composition.
    return any(frame.name == "run_job" for frame in traceback.extract_tb(error.__traceback__))


@contextmanager
def one_line_config_errors(exit_code: int = 2) -> Iterator[None]:
    """Around a ``@hydra.main`` function: a config that does not compose gets one line.

    Hydra prints its composition errors over several lines with a hint about HYDRA_FULL_ERROR;
    here it re-raises them (HYDRA_FULL_ERROR=1) and they become ``error: <key>: <rule>``.
    Errors of the job itself pass through unchanged; ZOO_DEBUG=1 or the user's own
    HYDRA_FULL_ERROR=1 keeps Hydra's report (any other value of it does not). An override that
    picks a schema as a config (``data=_schema``) is refused first, in one line.
    """
    # Only HYDRA_FULL_ERROR=1 asks for Hydra's report: "0" or "" are not a request for it
    keep_hydra_report = bool(os.environ.get("ZOO_DEBUG")) or \
        os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; below decides what is shown
    internal = None if keep_hydra_report else internal_choice(sys.argv[1:])
    if internal is not None:
        print(f"error: {internal}", file=sys.stderr, flush=True)
        sys.exit(exit_code)
    try:
        yield
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        if keep_hydra_report or _raised_in_job(error):
            raise
        print(f"error: {config_error_line(error)}", file=sys.stderr, flush=True)
        sys.exit(exit_code)
