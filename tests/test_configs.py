"""Every config file composes, resolves and builds what it names."""

from __future__ import annotations

import pytest
from conftest import CONFIGS
from omegaconf import OmegaConf

import zoo


def names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml") if not p.stem.startswith("_"))


def test_model_files_are_only_the_family_templates():
    # a named net's config is generated (zoo/config/source.py); a YAML is kept only where a name
    # has settings of its own, so a redundant per-name file fails here
    from zoo.config.source import TEMPLATES

    assert set(names("model")) == set(TEMPLATES.values())


@pytest.mark.parametrize("data", names("data"))
def test_data_configs_state_the_dataset_facts(compose, data):
    cfg = compose(f"data={data}")
    facts = OmegaConf.to_container(cfg.data, resolve=True)
    for key in ("num_classes", "in_channels", "image_size", "mean", "std", "stem", "batch_size"):
        assert key in facts, f"data/{data}.yaml lacks {key}"
    assert len(facts["mean"]) == len(facts["std"]) == facts["in_channels"]


@pytest.mark.parametrize("model", zoo.list_models())
def test_model_configs_compose_and_build(compose, model):
    from zoo.training.module import ZooModule

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


@pytest.mark.parametrize("model", ["resnet14", "plain26", "preact_plain164"])
def test_any_valid_depth_composes_with_its_family_settings(compose, model):
    cfg = compose(f"model={model}", "data=digits")
    template = "preact_resnet110" if model.startswith("preact") else "resnet20"
    settings = OmegaConf.to_container(compose(f"model={template}", "data=digits").model)
    assert OmegaConf.to_container(cfg.model) == {**settings, "name": model}


def test_a_named_net_without_a_file_takes_its_schema_and_the_datasets_stem(compose):
    # resnet18 has no YAML: its schema's stem follows the dataset (cifar at 32 px, imagenet at 224)
    assert compose("model=resnet18", "data=digits").model.stem == "cifar"
    assert compose("model=resnet18", "data=imagenet").model.stem == "imagenet"


def test_an_invalid_depth_names_the_rule(compose):
    with pytest.raises(ValueError, match=r"resnet15: CIFAR resnet depths are 6n\+2 \(8, 14, 20"):
        compose("model=resnet15")


def test_train_py_builds_any_depth_and_refuses_a_wrong_one_in_one_line(tmp_path):
    from conftest import run_train

    run_train(tmp_path / "resnet14", "model=resnet14", "trainer.max_epochs=1",
                       "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                       "trainer.limit_test_batches=1", "logger=none",
                       "callbacks.train_eval.at_end=false")
    assert "resnet14" in (tmp_path / "resnet14" / ".hydra" / "config.yaml").read_text()
    wrong = run_train(tmp_path / "wrong", "model=resnet15", check=False)
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines() == [(
        "error: resnet15: CIFAR resnet depths are 6n+2 (8, 14, 20, 26, 32, 44, 56, 110, 1202, ...);"
        " ImageNet ResNets are resnet18/34/50/101/152.")]
    unknown = run_train(tmp_path / "unknown", "model=resnt20", check=False)
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1
    assert "model/resnt20" in unknown.stderr and "resnet20" in unknown.stderr


def test_common_trainer_keys_need_no_plus(compose):
    cfg = compose("trainer.max_steps=3", "trainer.val_check_interval=0.5",
                  "trainer.check_val_every_n_epoch=2", "trainer.accumulate_grad_batches=4",
                  "trainer.fast_dev_run=true")
    assert (cfg.trainer.max_steps, cfg.trainer.val_check_interval) == (3, 0.5)
    assert (cfg.trainer.check_val_every_n_epoch, cfg.trainer.accumulate_grad_batches) == (2, 4)
    assert cfg.trainer.fast_dev_run is True


def test_imagenet_format_folders_set_the_class_count_unless_the_user_did(tmp_path):
    from conftest import run_train
    from test_data import write_image_folder

    write_image_folder(tmp_path / "subset",
                       {"train": ["n1", "n2", "n3"], "val": ["n1", "n2", "n3"]}, per_class=4)
    overrides = ["model=resnet8", "data=imagenet", f"data.root={tmp_path / 'subset'}",
                 "data.image_size=16", "data.batch_size=4", "data.num_workers=0",
                 "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_steps=1",
                 "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "logger=none",
                 "callbacks.progress_bar=none", "callbacks.train_eval.at_end=false"]
    run_train(tmp_path / "counted", *overrides, fast=False)
    saved = (tmp_path / "counted" / ".hydra" / "config.yaml").read_text()
    assert "num_classes: null" in saved  # what the user asked for; the run record has the count
    import torch

    checkpoint = torch.load(next((tmp_path / "counted" / "checkpoints").glob("last*.ckpt")),
                            map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["model"]["num_classes"] == 3
    conflict = run_train(tmp_path / "conflict", *overrides, "data.num_classes=1000", fast=False,
                         check=False)
    assert conflict.returncode == 2
    assert "has 3 class folders but data.num_classes=1000" in conflict.stderr
