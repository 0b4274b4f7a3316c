"""Skip-connection experiments that need no training loop: gradients at init, lesions, memory.

    python -m zoo.experiments gradient_at_init --out reports/gradient_at_init
    python -m zoo.experiments lesion RUN/checkpoints/last.ckpt [CKPT...] --out reports/lesion
    python -m zoo.experiments memory --out reports/memory [--batch-size 64]

* ``gradient_at_init`` -- without skips the gradient vanishes with depth (He et al. 2015,
  section 4.1; Glorot & Bengio 2010). One forward/backward pass of a freshly initialised net in
  training mode (BatchNorm on batch statistics, as in the first step of training) on a small
  batch of N(0, 1) images with random labels; the L2 gradient norm of every depth unit
  (``net.depth_units()``: stem, blocks / dense layers, head), averaged over seeds. The stem's
  norm ("first unit") is the number to watch: the stem has the same parameters at every depth.
* ``lesion`` -- a residual net can do without any one of its blocks (Veit, Wilber, Belongie
  2016, "Residual Networks Behave Like Ensembles of Relatively Shallow Networks", Figure 3).
  Each block of a trained checkpoint is deleted in turn (:func:`lesioned`) and the network is
  evaluated; the block is put back afterwards.
* ``memory`` -- peak training memory and step time of one SGD step at a fixed batch.
  ``peak_memory_mb`` is measured as ``python -m zoo.bench models`` measures it
  (:func:`zoo.bench.peak_step_memory`: ``torch.cuda.max_memory_allocated`` on CUDA, torch's
  dispatch-mode ``MemTracker`` on CPU): parameters + optimizer state + everything the step
  allocates. ``saved_for_backward_mb`` is the part of it that skips and checkpointing change:
  the bytes of the distinct storages kept from the forward pass for the backward pass -- what
  autograd saves (``torch.autograd.graph.saved_tensors_hooks``) plus the block inputs that
  activation checkpointing keeps.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo.bench import peak_step_memory
from zoo.callbacks import GradientNormMeter
from zoo.models.common import DepthUnit, SkipBlock

# ============================================================== gradient at initialisation

# (model name, family label, depth); CIFAR-style nets, 10 classes. Depth 1202 is the paper's.
GRADIENT_DEPTHS = (8, 20, 56, 110, 218, 1202)
OTHER_NETS = (
    ("preact_plain110", "pre-act plain", 110),
    ("preact_resnet110", "pre-act ResNet", 110),
    ("preact_resnet164", "pre-act ResNet", 164),
    ("densenet40_12", "DenseNet (concat)", 40),
    ("densenet_bc_100_12", "DenseNet (concat)", 100),
)
GRADIENT_COLUMNS = ["model", "family", "depth", "seed", "unit_index", "unit_name", "stage", "grad_norm"]
SUMMARY_COLUMNS = ["model", "family", "depth", "seeds", "first_unit_grad_norm", "first_unit_grad_norm_std",
                   "head_grad_norm", "first_over_head"]


# The CIFAR nets' ``norm`` option: without BatchNorm the textbook picture returns -- the plain
# net's gradient vanishes toward the input and the ResNet's activations (and gradients) grow by
# about 2x in variance per block (Zhang et al. 2019, "Fixup", section 2).
NORM_SUFFIX = {"batch": "", "none": " (no norm)"}


def gradient_nets(
    depths: Sequence[int], others: bool = True, norms: Sequence[str] = ("batch",)
) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(registry name, curve label, depth, ``zoo.create`` options) of the nets to measure.

    The pre-activation and DenseNet comparison nets (``others``) exist with BatchNorm only.
    """
    nets = []
    for norm in norms:
        options = {} if norm == "batch" else {"norm": norm}
        for depth in depths:
            nets.append((f"plain{depth}", "plain" + NORM_SUFFIX[norm], depth, options))
            nets.append((f"resnet{depth}", "ResNet" + NORM_SUFFIX[norm], depth, options))
    return nets + ([(*net, {}) for net in OTHER_NETS] if others else [])


def net_label(name: str, options: dict[str, Any]) -> str:
    return name + "".join(f" {key}={value}" for key, value in options.items())


