"""Lesion: a trained residual net can do without a block; a plain net cannot.

Veit, Wilber, Belongie 2016, "Residual Networks Behave Like Ensembles of Relatively Shallow
Networks": deleting one block of a trained ResNet-110 barely changes its CIFAR-10 error
(Figure 3, except the downsampling blocks), and the error grows smoothly with the number k of
blocks deleted at random (Figure 5); the same deletion ruins a plain (VGG-style) net.

Two measurements on a trained checkpoint, evaluated in eval mode under ``torch.inference_mode``
(optionally in bf16 autocast, for speed), by default on the whole test split:

* every block deleted in turn (:func:`lesion_network`);
* k of the non-downsampling blocks deleted at once, several seeded random draws per k
  (:func:`random_deletions`, :func:`lesion_random`); a plain and a residual net of the same
  depth get the same draws, since the blocks that can be deleted are at the same places.

A deleted residual block keeps its shortcut (``relu(shortcut(x))``, :class:`ShortcutOnly`); a
deleted plain block is bypassed (the identity), which only a block that keeps the shape allows.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.models.common import DepthUnit, SkipBlock

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]
SINGLE_COLUMNS = ["run", "model", "skip", "split", "images", "chance", "unit_index", "unit_name",
                  "stage", "downsampling", "deleted", "accuracy"]
RANDOM_COLUMNS = ["run", "model", "skip", "split", "images", "chance", "k", "draw", "deleted_units",
                  "accuracy"]


class LesionError(ValueError):
    """The unit cannot be deleted (it changes the shape, or it is the stem or the head)."""


class ShortcutOnly(nn.Module):
    """A residual block with its residual branch deleted: ``post(shortcut(x))``.

    ``post`` is what the block applies after its addition: a ReLU for the post-activation
    blocks of He et al. 2015 (``relu(f(x) + x)``), nothing for pre-activation blocks (He et al.
    2016, ``x + f(x)``). For an identity shortcut the ReLU changes nothing, since ``x`` is the
    output of the previous block's ReLU and so already non-negative; for a projection shortcut
    (option B, ImageNet ``downsample``) it is the same ReLU the intact block would apply.
    The original block is referenced, not registered: the lesioned network's state dict holds
    only what is still in use.
    """

    def __init__(self, block: SkipBlock, relu_after_addition: bool) -> None:
        super().__init__()
        self.__dict__["block"] = block
        self.relu_after_addition = relu_after_addition

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block.shortcut_branch(x)
        if hasattr(self.block, "after_addition"):  # a block that says what follows its sum:
            return self.block.after_addition(out)  # a ViT sub-block (post-LN's norm, or nothing)
        return torch.relu(out) if self.relu_after_addition else out


def relu_after_addition(block: SkipBlock) -> bool:
    """True for post-activation blocks; pre-activation blocks (He et al. 2016) end in the sum."""
    return not type(block).__module__.endswith("preact_resnet")


def keeps_shape(module: nn.Module) -> bool:
    """True when the block maps its input to an output of the same shape (stride 1, same width)."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return True
    strided = any(s != 1 for conv in convs for s in conv.stride)
    return not strided and convs[0].in_channels == convs[-1].out_channels


def replacement_for(unit: DepthUnit) -> nn.Module:
    """What a deleted unit becomes: the shortcut alone (residual) or the identity (plain)."""
    module = unit.module
    if unit.stage in ("stem", "head"):
        raise LesionError(f"{unit.name}: the {unit.stage} cannot be deleted")
    if isinstance(module, SkipBlock):
        if module.skip:
            return ShortcutOnly(module, relu_after_addition(module))
        if keeps_shape(module):
            return nn.Identity()  # the plain block is bypassed
        raise LesionError(f"{unit.name}: a plain block that changes the shape cannot be bypassed")
    raise LesionError(f"{unit.name}: {type(module).__name__} changes the number of channels "
                      f"(a dense layer or transition) and cannot be deleted")


