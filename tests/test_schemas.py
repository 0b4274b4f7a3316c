"""The config schemas (zoo/config/schemas.py): every key the zoo owns is typed, its choices are
named, and a bad value stops composition with one line naming the key."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from zoo.config.source import config_error_line


def error_line(compose, *overrides: str) -> str:
    with pytest.raises(Exception) as raised:  # noqa: PT011 - Hydra's or OmegaConf's, checked below
        compose("data=digits", *overrides)
    return config_error_line(raised.value)


# One bad value per schema: (override, the line train.py prints after "error: ").
BAD_VALUES = {
    "optim": ("optim.name=adamx",
              "optim.name: Invalid value 'adamx', expected one of [sgd, adamw]"),
    "optim number": ("optim.lr=fast",
                     "optim.lr: Value 'fast' of type 'str' could not be converted to Float"),
    "scheduler": ("scheduler.name=linear",
                  "scheduler.name: Invalid value 'linear', "
                  "expected one of [cosine, onecycle, step, none]"),
    "data": ("data.loader=fast",
             "data.loader: Invalid value 'fast', expected one of [auto, device, torch]"),
    "data number": ("data.batch_size=1.5",
                    "data.batch_size: Value '1.5' of type 'float' "
                    "could not be converted to Integer"),
    "callbacks": ("callbacks.progress_bar=fancy",
                  "callbacks.progress_bar: Invalid value 'fancy', "
                  "expected one of [rich, tqdm, none]"),
    "callbacks nested": ("callbacks.gradient_flow.enabled=maybe",
                         "callbacks.gradient_flow.enabled: Value 'maybe' "
                         "is not a valid bool (type str)"),
    "cifar resnet": ("model.shortcut=C",
                     "model.shortcut: Invalid value 'C', expected one of [A, B]"),
    "cifar resnet list": ("model.widths=[8,16,x]",
                          "model.widths[2]: Value 'x' of type 'str' "
                          "could not be converted to Integer"),
    "imagenet resnet": ("model=resnet50 model.stem=tiny",
                        "model.stem: Invalid value 'tiny', expected one of [imagenet, cifar]"),
    "densenet": ("model=densenet40_12 model.memory_efficient=sometimes",
                 "model.memory_efficient: Value 'sometimes' is not a valid bool (type str)"),
    "preact resnet": ("model=preact_resnet110 model.compile=soon",
                      "model.compile: Value 'soon' is not a valid bool (type str)"),
}


@pytest.mark.parametrize("overrides, line", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_a_bad_value_gets_one_line_naming_the_key(compose, overrides, line):
    assert error_line(compose, *overrides.split()) == line


@pytest.mark.parametrize("override, keys", [
    ("optim.betas=1",
     "optim has: lr, momentum, name, nesterov, reference_batch_size, weight_decay"),
    ("model=densenet40_12 model.norm=none",
     "model has: compile, in_channels, memory_efficient, name, num_classes, pretrained"),
    ("callbacks.gradient_flow.every=3", "callbacks.gradient_flow has: enabled, every_n_steps"),
])
def test_an_unknown_key_gets_the_keys_there_are(compose, override, keys):
    key = override.split()[-1].split("=")[0]
    assert error_line(compose, *override.split()) == f"{key}: no such setting; {keys}"


def test_a_family_schema_admits_only_its_own_options(compose):
    # norm is a CIFAR-ResNet option: the ImageNet family has no such switch
    assert error_line(compose, "model=resnet50", "model.norm=none").startswith(
        "model.norm: no such setting; model has: compile, drop_path,")


def test_choices_reach_the_run_as_plain_strings(compose):
    from zoo.config.schemas import plain

    cfg = compose("data=digits", "optim.name=adamw", "model.shortcut=B")
    assert type(cfg.optim.name).__name__ == "Optimizer"  # an enum while composing ...
    converted = plain(cfg)
    assert type(converted.optim.name) is str and converted.optim.name == "adamw"  # ... not after
    container = OmegaConf.to_container(converted.model, resolve=True)
    assert type(container["shortcut"]) is str and container["shortcut"] == "B"
    assert OmegaConf.is_struct(converted)  # a typo in code still fails


def test_good_values_compose_with_their_types(compose):
    cfg = compose("data=digits", "optim.lr=1", "data.batch_size=64", "model.widths=[8,16,32]",
                  "callbacks.train_eval.every_n_epochs=2")
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # 1 -> 1.0: a Float key
    assert cfg.model.widths == [8, 16, 32] and cfg.callbacks.train_eval.every_n_epochs == 2


def test_every_model_file_names_its_familys_schema():
    from pathlib import Path

    from zoo.models import describe

    for path in sorted((Path(__file__).parents[1] / "configs" / "model").glob("*.yaml")):
        family = describe(path.stem)["family"]
        defaults = OmegaConf.load(path).get("defaults")
        assert defaults and defaults[0] == f"_{family}_schema", path.name


def test_train_py_prints_the_schema_error_in_one_line(tmp_path):
    from conftest import run_train

    result = run_train(tmp_path / "run", "scheduler.name=cosinus", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: scheduler.name: Invalid value 'cosinus', "
        "expected one of [cosine, onecycle, step, none]"
    ]
    assert not (tmp_path / "run" / "checkpoints").exists()