def unit_gradient_norms(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Gradient norm of every depth unit after one cross-entropy backward pass (train mode)."""
    net.train()
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(images), labels).backward()
    norms = GradientNormMeter(net).measure()
    return [float(v) for v in norms.units.cpu()]


def gradient_at_init(
    nets: Sequence[tuple[str, str, int] | tuple[str, str, int, dict[str, Any]]],
    seeds: Sequence[int] = (0, 1, 2),
    batch_size: int = 8,
    image_size: int = 32,
    in_channels: int = 3,
    num_classes: int = 10,
) -> list[dict[str, Any]]:
    """Tidy rows (one per model, seed and depth unit) of gradient norms at initialisation.

    Each net is ``(registry name, curve label, depth)`` with optional ``zoo.create`` options as a
    fourth element; the ``model`` column names the options (``"plain110 norm=none"``).
    """
    rows: list[dict[str, Any]] = []
    for name, family, depth, *rest in nets:
        options = rest[0] if rest else {}
        for seed in seeds:
            torch.manual_seed(seed)  # the same seed gives the same weights and the same batch
            net = zoo.create(name, num_classes=num_classes, in_channels=in_channels, **options)
            images = torch.randn(batch_size, in_channels, image_size, image_size)
            labels = torch.randint(0, num_classes, (batch_size,))
            units = net.depth_units()
            for index, norm in enumerate(unit_gradient_norms(net, images, labels)):
                rows.append({"model": net_label(name, options), "family": family, "depth": depth, "seed": seed,
                             "unit_index": index, "unit_name": units[index].name,
                             "stage": units[index].stage, "grad_norm": norm})
            del net
    return rows


def summarise_gradients(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: mean (and std over seeds) of the first unit's norm, and the head's norm."""
    summary = []
    models = list(dict.fromkeys(row["model"] for row in rows))
    for model in models:
        mine = [row for row in rows if row["model"] == model]
        last = max(row["unit_index"] for row in mine)
        first = [row["grad_norm"] for row in mine if row["unit_index"] == 0]
        head = [row["grad_norm"] for row in mine if row["unit_index"] == last]
        first_mean, head_mean = statistics.fmean(first), statistics.fmean(head)
        summary.append({
            "model": model, "family": mine[0]["family"], "depth": mine[0]["depth"], "seeds": len(first),
            "first_unit_grad_norm": first_mean,
            # A plain net deep enough overflows float32 (inf); its spread is then undefined.
            "first_unit_grad_norm_std": (statistics.pstdev(first) if all(map(math.isfinite, first))
                                         else math.nan) if len(first) > 1 else 0.0,
            "head_grad_norm": head_mean,
            "first_over_head": first_mean / head_mean if head_mean > 0 else math.nan,
        })
    return summary


def plot_gradient_at_init(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise_gradients(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    figure, axis = plt.subplots(figsize=(8.4, 4.4))
    families = list(dict.fromkeys(row["family"] for row in summary))
    finite = [r["first_unit_grad_norm"] for r in summary if math.isfinite(r["first_unit_grad_norm"])]
    overflow_y = max(finite, default=1.0) * 1e3  # where a net that overflowed float32 is marked
    for family in families:
        mine = sorted((row for row in summary if row["family"] == family), key=lambda r: r["depth"])
        shown = [row for row in mine if math.isfinite(row["first_unit_grad_norm"])]
        xs = [row["depth"] for row in shown]
        ys = [max(row["first_unit_grad_norm"], 1e-45) for row in shown]
        marker = "o" if family.startswith("plain") else "s" if family.startswith("ResNet") else "^"
        (line,) = axis.plot(xs, ys, marker=marker, linestyle="-" if len(xs) > 1 else "none",
                            fillstyle="none" if family.endswith(NORM_SUFFIX["none"]) else "full",
                            label=family)
        overflowed = [row["depth"] for row in mine if not math.isfinite(row["first_unit_grad_norm"])]
        if overflowed:
            axis.plot(overflowed, [overflow_y] * len(overflowed), marker="x", markersize=9,
                      linestyle="none", color=line.get_color())
            for depth in overflowed:
                axis.annotate("overflow\n(inf/NaN)", (depth, overflow_y), textcoords="offset points",
                              xytext=(-8, -24), ha="right", fontsize=7, color=line.get_color())
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("depth (layers)")
    axis.set_ylabel("gradient norm of the first unit (stem)")
    axis.set_title("Gradient reaching the first layer at initialisation")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    figure.tight_layout()
    paths.append(out_dir / "gradient_at_init_first_unit.png")
    figure.savefig(paths[-1], dpi=120)
    plt.close(figure)

    # One panel per plain / ResNet curve label (with and without normalisation).
    panels = [f for f in families if f.startswith(("plain", "ResNet"))]
    columns = min(2, len(panels))
    grid_rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(grid_rows, columns, figsize=(5.5 * columns, 4.2 * grid_rows),
                                sharey=True, squeeze=False)
    for axis, family in zip(axes.flat, panels):
        for row in (r for r in summary if r["family"] == family):
            mine = [r for r in rows if r["model"] == row["model"]]
            count = max(r["unit_index"] for r in mine) + 1
            profile = [statistics.fmean(r["grad_norm"] for r in mine if r["unit_index"] == i)
                       for i in range(count)]
            xs = [i / (count - 1) for i in range(count)]
            axis.plot(xs, [max(v, 1e-45) for v in profile], label=row["model"])
        axis.set_yscale("log")
        axis.set_xlabel("relative depth of the unit (0 = stem, 1 = head)")
        axis.set_title(f"{family}: gradient norm per unit at init")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    for axis in axes[:, 0]:
        axis.set_ylabel("gradient norm (mean over seeds)")
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.tight_layout()
    paths.append(out_dir / "gradient_at_init_profile.png")
    figure.savefig(paths[-1], dpi=120)
    plt.close(figure)
    return paths


# ============================================================== lesion


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
def lesioned(net: nn.Module, unit_name: str) -> Iterator[nn.Module]:
    """Delete the depth unit ``unit_name`` of ``net`` for the duration of the ``with`` block.

    The unit's module is swapped in its parent for :func:`replacement_for`'s module and put
    back on exit (also on an exception): weights, buffers and outputs are as before.
    """
    units = {unit.name: unit for unit in net.depth_units()}
    if unit_name not in units:
        raise KeyError(f"{unit_name!r} is not a depth unit; units: {', '.join(units)}")
    replacement = replacement_for(units[unit_name])
    parent_name, _, child_name = unit_name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    original = parent._modules[child_name]
    parent._modules[child_name] = replacement
    try:
        yield replacement
    finally:
        parent._modules[child_name] = original


@torch.no_grad()
def accuracy(net: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    net.eval()
    correct = total = 0
    for images, labels in batches:
        correct += int((net(images).argmax(1) == labels).sum())
        total += int(labels.numel())
    return correct / max(1, total)


def run_config_of(checkpoint: Path) -> Path | None:
    """``RUN/.hydra/config.yaml`` for a checkpoint under ``RUN/checkpoints/``."""
    for folder in checkpoint.resolve().parents:
        candidate = folder / ".hydra" / "config.yaml"
        if candidate.exists():
            return candidate
    return None


def evaluation_batches(data_cfg: Any, split: str, max_images: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
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
        batches.append((images, labels))
        count += len(labels)
        if max_images is not None and count >= max_images:
            break
    return batches


def lesion_network(net: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[dict[str, Any]]:
    """Accuracy with each unit deleted in turn; ``unit_index`` -1 is the intact network."""
    rows = [{"unit_index": -1, "unit_name": "none", "stage": "", "deleted": "intact",
             "accuracy": accuracy(net, batches)}]
    for index, unit in enumerate(net.depth_units()):
        if unit.stage in ("stem", "head"):
            continue
        try:
            with lesioned(net, unit.name) as replacement:
                kind = "shortcut only" if isinstance(replacement, ShortcutOnly) else "bypassed"
                rows.append({"unit_index": index, "unit_name": unit.name, "stage": unit.stage,
                             "deleted": kind, "accuracy": accuracy(net, batches)})
        except LesionError:
            rows.append({"unit_index": index, "unit_name": unit.name, "stage": unit.stage,
                         "deleted": "cannot be deleted", "accuracy": math.nan})
    return rows


def load_network(checkpoint: Path) -> tuple[nn.Module, dict[str, Any]]:
    from zoo.module import ZooModule

    module = ZooModule.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=True)
    return module.net.eval(), dict(module.hparams["model"])


def lesion_checkpoints(
    checkpoints: Sequence[Path],
    data_cfg: Any | None = None,
    split: str = "test",
    max_images: int | None = 1000,
) -> list[dict[str, Any]]:
    from omegaconf import OmegaConf

    rows = []
    for checkpoint in checkpoints:
        checkpoint = Path(checkpoint)
        if data_cfg is None:
            config = run_config_of(checkpoint)
            if config is None:
                raise FileNotFoundError(f"{checkpoint}: no .hydra/config.yaml above it; pass --data-config")
            run_data = OmegaConf.to_container(OmegaConf.load(config).data, resolve=False)
            run_data["seed"] = 0  # the seed interpolation points outside the data group
        else:
            run_data = dict(data_cfg)
        net, model_cfg = load_network(checkpoint)
        batches = evaluation_batches(run_data, split, max_images)
        run = checkpoint.parent.parent.name if checkpoint.parent.name == "checkpoints" else checkpoint.stem
        for row in lesion_network(net, batches):
            rows.append({"run": run, "model": model_cfg["name"], "checkpoint": str(checkpoint),
                         "split": split, "images": sum(len(b[1]) for b in batches), **row})
    return rows


def plot_lesion(rows: Sequence[dict[str, Any]], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(7.5, 4.2))
    for run in dict.fromkeys(row["run"] for row in rows):
        mine = [row for row in rows if row["run"] == run]
        intact = next(row["accuracy"] for row in mine if row["unit_index"] == -1)
        deleted = [row for row in mine if row["unit_index"] >= 0]
        xs = list(range(1, len(deleted) + 1))
        line, = axis.plot(xs, [row["accuracy"] for row in deleted], marker=".",
                          label=f"{mine[0]['model']} (intact {intact:.3f})")
        axis.axhline(intact, color=line.get_color(), linestyle=":", linewidth=1)
        skipped = [x for x, row in zip(xs, deleted) if math.isnan(row["accuracy"])]
        if skipped:
            axis.plot(skipped, [0.0] * len(skipped), "x", color=line.get_color())
    axis.set_xlabel("deleted block (1 = first block after the stem)")
    axis.set_ylabel(f"{rows[0]['split']} accuracy")
    axis.set_ylim(0, 1)
    axis.set_title("Lesion: delete one block, evaluate (x: cannot be deleted)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = out_dir / "lesion.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# ============================================================== memory

MEMORY_MODELS = ("plain56", "resnet56", "densenet40_12", "densenet_bc_100_12")
MEMORY_COLUMNS = ["model", "skip", "memory_efficient", "device", "batch_size", "image_size", "parameters",
                  "peak_memory_mb", "saved_for_backward_mb", "step_time_ms"]


def saved_tensor_bytes(step: Any, net: nn.Module) -> int:
    """Bytes of distinct storages kept for backward while ``step()`` runs forward and backward.

    Counted: every tensor autograd saves (``saved_tensors_hooks``), plus the input of every depth
    unit, which activation checkpointing keeps alive outside autograd's saved tensors (inputs
    already saved are not counted twice: storages are counted once each). Not counted: the
    parameters and buffers that autograd also saves (a convolution keeps its weight), which
    exist whatever the mode -- so the figure is the activation memory alone.
    """
    storages: dict[int, int] = {}
    weights = {t.untyped_storage().data_ptr() for t in [*net.parameters(), *net.buffers()]}

    def remember(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        remember(tensor)
        return tensor

    def unit_input(module: nn.Module, args: tuple[Any, ...]) -> None:
        for arg in args:
            for tensor in arg if isinstance(arg, (list, tuple)) else (arg,):
                if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                    remember(tensor)

    handles = [unit.module.register_forward_pre_hook(unit_input) for unit in net.depth_units()]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            step()
    finally:
        for handle in handles:
            handle.remove()
    return sum(storages.values())


def measure_memory(
    name: str,
    memory_efficient: bool,
    batch_size: int = 64,
    image_size: int = 32,
    in_channels: int = 3,
    steps: int = 3,
    device: str = "cpu",
) -> dict[str, Any]:
    """Peak memory of one training step (forward, backward, SGD) and its median time."""
    torch.manual_seed(0)
    net = zoo.create(name, num_classes=10, in_channels=in_channels, memory_efficient=memory_efficient)
    net = net.to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch_size, in_channels, image_size, image_size, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    cuda = torch.device(device).type == "cuda"

    def forward() -> torch.Tensor:
        return F.cross_entropy(net(images), labels)

    def step() -> None:
        optimizer.zero_grad()  # gradients are freed and allocated again by backward, as in training
        forward().backward()
        optimizer.step()

    step()  # warm-up: momentum buffers exist from here on, as in training
    peak, _ = peak_step_memory(step, net, optimizer, torch.device(device))  # the benchmark's measure
    saved = saved_tensor_bytes(lambda: forward().backward(), net)
    optimizer.zero_grad()
    times = []
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return {
        "model": name, "skip": zoo.describe(name)["skip"], "memory_efficient": memory_efficient,
        "device": torch.device(device).type, "batch_size": batch_size, "image_size": image_size,
        "parameters": zoo.count_parameters(net), "peak_memory_mb": math.nan if peak is None else peak,
        "saved_for_backward_mb": saved / 2**20, "step_time_ms": 1000 * statistics.median(times),
    }


def plot_memory(rows: Sequence[dict[str, Any]], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [row["model"] + (" (mem-eff)" if row["memory_efficient"] else "") for row in rows]
    colours = {"none": "tab:gray", "add": "tab:blue", "concat": "tab:orange"}
    panels = [("saved_for_backward_mb", "activations kept for backward (MiB)"),
              ("step_time_ms", "step time (ms)")]
    if any(math.isfinite(float(row["peak_memory_mb"])) for row in rows):  # torch >= 2.5 on CPU
        panels.insert(0, ("peak_memory_mb", "peak training memory (MiB)"))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
    for axis, (key, title) in zip(axes, panels):
        axis.barh(labels, [row[key] for row in rows], color=[colours.get(row["skip"], "k") for row in rows])
        axis.set_title(title)
        axis.invert_yaxis()
        axis.grid(True, axis="x", alpha=0.3)
    row = rows[0]
    figure.suptitle(f"one training step, batch {row['batch_size']} x {row['image_size']}px, {row['device']} "
                    f"(grey: no skip, blue: add, orange: concat)")
    figure.tight_layout()
    path = out_dir / "memory.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# ============================================================== command line


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.experiments", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    grad = commands.add_parser("gradient_at_init", help="gradient norm per unit at initialisation")
    grad.add_argument("--out", type=Path, required=True)
    grad.add_argument("--depths", type=int, nargs="+", default=list(GRADIENT_DEPTHS),
                      help="6n+2 depths of plainN / resnetN")
    grad.add_argument("--no-others", action="store_true", help="only plainN / resnetN (no pre-act, DenseNet)")
    grad.add_argument("--seeds", type=int, default=3)
    grad.add_argument("--batch-size", type=int, default=8)
    grad.add_argument("--image-size", type=int, default=32)
    grad.add_argument("--norms", nargs="+", choices=tuple(NORM_SUFFIX), default=["batch"],
                      help="plainN / resnetN with BatchNorm (batch) and/or without (none)")

    lesion = commands.add_parser("lesion", help="delete each block of trained checkpoints in turn")
    lesion.add_argument("checkpoints", type=Path, nargs="+")
    lesion.add_argument("--out", type=Path, required=True)
    lesion.add_argument("--data-config", type=Path, default=None,
                        help="a data config YAML (e.g. configs/data/fashion_mnist.yaml); default: the run's")
    lesion.add_argument("--split", choices=("val", "test"), default="test")
    lesion.add_argument("--max-images", type=int, default=1000, help="evaluate on the first N images (0: all)")

    memory = commands.add_parser("memory", help="peak training memory and step time")
    memory.add_argument("--out", type=Path, required=True)
    memory.add_argument("--models", nargs="+", default=list(MEMORY_MODELS))
    memory.add_argument("--batch-size", type=int, default=64)
    memory.add_argument("--image-size", type=int, default=32)
    memory.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    memory.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")

    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.command == "gradient_at_init":
        nets = gradient_nets(args.depths, others=not args.no_others, norms=args.norms)
        rows = gradient_at_init(nets, seeds=range(args.seeds), batch_size=args.batch_size,
                                image_size=args.image_size)
        write_csv(args.out / "gradient_at_init.csv", rows, GRADIENT_COLUMNS)
        summary = summarise_gradients(rows)
        write_csv(args.out / "gradient_at_init_summary.csv", summary, SUMMARY_COLUMNS)
        plot_gradient_at_init(rows, args.out)
        print(markdown_table(summary, SUMMARY_COLUMNS))
    elif args.command == "lesion":
        data_cfg = None
        if args.data_config is not None:
            from omegaconf import OmegaConf

            data_cfg = OmegaConf.to_container(OmegaConf.load(args.data_config), resolve=False)
            data_cfg["seed"] = 0
        rows = lesion_checkpoints(args.checkpoints, data_cfg, args.split, args.max_images or None)
        columns = ["run", "model", "unit_index", "unit_name", "stage", "deleted", "accuracy", "split", "images"]
        write_csv(args.out / "lesion.csv", rows, columns)
        plot_lesion(rows, args.out)
        print(markdown_table(rows, columns[:7]))
    else:
        rows = []
        for name in args.models:
            for efficient in (False, True):
                rows.append(measure_memory(name, efficient, args.batch_size, args.image_size,
                                           steps=args.steps, device=args.device))
                print(markdown_table(rows[-1:], MEMORY_COLUMNS).splitlines()[-1], flush=True)
        write_csv(args.out / "memory.csv", rows, MEMORY_COLUMNS)
        plot_memory(rows, args.out)
        print(markdown_table(rows, MEMORY_COLUMNS))
    print(f"{args.command}: {time.perf_counter() - start:.0f} s; written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
