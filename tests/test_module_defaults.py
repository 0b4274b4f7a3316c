"""The schemas are the one home of the training defaults: a ZooModule built in Python, without a
config, trains with train.yaml's recipe (issue 26, item 3: it used to skip the warm-up)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from zoo.config.schemas import OptimConfig, SchedulerConfig, plain, schema_defaults
from zoo.training.module import ZooModule, lr_factor

MODEL = {"name": "resnet8", "num_classes": 10, "in_channels": 1}
STEPS = 100


def rates_over_training(module: ZooModule) -> list[float]:
    """The learning rate of every step, as configure_optimizers sets it up for STEPS steps."""
    module._trainer = SimpleNamespace(
        world_size=1, accumulate_grad_batches=1, is_global_zero=True, max_epochs=1,
        ckpt_path=None, estimated_stepping_batches=STEPS,
        fit_loop=SimpleNamespace(_combined_loader=None))
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(STEPS):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_a_module_built_in_python_warms_up_exactly_as_train_py(compose):
    cfg = plain(compose("model=resnet8", "data=digits"))
    as_train_py = ZooModule(MODEL, optim=OmegaConf.to_container(cfg.optim, resolve=True),
                            scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
                            batch_size=128)  # zoo.runs.train.build_module's arguments
    in_python = ZooModule(MODEL, batch_size=128)
    expected = rates_over_training(as_train_py)
    assert rates_over_training(in_python) == pytest.approx(expected)
    warmup_steps = int(STEPS * cfg.scheduler.warmup_fraction)
    assert warmup_steps == 5  # train.yaml's 0.05 of the steps
    assert expected[0] == pytest.approx(expected[warmup_steps - 1] / warmup_steps)  # rising
    assert in_python.hparams.optim == as_train_py.hparams.optim
    assert in_python.hparams.scheduler == as_train_py.hparams.scheduler


def test_the_schema_defaults_are_train_yamls(compose):
    cfg = plain(compose())
    assert schema_defaults(SchedulerConfig) == OmegaConf.to_container(cfg.scheduler)
    assert schema_defaults(OptimConfig) == OmegaConf.to_container(cfg.optim)


def test_keys_a_caller_leaves_out_take_the_schemas_defaults():
    module = ZooModule(MODEL, optim={"name": "adamw", "lr": 0.01}, scheduler={"name": "step"})
    assert module.hparams.optim["weight_decay"] == OptimConfig.weight_decay
    assert module.hparams.scheduler["warmup_fraction"] == SchedulerConfig.warmup_fraction == 0.05
    step = lr_factor({"name": "step"}, total_steps=100)  # milestones 0.5, 0.75; gamma 0.1
    assert [step(4), step(5), step(50), step(75)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
