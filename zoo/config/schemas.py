"""Schemas of the config keys the zoo owns: Hydra structured configs, checked when Hydra composes.

Each dataclass is stored in Hydra's ConfigStore and named first in the defaults list of the YAML
it describes (``configs/train.yaml`` for ``optim`` and ``scheduler``, every file of
``configs/data``, ``configs/callbacks`` and ``configs/model``), so the YAML files keep the values
and their comments while the schema holds the types and the allowed choices. A wrong type, an
unknown choice or an unknown key then fails before anything is built, in one line that names
the key (``zoo.config.source.one_line_config_errors``)::

    error: optim.name: Invalid value 'adamx', expected one of [sgd, adamw]

The trainer and logger groups are Lightning's and W&B's, checked by them. Choices are enums, so
OmegaConf can name the allowed values; :func:`plain` turns them back into strings before the
config reaches the run, so checkpoints, W&B and the run record hold plain values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig, OmegaConf

from zoo.models.cifar_resnet import NORMS, SHORTCUTS
from zoo.models.resnet import STEMS
from zoo.models.vit import INITS as VIT_INITS
from zoo.models.vit import NORMS as VIT_NORMS
from zoo.models.vit import POOLS


class Choice(str, Enum):
    """An allowed value that compares, hashes and prints as its string (``"sgd"``)."""

    def __str__(self) -> str:
        return str(self.value)


def choices(name: str, values: tuple[str, ...]) -> type[Choice]:
    return Choice(name, {value: value for value in values})  # type: ignore[return-value]


# The allowed values, one place: the code that acts on them imports these tuples (the models'
# own options come from the model files).
OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("cosine", "onecycle", "step", "none")
LOADERS = ("auto", "device", "torch")
PROGRESS_BARS = ("rich", "tqdm", "none")
# What train.py may return to a Hydra sweeper (``objective`` in train.yaml; zoo/runs/objective.py):
# the metrics ZooModule logs and the run records.
OBJECTIVES = ("val/acc", "val/acc5", "val/loss", "test/acc", "test/acc5", "test/loss",
              "train_eval/err", "train_eval/acc", "train_eval/loss", "train/acc",
              "train/loss_epoch")

Optimizer = choices("Optimizer", OPTIMIZERS)
Scheduler = choices("Scheduler", SCHEDULERS)
Loader = choices("Loader", LOADERS)
ProgressBar = choices("ProgressBar", PROGRESS_BARS)
Stem = choices("Stem", STEMS)
Shortcut = choices("Shortcut", SHORTCUTS)
Norm = choices("Norm", NORMS)
VitNorm = choices("VitNorm", VIT_NORMS)
Pool = choices("Pool", POOLS)
VitInit = choices("VitInit", VIT_INITS)


# ------------------------------------------------------------------ optimisation (train.yaml)


@dataclass
class OptimConfig:
    name: Optimizer = Optimizer.sgd  # type: ignore[attr-defined]
    lr: float = 0.1  # for reference_batch_size images; scaled with the global batch
    reference_batch_size: int = 128
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5.0e-4


@dataclass
class SchedulerConfig:
    name: Scheduler = Scheduler.cosine  # type: ignore[attr-defined]
    warmup_fraction: float = 0.05
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    pct_start: float = 0.25


# ------------------------------------------------------------------ data (configs/data)


@dataclass
class DataConfig:
    name: str = MISSING
    root: str | None = None
    num_classes: int | None = None  # None: folder datasets count their classes
    in_channels: int = MISSING
    image_size: int = MISSING
    mean: list[float] = MISSING
    std: list[float] = MISSING
    stem: Stem = Stem.cifar  # type: ignore[attr-defined]
    batch_size: int = 128
    num_workers: int = 2
    loader: Loader = Loader.auto  # type: ignore[attr-defined]
    train_subset: int | None = None
    val_size: int | None = None
    augment: bool = True
    crop_padding: int | None = None  # None: the dataset's recipe
    download: bool = False
    seed: int = II("seed")


# ------------------------------------------------------------------ callbacks (configs/callbacks)


@dataclass
class CheckpointConfig:
    save_top_k: int = 1
    monitor: str = "val/acc"
    every_n_train_steps: int | None = None


@dataclass
class GradientFlowConfig:
    enabled: bool = True
    every_n_steps: int = II("trainer.log_every_n_steps")


@dataclass
class ResidualGainConfig:
    enabled: bool = True
    probe_batch_size: int = 64


@dataclass
class ExplosionGuardConfig:
    enabled: bool = True
    max_loss: float = 1.0e4
    max_grad_norm: float = 1.0e8
    check_every_n_steps: int = 10


@dataclass
class TrainEvalConfig:
    at_end: bool = True
    every_n_epochs: int | None = None


@dataclass
class CallbacksConfig:
    # Callbacks are built by name from these keys only: a config cannot name a class to run.
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    progress_bar: ProgressBar = ProgressBar.rich  # type: ignore[attr-defined]
    lr_monitor: bool = True
    gradient_flow: GradientFlowConfig = field(default_factory=GradientFlowConfig)
    residual_gain: ResidualGainConfig = field(default_factory=ResidualGainConfig)
    explosion_guard: ExplosionGuardConfig = field(default_factory=ExplosionGuardConfig)
    train_eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)


# ------------------------------------------------------------------ models (configs/model)
# One schema per family: the options its build() takes (zoo/models/<family>.py), plus the keys
# every model config has. A family's YAML files name its schema in their defaults list.


@dataclass
class ModelConfig:
    name: str = MISSING
    num_classes: int | None = II("data.num_classes")
    in_channels: int = II("data.in_channels")
    pretrained: str | None = None  # a torchvision/community weight name, a URL or a path
    memory_efficient: bool = False  # activation checkpointing (DenseNets: of the bottlenecks)
    compile: bool = False


@dataclass
class CifarResNetConfig(ModelConfig):
    shortcut: Shortcut = Shortcut.A  # type: ignore[attr-defined]
    norm: Norm = Norm.batch  # type: ignore[attr-defined]
    init_gain: float = 1.0
    zero_init_residual: bool = False
    fixup_rescale: bool = True  # norm=none + zero_init_residual: Fixup's L^-1/2 and zero classifier
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])


@dataclass
class ResNetConfig(ModelConfig):
    stem: Stem = II("data.stem")
    zero_init_residual: bool = False
    drop_path: float = 0.0


@dataclass
class PreActResNetConfig(ModelConfig):
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])  # inner filters per stage


@dataclass
class DenseNetConfig(ModelConfig):
    pass


@dataclass
class VitConfig(ModelConfig):
    image_size: int = II("data.image_size")  # the position embeddings are sized for it
    skip: bool | None = None  # None: as the name says (vit_... or its plain twin plain_vit_...)
    norm: VitNorm = VitNorm.pre  # type: ignore[attr-defined]
    width: int | None = None  # None: the name's size (tiny 192, small 384, base 768)
    heads: int | None = None  # None: the name's size (tiny 3, small 6, base 12)
    mlp_ratio: float = 4.0  # 0: attention only, no MLP sub-blocks
    pool: Pool = Pool.token  # type: ignore[attr-defined]
    init: VitInit = VitInit.timm  # type: ignore[attr-defined]


# The name each schema has in the ConfigStore, as YAML defaults lists write it.
SCHEMAS: dict[tuple[str | None, str], Any] = {
    (None, "_optim_schema"): OptimConfig,
    (None, "_scheduler_schema"): SchedulerConfig,
    ("data", "_schema"): DataConfig,
    ("callbacks", "_schema"): CallbacksConfig,
    ("model", "_cifar_resnet_schema"): CifarResNetConfig,
    ("model", "_resnet_schema"): ResNetConfig,
    ("model", "_preact_resnet_schema"): PreActResNetConfig,
    ("model", "_densenet_schema"): DenseNetConfig,
    ("model", "_vit_schema"): VitConfig,
}


def register_schemas() -> None:
    store = ConfigStore.instance()
    for (group, name), schema in SCHEMAS.items():
        store.store(group=group, name=name, node=schema)


def schema_defaults(schema: type) -> dict[str, Any]:
    """A schema's defaults as plain values (``OptimConfig`` -> ``{"name": "sgd", ...}``): what a
    component built in Python without a config (``ZooModule``) uses, so that it trains as
    ``train.py`` does."""
    return OmegaConf.to_container(OmegaConf.structured(schema), enum_to_str=True)


def plain(cfg: DictConfig) -> DictConfig:
    """The composed config with every choice a plain string again, still a struct DictConfig.

    Enum values must not reach a checkpoint: loading one with ``weights_only=True`` would refuse
    the enum class.
    """
    plain_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True))
    OmegaConf.set_struct(plain_cfg, True)
    return plain_cfg


def load_group_file(path: Any) -> DictConfig:
    """A group's YAML file read on its own, without Hydra (tools, tests): its values, without the
    defaults list that names its schema."""
    values = OmegaConf.load(path)
    if "defaults" in values:
        values.pop("defaults")
    return values
