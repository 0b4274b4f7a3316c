"""Where the lesion's trained nets and images come from: a run directory or ``.ckpt`` file, or
the zoo's shipped weights (``NAME:DATASET``, e.g. ``resnet56:fashion_mnist``: no training run
needed); the evaluation split, the training images that re-estimate BatchNorm statistics; and
:func:`lesion_runs`, which measures them all with :mod:`zoo.experiments.lesion`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.experiments.lesion import (
    Batches,
    LesionError,
    deletable_blocks,
    lesion_network,
    lesion_random,
)

SHIPPED = re.compile(r"^(?P<name>[A-Za-z0-9_]+):(?P<dataset>[a-z0-9_]+)$")

def checkpoint_path(path: Path) -> Path:
    """A checkpoint file, or a run directory's ``checkpoints/last.ckpt``."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint; pass a .ckpt file or a run directory "
                                "with checkpoints/last.ckpt")
    return path


def load_network(checkpoint: Path) -> tuple[nn.Module, dict[str, Any]]:
    from zoo.training.module import ZooModule

    module = ZooModule.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=True)
    return module.net.eval(), dict(module.hparams["model"])


def run_data_config(checkpoint: Path) -> dict[str, Any]:
    """The data config of the run the checkpoint belongs to (its ``run.json`` or Hydra config)."""
    from zoo.runs.reader import read_run, run_dir_above

    run_dir = run_dir_above(checkpoint)
    if run_dir is None:
        raise FileNotFoundError(f"{checkpoint}: no run directory above it; pass --data-config")
    run = read_run(run_dir)
    data = dict(run.record.get("data") or {})
    if not data:
        raise ValueError(f"{run_dir}: the run records no data config; pass --data-config")
    if not isinstance(data.get("seed", 0), int):  # an unresolved ${seed} in an older run's config
        data["seed"] = run.seed if isinstance(run.seed, int) else 0
    return data