@contextmanager
def lesioned(net: nn.Module, *unit_names: str) -> Iterator[nn.Module]:
    """Delete the depth units ``unit_names`` of ``net`` for the duration of the ``with`` block;
    yields the (last) replacement module.

    Each unit's module is swapped in its parent for :func:`replacement_for`'s module and put
    back on exit (also on an exception): weights, buffers and outputs are as before.
    """
    units = {unit.name: unit for unit in net.depth_units()}
    missing = [name for name in unit_names if name not in units]
    if missing or not unit_names:
        raise KeyError(f"{missing or 'nothing'} to delete; depth units: {', '.join(units)}")
    replacements = [replacement_for(units[name]) for name in unit_names]  # refuse before swapping
    with ExitStack() as undo:
        for name, replacement in zip(unit_names, replacements, strict=True):
            parent_name, _, child_name = name.rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
            original = parent._modules[child_name]
            parent._modules[child_name] = replacement
            undo.callback(parent._modules.__setitem__, child_name, original)
        yield replacements[-1]


def deletable_blocks(net: nn.Module) -> list[str]:
    """The blocks Veit et al. delete at random: skip blocks (or their plain twins) that keep the
    shape -- every block but the downsampling ones -- in depth order."""
    return [u.name for u in net.depth_units()
            if isinstance(u.module, SkipBlock) and keeps_shape(u.module)]


def random_deletions(blocks: Sequence[str], max_deleted: int, draws: int,
                     seed: int = 0) -> list[tuple[int, int, tuple[str, ...]]]:
    """``(k, draw, blocks to delete)`` for k = 1..max_deleted: ``draws`` distinct random sets of
    k blocks per k (all of them when there are fewer), each set in depth order.

    Seeded per (seed, k), so that the sets for one k do not depend on ``max_deleted``.
    """
    order = {name: index for index, name in enumerate(blocks)}
    plan = []
    for k in range(1, min(max_deleted, len(blocks)) + 1):
        if math.comb(len(blocks), k) <= draws:
            chosen = list(itertools.combinations(blocks, k))
        else:
            rng, found = random.Random(f"{seed}:{k}"), {}
            while len(found) < draws:
                found[tuple(sorted(rng.sample(list(blocks), k), key=order.__getitem__))] = None
            chosen = list(found)
        plan += [(k, draw, names) for draw, names in enumerate(chosen)]
    return plan


def accuracy(net: nn.Module, batches: Batches, bf16: bool = False) -> float:
    """Top-1 accuracy in eval mode; ``bf16`` runs the forward pass under bf16 autocast."""
    net.eval()
    correct = total = 0
    with torch.inference_mode():
        for images, labels in batches:
            with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = net(images)
            correct += int((logits.argmax(1) == labels).sum())
            total += int(labels.numel())
    return correct / max(1, total)


def lesion_network(net: nn.Module, batches: Batches, bf16: bool = False) -> list[dict[str, Any]]:
    """Accuracy with each unit deleted in turn; ``unit_index`` -1 is the intact network."""
    rows = [{"unit_index": -1, "unit_name": "none", "stage": "", "downsampling": False,
             "deleted": "intact", "accuracy": accuracy(net, batches, bf16)}]
    for index, unit in enumerate(net.depth_units()):
        if unit.stage in ("stem", "head"):
            continue
        row = {"unit_index": index, "unit_name": unit.name, "stage": unit.stage,
               "downsampling": not keeps_shape(unit.module)}
        try:
            with lesioned(net, unit.name) as replacement:
                kind = "shortcut only" if isinstance(replacement, ShortcutOnly) else "bypassed"
                rows.append({**row, "deleted": kind, "accuracy": accuracy(net, batches, bf16)})
        except LesionError:
            rows.append({**row, "deleted": "cannot be deleted", "accuracy": math.nan})
    return rows


def lesion_random(net: nn.Module, batches: Batches, max_deleted: int, draws: int, seed: int = 0,
                  bf16: bool = False) -> list[dict[str, Any]]:
    """Accuracy with k random non-downsampling blocks deleted; k = 0 is the intact network."""
    rows = [{"k": 0, "draw": 0, "deleted_units": "", "accuracy": accuracy(net, batches, bf16)}]
    for k, draw, names in random_deletions(deletable_blocks(net), max_deleted, draws, seed):
        with lesioned(net, *names):
            rows.append({"k": k, "draw": draw, "deleted_units": " ".join(names),
                         "accuracy": accuracy(net, batches, bf16)})
    return rows


