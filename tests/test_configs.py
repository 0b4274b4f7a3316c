"""Every config file composes, resolves and builds what it names."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

import zoo
from conftest import CONFIGS


def names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml") if not p.stem.startswith("_"))


def test_every_registered_model_has_a_config_and_back():
    assert set(names("model")) == set(zoo.list_models())


@pytest.mark.parametrize("data", names("data"))
def test_data_configs_state_the_dataset_facts(compose, data):
    cfg = compose(f"data={data}")
    facts = OmegaConf.to_container(cfg.data, resolve=True)
    for key in ("num_classes", "in_channels", "image_size", "mean", "std", "stem", "batch_size"):
        assert key in facts, f"data/{data}.yaml lacks {key}"
    assert len(facts["mean"]) == len(facts["std"]) == facts["in_channels"]


@pytest.mark.parametrize("model", names("model"))
def test_model_configs_compose_and_build(compose, model):
    from zoo.module import ZooModule

    cfg = compose(f"model={model}", "data=digits")
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    assert model_cfg["name"] == model
    assert model_cfg["num_classes"] == cfg.data.num_classes == 10
    if model.endswith(("1202", "1001", "_250_24", "_190_40", "152", "161", "201")):
        return  # large nets: built in test_models; composing them is what is checked here
    module = ZooModule(model=model_cfg)
    assert module.num_classes == 10


@pytest.mark.parametrize("group", ["logger", "trainer", "callbacks", "experiment"])
def test_every_file_of_a_group_composes(compose, group):
    for name in names(group):
        cfg = compose(f"{group}={name}", "data=digits")
        OmegaConf.to_container(cfg, resolve=True)


def test_several_loggers_compose_together(compose):
    cfg = compose("logger=[wandb,csv,tensorboard]")
    assert set(cfg.logger) == {"wandb", "csv", "tensorboard"}


def test_unknown_override_key_is_refused_by_hydra(compose):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="trainer.max_epoch"):
        compose("trainer.max_epoch=3")