def _first_images(loader: Any, max_images: int | None,
                  device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches, count = [], 0
    for images, labels in loader:
        if max_images is not None and count + len(labels) > max_images:
            images, labels = images[: max_images - count], labels[: max_images - count]
        batches.append((images.to(device), labels.to(device)))
        count += len(labels)
        if max_images is not None and count >= max_images:
            break
    return batches


def evaluation_batches(data_cfg: Any, split: str, max_images: int | None,
                       device: str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The split's images and labels, on ``device``; all of them when ``max_images`` is None."""
    from zoo.data import build_datamodule

    data_cfg = dict(data_cfg)
    data_cfg.update(num_workers=0, loader="torch")
    datamodule = build_datamodule(data_cfg)
    datamodule.setup("test")
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    return _first_images(loader, max_images, device)


def calibration_batches(data_cfg: Any, images: int,
                        device: str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``images`` training images (the run's training split, no augmentation, seeded shuffle)
    for re-estimating BatchNorm statistics; never the evaluation split."""
    from zoo.data import build_datamodule

    data_cfg = dict(data_cfg)
    data_cfg.update(num_workers=0, loader="torch", augment=False)
    datamodule = build_datamodule(data_cfg)
    datamodule.setup("fit")
    return _first_images(datamodule.train_dataloader(), images, device)


def _run_facts(checkpoint: Path, model_cfg: dict[str, Any], split: str,
               batches: Batches) -> dict[str, Any]:
    from zoo.models import describe
    from zoo.runs.reader import read_run, run_dir_above

    shipped = SHIPPED.match(str(checkpoint)) and not checkpoint.exists()
    run_dir = None if shipped else run_dir_above(checkpoint)
    seed = read_run(run_dir).seed if run_dir is not None else (0 if shipped else None)
    in_run = checkpoint.parent.name == "checkpoints"
    return {"run": str(checkpoint) if shipped else
            checkpoint.parent.parent.name if in_run else checkpoint.stem,
            "model": model_cfg["name"], "skip": describe(model_cfg["name"])["skip"],
            "seed": seed if isinstance(seed, int) else "", "checkpoint": str(checkpoint),
            "split": split, "images": sum(len(b[1]) for b in batches),
            "chance": 1.0 / int(model_cfg.get("num_classes") or 10)}


def shipped_network(name: str, dataset: str) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The zoo's shipped weights of ``name`` on ``dataset``: network, model facts, data config
    (the dataset's standard split; the weights were trained with seed 0)."""
    import zoo
    from zoo.weights import entry_for

    entry = entry_for(name, dataset)
    net = zoo.create(name, pretrained=dataset).eval()
    model_cfg = {"name": name, **entry["model_options"]}
    facts = net.preprocess  # the data facts that travel with the weights
    data = {"name": dataset, "num_classes": model_cfg["num_classes"],
            "in_channels": facts.in_channels, "image_size": facts.image_size,
            "mean": list(facts.mean), "std": list(facts.std), "val_size": 5000, "seed": 0}
    return net, model_cfg, data


def _network_and_data(path: Path | str, data_cfg: Any | None
                      ) -> tuple[nn.Module, dict[str, Any], dict[str, Any], Path | None]:
    """(network, model facts, data config, checkpoint file or None for shipped weights)."""
    shipped = SHIPPED.match(str(path))
    if shipped and not Path(path).exists():
        net, model_cfg, run_data = shipped_network(shipped["name"], shipped["dataset"])
        return net, model_cfg, dict(data_cfg) if data_cfg is not None else run_data, None
    checkpoint = checkpoint_path(Path(path))
    run_data = dict(data_cfg) if data_cfg is not None else run_data_config(checkpoint)
    net, model_cfg = load_network(checkpoint)
    return net, model_cfg, run_data, checkpoint


def lesion_runs(
    checkpoints: Sequence[Path],
    data_cfg: Any | None = None,
    split: str = "test",
    max_images: int | None = None,
    max_deleted: int = 0,
    draws: int = 10,
    seed: int = 0,
    bf16: bool = False,
    device: str = "cpu",
    random_max_images: int | None = None,
    calibration_images: int = 0,
    gain_images: int = 0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Single-block rows and k-random rows (none when ``max_deleted`` is 0) of every checkpoint
    (a ``.ckpt`` file or a run directory); the data is each run's own unless ``data_cfg``.

    ``random_max_images``: the k-random draws and the control on the first N images only (None:
    all); ``calibration_images`` > 0: the BatchNorm re-estimation control on that many training
    images; ``gain_images`` > 0: each block's residual gain on that many evaluation images.
    The draws are seeded by ``seed`` and the run's training seed: other seeds, other subsets.
    """
    single, randomised, cache = [], [], {}
    for path in checkpoints:
        net, model_cfg, run_data, checkpoint = _network_and_data(path, data_cfg)
        if not deletable_blocks(net):  # said before any data is read, not as a table of NaN
            raise LesionError(
                f"{path}: {model_cfg.get('name')} has no block that can be deleted: its layers "
                "concatenate (DenseNet) or change the shape, so no layer's output can be skipped; "
                "lesion a ResNet, a plain twin or a ViT")
        key = json.dumps(run_data, sort_keys=True, default=str)
        if key not in cache:  # runs of one sweep share their data: load it once
            cache = {key: {"eval": evaluation_batches(run_data, split, max_images, device)}}
            if calibration_images > 0:
                cache[key]["calibration"] = calibration_batches(run_data, calibration_images,
                                                                device)
        batches = cache[key]["eval"]
        net = net.to(device)
        facts = _run_facts(checkpoint or Path(str(path)), model_cfg, split, batches)
        gain_batches = _first_images(batches, gain_images, device) if gain_images > 0 else None
        subset = batches if random_max_images is None else \
            _first_images(batches, random_max_images, device)
        control = {"control_images": sum(len(b[1]) for b in subset) if calibration_images else 0}
        single += [{**facts, **control, **row} for row in lesion_network(
            net, batches, bf16, cache[key].get("calibration"), gain_batches, subset)]
        if max_deleted > 0:
            rows = lesion_random(net, subset, max_deleted, draws, f"{seed}:{facts['seed']}", bf16)
            images = sum(len(b[1]) for b in subset)
            randomised += [{**facts, "images": images, **row} for row in rows]
    return single, randomised