# ---------------------------------------------------------------- checkpoints and data


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
    from zoo.module import ZooModule

    module = ZooModule.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=True)
    return module.net.eval(), dict(module.hparams["model"])


def run_data_config(checkpoint: Path) -> dict[str, Any]:
    """The data config of the run the checkpoint belongs to (its ``run.json`` or Hydra config)."""
    from zoo.runs import read_run, run_dir_above

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


def evaluation_batches(data_cfg: Any, split: str, max_images: int | None,
                       device: str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The split's images and labels, on ``device``; all of them when ``max_images`` is None."""
    from zoo.data import build_datamodule

    data_cfg = dict(data_cfg)
    data_cfg.update(num_workers=0, loader="torch")
    datamodule = build_datamodule(data_cfg)
    datamodule.setup("test")
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    batches, count = [], 0
    for images, labels in loader:
        if max_images is not None and count + len(labels) > max_images:
            images, labels = images[: max_images - count], labels[: max_images - count]
        batches.append((images.to(device), labels.to(device)))
        count += len(labels)
        if max_images is not None and count >= max_images:
            break
    return batches


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
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Single-block rows and k-random rows (none when ``max_deleted`` is 0) of every checkpoint
    (a ``.ckpt`` file or a run directory); the data is each run's own unless ``data_cfg``."""
    from zoo.figures import family_of

    single, randomised, cache = [], [], {}
    for path in checkpoints:
        checkpoint = checkpoint_path(path)
        run_data = dict(data_cfg) if data_cfg is not None else run_data_config(checkpoint)
        key = json.dumps(run_data, sort_keys=True, default=str)
        if key not in cache:  # runs of one sweep share their test set: load it once
            cache = {key: evaluation_batches(run_data, split, max_images, device)}
        batches = cache[key]
        net, model_cfg = load_network(checkpoint)
        net = net.to(device)
        in_run = checkpoint.parent.name == "checkpoints"
        run = checkpoint.parent.parent.name if in_run else checkpoint.stem
        facts = {"run": run, "model": model_cfg["name"], "skip": family_of(model_cfg["name"]),
                 "checkpoint": str(checkpoint), "split": split,
                 "images": sum(len(b[1]) for b in batches),
                 "chance": 1.0 / int(model_cfg.get("num_classes") or 10)}
        single += [{**facts, **row} for row in lesion_network(net, batches, bf16)]
        if max_deleted > 0:
            rows = lesion_random(net, batches, max_deleted, draws, seed, bf16)
            randomised += [{**facts, **row} for row in rows]
    return single, randomised


def lesion_checkpoints(checkpoints: Sequence[Path], data_cfg: Any | None = None,
                       split: str = "test", max_images: int | None = None) -> list[dict[str, Any]]:
    """The single-block rows of :func:`lesion_runs` (each block deleted in turn)."""
    return lesion_runs(checkpoints, data_cfg, split, max_images)[0]


# ---------------------------------------------------------------- figure (from tidy rows)
# Runs of one model (its seeds) are pooled: each point is the mean over runs (and draws), the
# bar their std, so that a sweep with seeds gives one curve per model.


def _by_model(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {model: [r for r in rows if r["model"] == model]
            for model in dict.fromkeys(r["model"] for r in rows)}


def _label(model: str, rows: Sequence[dict[str, Any]]) -> str:
    runs = len({r["run"] for r in rows})
    return model if runs == 1 else f"{model} ({runs} runs)"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if any(math.isnan(v) for v in values):  # a block that cannot be deleted
        return math.nan, math.nan
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def _per_block(mine: Sequence[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    """Mean intact accuracy and, per deleted block in depth order, the mean ± std over runs."""
    intact = statistics.fmean(r["accuracy"] for r in mine if r["deleted"] == "intact")
    blocks = list(dict.fromkeys(r["unit_name"] for r in mine if r["deleted"] != "intact"))
    points = []
    for name in blocks:
        rows = [r for r in mine if r["unit_name"] == name]
        mean, std = _mean_std([r["accuracy"] for r in rows])
        points.append({"mean": mean, "std": std, "downsampling": rows[0]["downsampling"]})
    return intact, points


def lesion_finding(single_rows: Sequence[dict[str, Any]]) -> str:
    """Per model: the median accuracy with one non-downsampling block deleted, against intact."""
    parts = []
    for model, mine in _by_model(single_rows).items():
        intact, points = _per_block(mine)
        one = [p["mean"] for p in points if not p["downsampling"] and not math.isnan(p["mean"])]
        if one:
            parts.append(f"{model} {intact:.0%} -> median {statistics.median(one):.0%}")
    chance = single_rows[0]["chance"]
    return f"One block deleted: {', '.join(parts)} (chance {chance:.0%})"


def _draw_single(axis: Any, single_rows: Sequence[dict[str, Any]]) -> None:
    from zoo.figures import style_for

    for model, mine in _by_model(single_rows).items():
        style = style_for(model)
        intact, points = _per_block(mine)
        xs = list(range(1, len(points) + 1))
        axis.errorbar(xs, [p["mean"] for p in points], yerr=[p["std"] for p in points],
                      marker=".", label=f"{_label(model, mine)} (intact {intact:.2f})", **style)
        axis.axhline(intact, color=style["color"], linestyle=":", linewidth=1)
        down = [(x, p["mean"]) for x, p in zip(xs, points, strict=True)
                if p["downsampling"] and not math.isnan(p["mean"])]
        axis.plot([x for x, _ in down], [a for _, a in down], "o", fillstyle="none",
                  color=style["color"])
        refused = [x for x, p in zip(xs, points, strict=True) if math.isnan(p["mean"])]
        axis.plot(refused, [0.0] * len(refused), "x", color=style["color"])
    axis.set(xlabel="deleted block (1 = first after the stem; o: downsampling, x: not deletable)",
             ylabel=f"{single_rows[0]['split']} accuracy", ylim=(0, 1.02),
             title=lesion_finding(single_rows))


def _draw_random(axis: Any, random_rows: Sequence[dict[str, Any]]) -> None:
    from zoo.figures import style_for

    parts = []
    for model, mine in _by_model(random_rows).items():
        ks = sorted({r["k"] for r in mine})
        points = [_mean_std([r["accuracy"] for r in mine if r["k"] == k]) for k in ks]
        axis.errorbar(ks, [m for m, _ in points], yerr=[s for _, s in points], marker=".",
                      label=_label(model, mine), **style_for(model))
        parts.append(f"{model} {points[-1][0]:.0%} at k={ks[-1]}")
    counts = [(r["model"], r["k"]) for r in random_rows]
    most = max(counts.count(key) for key in set(counts))
    axis.set(xlabel="k: non-downsampling blocks deleted at random", ylim=(0, 1.02),
             ylabel=f"accuracy (mean ± std over up to {most} runs x draws)",
             title="k random blocks deleted: " + ", ".join(parts))


def plot_lesion(single_rows: Sequence[dict[str, Any]], out_dir: Path,
                random_rows: Sequence[dict[str, Any]] = ()) -> Path:
    """Accuracy with each block deleted (left) and with k random blocks deleted (right, when
    there are k-random rows); chance level drawn in both."""
    from zoo.figures import legend, plt, save

    panels = 2 if random_rows else 1
    figure, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 5.0), squeeze=False,
                                layout="constrained")
    _draw_single(axes[0, 0], single_rows)
    if random_rows:
        _draw_random(axes[0, 1], random_rows)
    for axis in axes[0]:
        axis.xaxis.get_major_locator().set_params(integer=True)  # blocks and k are counts
        axis.axhline(single_rows[0]["chance"], color="0.5", linestyle="-.", linewidth=1,
                     label="chance")
        legend(axis, fontsize=7)
    first = single_rows[0]
    figure.suptitle(f"Lesion (Veit et al. 2016): accuracy of trained nets with blocks deleted, "
                    f"{first['split']} split, {first['images']} images")
    return save(figure, out_dir / "lesion.png")
