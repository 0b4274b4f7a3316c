"""Adding a family takes its file in zoo/models/ and its schema, nothing else (docs/ARCHITECTURE.md,
"Where to add: a model"): a toy 3-block net with a skip switch, added to a copy of the project,
is listed by ``python -m zoo.models``, trains through ``train.py model=toy3`` with its gradient
flow logged, and runs through the lesion experiment."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import FAST_OVERRIDES, REPO

# The whole family: one file, as a contributor would write it (no Lightning, Hydra or W&B).
TOY_FAMILY = '''"""A toy family: a stem, three blocks with a skip switch, a head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo.models.common import DepthUnit, Network, SkipBlock

DEFAULT_NUM_CLASSES = 10
PAPER = "tests/test_new_family.py"
INPUT_SIZE = 32
RELU_AFTER_ADDITION = True


class ToyBlock(SkipBlock):
    """relu(bn(conv(x)) + x); skip=False drops the + x."""

    relu_after_addition = RELU_AFTER_ADDITION

    def __init__(self, width: int, skip: bool) -> None:
        super().__init__()
        self.skip = skip
        self.conv = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def shortcut_branch(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual_branch(x)
        if self.skip:
            out = out + self.shortcut_branch(x)
        return torch.relu(out)


class ToyNet(Network):
    def __init__(self, num_classes: int, in_channels: int, width: int, skip: bool) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(*(ToyBlock(width, skip) for _ in range(3)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(width, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def depth_units(self) -> list[DepthUnit]:
        blocks = [DepthUnit(f"blocks.{i}", "layer1", b) for i, b in enumerate(self.blocks)]
        return [DepthUnit("stem", "stem", self.stem), *blocks, DepthUnit("head", "head", self.head)]


VARIANTS: dict[str, dict[str, Any]] = {
    "toy3": {"depth": 5, "skip": True},
    "plain_toy3": {"depth": 5, "skip": False},
}


def skip_type(arguments: dict[str, Any]) -> str:
    return "add" if arguments["skip"] else "none"


def build(variant: dict[str, Any], num_classes: int, in_channels: int, width: int = 8,
          memory_efficient: bool = False) -> ToyNet:
    return ToyNet(num_classes, in_channels, width, variant["skip"])
'''

# Its schema: the options its build() takes, typed, under the name its configs use.
TOY_SCHEMA = '''

@dataclass
class ToyConfig(ModelConfig):
    width: int = 8


SCHEMAS[("model", "_toy_schema")] = ToyConfig
'''


def _project_with_the_toy_family(root: Path) -> Path:
    """A copy of the project (code, configs, train.py) with the family's two additions."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "zoo", root / "zoo", ignore=ignore)
    shutil.copytree(REPO / "configs", root / "configs", ignore=ignore)
    shutil.copy2(REPO / "train.py", root / "train.py")
    (root / "zoo" / "models" / "toy.py").write_text(TOY_FAMILY)
    with (root / "zoo" / "config" / "schemas.py").open("a") as schemas:
        schemas.write(TOY_SCHEMA)
    return root


def _run(root: Path, *command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    result = subprocess.run([sys.executable, *command], cwd=root, env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_a_new_family_needs_its_file_and_its_schema_only(tmp_path):
    root = _project_with_the_toy_family(tmp_path / "project")
    listed = _run(root, "-m", "zoo.models").stdout
    assert any(line.split()[:3] == ["toy3", "toy", "add"] for line in listed.splitlines())
    assert any(line.split()[:3] == ["plain_toy3", "toy", "none"] for line in listed.splitlines())

    run_dir = tmp_path / "run"
    _run(root, "train.py", *FAST_OVERRIDES, f"hydra.run.dir={run_dir}", "model=toy3",
         "model.width=4", "trainer.max_epochs=1", "trainer.limit_train_batches=4",
         "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "logger=csv",
         "callbacks.train_eval.at_end=false")
    with (run_dir / "gradient_flow.csv").open() as handle:
        units = {row["unit_name"] for row in csv.DictReader(handle)}
    assert {"stem", "blocks.0", "blocks.1", "blocks.2", "head"} <= units

    out = tmp_path / "lesion"
    _run(root, "-m", "zoo.experiments", "lesion", str(run_dir), "--out", str(out),
         "--max-images", "64", "--max-deleted", "1", "--draws", "1", "--gain-images", "32")
    with (out / "lesion_single.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["model"] for row in rows} == {"toy3"} and {row["skip"] for row in rows} == {"add"}
    deleted = [row for row in rows if row["deleted"] != "intact"]
    assert [row["unit_name"] for row in deleted] == ["blocks.0", "blocks.1", "blocks.2"]
    assert {row["deleted"] for row in deleted} == {"shortcut only"}
