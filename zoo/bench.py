"""Benchmarks of the zoo against its baselines, each measured in the same process run (issue 7).

    python -m zoo.bench loop   [--device cpu|cuda] [--size small|full] [--repeats N] [--out FILE]
    python -m zoo.bench data   [...]
    python -m zoo.bench models [...] [--models resnet20,resnet50] [--compile | --no-compile]
    python -m zoo.bench all    [...]

* ``loop``: Lightning + :class:`zoo.module.ZooModule` (Lightning's default logger and progress
  bar) with and without the measurement callbacks, against a hand-written PyTorch loop with the
  same network, batch, precision and optimizer, on the same synthetic batches already on the
  device. Target: zoo >= 0.97x, gradient-flow callback at its default frequency >= 0.95x.
* ``data``: one epoch of the device-resident loader (:class:`zoo.data.DeviceLoader`) against the
  torchvision ``DataLoader`` + transforms pipeline at its best worker count, on synthetic uint8
  data of CIFAR shape and Fashion-MNIST shape; once only iterating, once with a ResNet-20
  training step per batch. Target: >= 5x on GPU, faster on CPU.
* ``models``: training img/s and peak memory of a network of every family at its native
  resolution, eager and compiled, memory-efficient off and on. Baseline: the same network,
  eager, memory-efficient off. Target: memory-efficient DenseNet <= 0.55x memory, <= 1.5x step time.

Every result is one JSON line on stdout (and appended to ``--out``) with absolute figures, the
baseline measured in the same run, ``ratio = zoo_img_per_s / baseline_img_per_s`` (above 1: the
zoo is faster), the device name, core count and torch version. Figures are medians over
``--repeats`` timed repeats taken after warm-up, zoo and baseline alternating so that drift in
machine load hits both alike; ``ratio_paired_median`` is the median of the per-repeat ratios.

Timing: CUDA work is asynchronous, so every timed window starts and ends with
``torch.cuda.synchronize()``; nothing synchronises inside a window. Peak memory: on CUDA,
``torch.cuda.max_memory_allocated`` over one step; on CPU, where tracemalloc does not see torch's
allocator, torch's ``MemTracker`` (``torch.distributed._tools.mem_tracker``, a dispatch-mode
tracker of every tensor storage) over one step. Both count parameters + optimizer state + what
the step allocates (gradients, activations, workspaces); see docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo.measure.memory import peak_step_memory

BENCHMARKS = ("loop", "data", "models")
SIZES = ("small", "full")

# Hand-written baseline and zoo share these (SGD as configs/train.yaml; no schedule, so that the
# comparison is the loop and nothing else).
OPTIM = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}

# Worker counts tried for the torchvision DataLoader; the fastest is the baseline.
WORKERS = {"cpu": (0, 1, 2), "cuda": (4, 8, 16)}

# Dataset shapes for the data benchmark: channels, side, crop padding, mean, std (configs/data).
DATA_SHAPES = {
    "cifar_shape": (3, 32, 4, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "fashion_mnist_shape": (1, 28, 2, (0.2860,), (0.3530,)),
}


@dataclass(frozen=True)
class LoopSize:
    model: str
    options: dict[str, Any]
    image_size: int
    batch_size: int
    steps: int  # per timed fit, warm-up steps included
    warmup_steps: int


LOOP_SIZES = {
    # The CIFAR-shape reference: ResNet-18 (3x3 stem) at 32 px, batch 512: 56,821 img/s (H200).
    "full": LoopSize("resnet18", {"stem": "cifar"}, 32, 512, 200, 30),
    "small": LoopSize("resnet20", {}, 32, 16, 12, 3),
}

# (images per epoch, batch size) for the data benchmark; the training-step variant uses fewer.
DATA_SIZES = {"full": (45_000, 512, 45_000), "small": (2_048, 128, 256)}

# Native resolution per family: CIFAR nets at 32 px, ImageNet nets at 224 px (64 px at small).
MODEL_SIZES = {
    "full": {
        "models": ["resnet20", "resnet56", "resnet110", "preact_resnet164", "densenet_bc_100_12",
                   "resnet18", "resnet50", "resnet152", "densenet121"],
        "cifar": (32, 256), "imagenet": (224, 256),  # (image side in px, batch size)
        "steps": 20, "warmup_steps": 5,
    },
    "small": {
        "models": ["resnet20", "preact_resnet110", "densenet40_12", "resnet18", "densenet121"],
        "cifar": (32, 8), "imagenet": (64, 4),
        "steps": 2, "warmup_steps": 1,
    },
}


# ------------------------------------------------------------------------------ environment


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, size: str) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{cpu_model()} ({cores} cores, {torch.get_num_threads()} torch threads)"
    import pytorch_lightning as pl

    return {
        "device": device.type, "device_name": name, "cpu_cores": cores,
        "torch": torch.__version__, "pytorch_lightning": pl.__version__, "size": size,
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (as Lightning's ``bf16-mixed``); full fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def comparison(zoo_rates: Sequence[float], baseline_rates: Sequence[float]) -> dict[str, Any]:
    """Medians of the zoo's and the baseline's img/s over the repeats, and their ratios."""
    zoo_rate, baseline_rate = median(zoo_rates), median(baseline_rates)
    return {
        "zoo_img_per_s": zoo_rate,
        "baseline_img_per_s": baseline_rate,
        "ratio": zoo_rate / baseline_rate,
        "ratio_paired_median": median(z / b for z, b in zip(zoo_rates, baseline_rates)),
        "repeats": len(zoo_rates),
    }


class Reporter:
    """Prints one JSON line per result and appends it to ``out`` (JSONL)."""

    def __init__(self, env: dict[str, Any], out: str | None) -> None:
        self.env, self.out = env, out
        self.records: list[dict[str, Any]] = []

    def emit(self, record: dict[str, Any]) -> dict[str, Any]:
        record = {**record, **self.env}
        line = json.dumps(record, sort_keys=False)
        print(line, flush=True)
        if self.out:
            Path(self.out).parent.mkdir(parents=True, exist_ok=True)
            with open(self.out, "a") as handle:
                handle.write(line + "\n")
        self.records.append(record)
        return record


def log(message: str) -> None:
    print(f"[zoo.bench] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ loop overhead


class SyntheticBatches:
    """``count`` batches of normalised float images and labels already on the device (a few
    distinct batches repeated: the loop, not the data, is measured). One object, not a list:
    Lightning reads a list as several dataloaders."""

    def __init__(self, count: int, batch_size: int, channels: int, side: int, num_classes: int,
                 device: torch.device, distinct: int = 4) -> None:
        g = torch.Generator().manual_seed(0)
        self.count = count
        self.made = [
            (torch.randn(batch_size, channels, side, side, generator=g).to(device),
             torch.randint(0, num_classes, (batch_size,), generator=g).to(device))
            for _ in range(min(distinct, count))
        ]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.made[i % len(self.made)]

    def __iter__(self):
        return (self.made[i % len(self.made)] for i in range(self.count))


def hand_written_loop(net: nn.Module, batches: SyntheticBatches,
                      device: torch.device, channels_last: bool, skip: int) -> float:
    """The 20-line PyTorch loop the zoo must keep up with; img/s over batches skip..n-1."""
    optimizer = torch.optim.SGD(net.parameters(), lr=OPTIM["lr"], momentum=OPTIM["momentum"],
                                nesterov=OPTIM["nesterov"], weight_decay=OPTIM["weight_decay"])
    net.train()
    last = len(batches) - 1
    start = 0.0
    for i, (x, y) in enumerate(batches):
        if i == skip:
            synchronize(device)
            start = time.perf_counter()
        if i == last:  # the window ends where the zoo's does: at the start of the last batch
            synchronize(device)
            break
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    elapsed = time.perf_counter() - start
    return (last - skip) * batches[0][0].shape[0] / elapsed


def _step_timer(device: torch.device, skip: int, last: int, sync_debug: bool = False):
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        """Times batches skip..last-1: from the start of batch ``skip`` to the start of ``last``,
        so every Lightning hook, logger and callback of those steps is inside the window.
        ``sync_debug`` (CUDA): warn, with a stack, at every host synchronisation in the window."""

        def __init__(self) -> None:
            self.start = self.end = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == skip:
                synchronize(device)
                self.start = time.perf_counter()
                if sync_debug and device.type == "cuda":
                    torch.cuda.set_sync_debug_mode("warn")
            elif batch_idx == last:
                if sync_debug and device.type == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
                synchronize(device)
                self.end = time.perf_counter()

    return StepTimer()


LOOP_VARIANTS = ("zoo", "zoo_gradient_flow", "zoo_default_callbacks")


def loop_callbacks(variant: str, root: str) -> list:
    """Extra callbacks of a loop variant: none; the gradient-flow callback at its default
    frequency (every 50 steps = trainer.log_every_n_steps); or every measurement callback of
    configs/callbacks/default.yaml (gradient flow, residual gain, explosion guard)."""
    from zoo.callbacks import GradientFlowCallback, build_measurement_callbacks

    if variant == "zoo":
        return []
    if variant == "zoo_gradient_flow":
        return [GradientFlowCallback(every_n_steps=50)]
    if variant == "zoo_default_callbacks":
        from omegaconf import OmegaConf

        default = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs/callbacks/default.yaml")
        default.gradient_flow.every_n_steps = 50  # ${trainer.log_every_n_steps} resolves here
        return build_measurement_callbacks(OmegaConf.to_container(default, resolve=True))
    raise ValueError(f"unknown loop variant {variant!r}; choose from {', '.join(LOOP_VARIANTS)}")


def lightning_fit(module, batches, device: torch.device, skip: int, callbacks: list, root: str,
                  sync_debug: bool = False) -> float:
    """One ``trainer.fit`` over ``batches`` with Lightning's defaults for logging (its default
    logger, every 50 steps) and progress bar; img/s over batches skip..n-1."""
    import pytorch_lightning as pl

    timer = _step_timer(device, skip, len(batches) - 1, sync_debug)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,  # a checkpoint at epoch end is no per-step cost
        enable_model_summary=False,
        benchmark=device.type == "cuda",
        default_root_dir=root,
        callbacks=[timer, *callbacks],
    )
    trainer.fit(module, train_dataloaders=batches)
    return (len(batches) - 1 - skip) * batches[0][0].shape[0] / (timer.end - timer.start)


def bench_loop(args: argparse.Namespace, device: torch.device, report: Reporter) -> list[dict]:
    from zoo.module import ZooModule

    size = LOOP_SIZES[args.size]
    model = args.model or size.model
    options = size.options if args.model is None else {}
    batch_size = args.batch_size or size.batch_size
    steps = args.steps or size.steps
    skip = min(size.warmup_steps, max(0, steps - 2)) if args.warmup_steps is None else args.warmup_steps
    if steps - 1 <= skip:
        raise ValueError(f"--steps {steps} leaves no timed step after {skip} warm-up steps")
    compile_net = args.compile if args.compile is not None else device.type == "cuda"
    channels_last = device.type == "cuda"
    variants = args.variants.split(",") if args.variants else list(LOOP_VARIANTS)
    in_channels, num_classes = 3, 10
    batches = SyntheticBatches(steps, batch_size, in_channels, size.image_size, num_classes, device)

    torch.backends.cudnn.benchmark = True  # Trainer(benchmark=True) sets the same for the zoo
    torch.manual_seed(0)
    baseline_net = zoo.create(model, num_classes=num_classes, in_channels=in_channels, **options)
    modules = {}
    for variant in variants:
        module = ZooModule(
            model={"name": model, "num_classes": num_classes, "in_channels": in_channels,
                   "compile": compile_net, **options},
            optim=dict(OPTIM), scheduler={"name": "none"}, channels_last=channels_last,
        )
        module.net.load_state_dict(baseline_net.state_dict())
        modules[variant] = module
    baseline_net = baseline_net.to(device)
    if channels_last:
        baseline_net = baseline_net.to(memory_format=torch.channels_last)
    baseline_forward = torch.compile(baseline_net) if compile_net else baseline_net

    rates: dict[str, list[float]] = {name: [] for name in ["baseline", *variants]}
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as root:
        def run(name: str) -> float:
            if name == "baseline":
                return hand_written_loop(baseline_forward, batches, device, channels_last, skip)
            return lightning_fit(modules[name], batches, device, skip, loop_callbacks(name, root),
                                 os.path.join(root, name), args.sync_debug)

        for name in rates:  # warm-up: compilation, cudnn autotuning, lazy initialisation
            run(name)
        for repeat in range(args.repeats):
            order = list(rates) if repeat % 2 == 0 else list(reversed(rates))
            for name in order:
                rates[name].append(run(name))
                log(f"loop {name} repeat {repeat}: {rates[name][-1]:.1f} img/s")

    results = []
    for variant in variants:
        results.append(report.emit({
            "benchmark": "loop", "case": variant, "model": model, **options,
            "image_size": size.image_size, "batch_size": batch_size, "timed_steps": steps - 1 - skip,
            "precision": "bf16-mixed" if device.type == "cuda" else "32-true",
            "channels_last": channels_last, "compile": compile_net,
            "zoo": f"Lightning + ZooModule ({variant})", "baseline": "hand-written PyTorch loop",
            **comparison(rates[variant], rates["baseline"]),
            "target": 0.95 if variant != "zoo" else 0.97,
        }))
    return results


# ------------------------------------------------------------------------------ data path


def synthetic_split(count: int, channels: int, side: int, num_classes: int = 10):
    from zoo.data import ImageArrays

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, channels, side, side), dtype=torch.uint8, generator=g)
    return ImageArrays(images, torch.randint(0, num_classes, (count,), generator=g))


class Consumer:
    """What happens to each batch: ``iterate`` touches every pixel on the device; ``resnet20``
    runs a ResNet-20 training step (the "CIFAR-shape ResNet-20 epoch" of the issue)."""

    def __init__(self, kind: str, channels: int, device: torch.device) -> None:
        self.kind, self.device = kind, device
        self.checksum = torch.zeros((), device=device)
        if kind == "resnet20":
            torch.manual_seed(0)
            self.net = zoo.create("resnet20", num_classes=10, in_channels=channels).to(device)
            if device.type == "cuda":
                self.net = self.net.to(memory_format=torch.channels_last)
            self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.kind == "iterate":
            self.checksum += x.sum() + y.sum()  # on the device: no host sync per batch
            return
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device):
            loss = F.cross_entropy(self.net(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def time_epoch(loader: Iterable, consume: Consumer, device: torch.device) -> tuple[float, int]:
    """Seconds for one epoch of ``loader`` consumed by ``consume``, and the images seen."""
    synchronize(device)
    start = time.perf_counter()
    images = 0
    for x, y in loader:
        consume(x, y)
        images += x.shape[0]
    synchronize(device)
    return time.perf_counter() - start, images


def bench_data(args: argparse.Namespace, device: torch.device, report: Reporter) -> list[dict]:
    from zoo.data import DeviceLoader, torch_loader

    count, batch_size, train_count = DATA_SIZES[args.size]
    if args.images:
        count = train_count = args.images
    batch_size = args.batch_size or batch_size
    workers = tuple(int(w) for w in args.workers.split(",")) if args.workers else WORKERS[device.type]
    cases = [(shape, "iterate") for shape in DATA_SHAPES] + [("cifar_shape", "resnet20")]
    if args.no_train_step:
        cases = cases[:-1]
    results = []
    for shape, kind in cases:
        channels, side, padding, mean, std = DATA_SHAPES[shape]
        n = count if kind == "iterate" else train_count
        if n < batch_size:
            raise ValueError(f"{n} images make no full batch of {batch_size}")
        split = synthetic_split(n, channels, side)
        common = {"batch_size": batch_size, "mean": mean, "std": std, "shuffle": True,
                  "drop_last": True, "crop_padding": padding, "flip": True, "seed": 0}
        loaders: dict[str, Iterable] = {"device": DeviceLoader(split, device=device, **common)}
        for w in workers:
            loaders[f"torch_w{w}"] = torch_loader(split, num_workers=w,
                                                  pin_memory=device.type == "cuda", **common)
        consume = Consumer(kind, channels, device)
        seconds: dict[str, list[float]] = {name: [] for name in loaders}
        images = {}
        for name, loader in loaders.items():  # warm-up: worker start-up, cudnn autotuning
            time_epoch(loader, consume, device)
        for repeat in range(args.repeats):
            order = list(loaders) if repeat % 2 == 0 else list(reversed(loaders))
            for name in order:
                elapsed, images[name] = time_epoch(loaders[name], consume, device)
                seconds[name].append(elapsed)
                log(f"data {shape}/{kind} {name} repeat {repeat}: {elapsed:.3f} s")
        per_worker = {name: median(s) for name, s in seconds.items() if name != "device"}
        best = min(per_worker, key=per_worker.get)
        zoo_rates = [images["device"] / s for s in seconds["device"]]
        baseline_rates = [images[best] / s for s in seconds[best]]
        del loaders  # ends the persistent workers
        results.append(report.emit({
            "benchmark": "data", "case": f"{shape}_{kind}", "images_per_epoch": images["device"],
            "batch_size": batch_size, "image_shape": [channels, side, side],
            "zoo": "DeviceLoader (device-resident uint8, batched crop/flip/normalise)",
            "baseline": f"torchvision DataLoader + transforms, best of workers {list(workers)}",
            "baseline_workers": int(best.removeprefix("torch_w")),
            "zoo_epoch_s": median(seconds["device"]), "baseline_epoch_s": per_worker[best],
            "baseline_epoch_s_per_workers": {k.removeprefix("torch_w"): v for k, v in per_worker.items()},
            **comparison(zoo_rates, baseline_rates),
            "target": 5.0 if device.type == "cuda" and kind == "resnet20" else 1.0,
        }))
    return results


# ------------------------------------------------------------------------------ models


def native_input(name: str, size: str) -> tuple[int, int, dict[str, Any]]:
    """(image side, batch size, create options) of a network at its native resolution."""
    sizes = MODEL_SIZES[size]
    facts = zoo.describe(name)
    imagenet = facts["default_num_classes"] == 1000 and not name.startswith(("densenet40", "densenet_bc"))
    side, batch = sizes["imagenet" if imagenet else "cifar"]
    options = {"stem": "imagenet"} if facts["family"] == "resnet" else {}
    return side, batch, options


class ModelRunner:
    """One network variant with its optimizer and one training step."""

    def __init__(self, name: str, options: dict[str, Any], memory_efficient: bool, compiled: bool,
                 device: torch.device, state: dict[str, torch.Tensor] | None) -> None:
        self.device = device
        self.net = zoo.create(name, in_channels=3, memory_efficient=memory_efficient, **options)
        if state is not None:
            self.net.load_state_dict(state)
        self.net = self.net.to(device)
        self.channels_last = device.type == "cuda"
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.net) if compiled else self.net
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device):
            loss = F.cross_entropy(self.forward(x), y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def rate(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step(x, y)
        synchronize(self.device)
        return steps * x.shape[0] / (time.perf_counter() - start)


def variant_name(variant: tuple[bool, bool]) -> str:
    compiled, memory_efficient = variant
    return ("compiled" if compiled else "eager") + ("_memory_efficient" if memory_efficient else "")


def bench_models(args: argparse.Namespace, device: torch.device, report: Reporter) -> list[dict]:
    sizes = MODEL_SIZES[args.size]
    names = args.models.split(",") if args.models else sizes["models"]
    compile_modes = [False, True] if (args.compile if args.compile is not None else device.type == "cuda") else [False]
    steps = args.steps or sizes["steps"]
    warmup = sizes["warmup_steps"] if args.warmup_steps is None else args.warmup_steps
    torch.backends.cudnn.benchmark = True
    results = []
    for name in names:
        side, batch_size, options = native_input(name, args.size)
        batch_size = args.batch_size or batch_size
        num_classes = zoo.describe(name)["default_num_classes"]  # 1000 for ImageNet nets
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, 3, side, side, generator=g).to(device)
        y = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
        torch.manual_seed(0)
        state = zoo.create(name, in_channels=3, **options).state_dict()
        variants = [(compiled, me) for compiled in compile_modes for me in (False, True)]
        runners: dict[tuple[bool, bool], ModelRunner] = {}
        memory: dict[tuple[bool, bool], tuple[float | None, str]] = {}
        for variant in variants:
            try:
                runner = ModelRunner(name, options, variant[1], variant[0], device, copy.deepcopy(state))
                for _ in range(max(1, warmup)):  # compilation, autotuning, optimizer state
                    runner.step(x, y)
                memory[variant] = peak_step_memory(lambda r=runner, x=x, y=y: r.step(x, y), runner.net,
                                                   runner.optimizer, device)
                runners[variant] = runner
            except Exception as error:  # e.g. a compile failure: report it, go on
                if variant == (False, False):
                    raise
                log(f"models {name} {variant}: failed: {error!r}")
                report.emit({"benchmark": "models", "case": f"{name}_{variant_name(variant)}",
                             "model": name, "compiled": variant[0], "memory_efficient": variant[1],
                             "error": repr(error)[:500]})
        variants = list(runners)
        rates: dict[tuple[bool, bool], list[float]] = {v: [] for v in variants}
        for repeat in range(args.repeats):
            order = variants if repeat % 2 == 0 else list(reversed(variants))
            for variant in order:
                rates[variant].append(runners[variant].rate(x, y, steps))
            log(f"models {name} repeat {repeat}: " + ", ".join(
                f"{'compiled' if c else 'eager'}/me={m}: {rates[(c, m)][-1]:.1f}" for c, m in order))
        baseline = (False, False)
        for variant in variants:
            compiled, me = variant
            peak, method = memory[variant]
            base_peak = memory[baseline][0]
            results.append(report.emit({
                "benchmark": "models", "case": f"{name}_{variant_name(variant)}",
                "model": name, "compiled": compiled, "memory_efficient": me, **options,
                "image_size": side, "batch_size": batch_size, "steps_per_repeat": steps,
                "precision": "bf16-mixed" if device.type == "cuda" else "32-true",
                "channels_last": device.type == "cuda",
                "zoo": "this variant", "baseline": "same network, eager, memory_efficient off",
                **comparison(rates[variant], rates[baseline]),
                "step_time_ratio": median(rates[baseline]) / median(rates[variant]),
                "peak_memory_mb": peak, "baseline_peak_memory_mb": base_peak,
                "memory_ratio": peak / base_peak if peak is not None and base_peak else None,
                "memory_method": method,
            }))
        del runners
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


# ------------------------------------------------------------------------------ command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m zoo.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=[*BENCHMARKS, "all"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu | cuda | cuda:N (default: cuda when available)")
    parser.add_argument("--size", choices=SIZES, default=None,
                        help="small (CI, CPU) or full (GPU); default full on cuda, small on cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats after warm-up (median)")
    parser.add_argument("--steps", type=int, default=None, help="loop: steps per fit; models: steps per repeat")
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed steps (loop: inside each fit)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--model", default=None, help="loop: the network (default per size)")
    parser.add_argument("--variants", default=None, help=f"loop: comma list of {', '.join(LOOP_VARIANTS)}")
    parser.add_argument("--sync-debug", action="store_true",
                        help="loop, CUDA: warn with a stack at every host sync inside the zoo's timed steps")
    parser.add_argument("--models", default=None, help="models: comma list of names (default per size)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also torch.compile (default: on for cuda, off for cpu)")
    parser.add_argument("--workers", default=None, help="data: comma list of DataLoader worker counts")
    parser.add_argument("--images", type=int, default=None, help="data: images per epoch (default per size)")
    parser.add_argument("--no-train-step", action="store_true", help="data: skip the ResNet-20 step case")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    if args.size is None:
        args.size = "full" if device.type == "cuda" else "small"
    if args.threads:
        torch.set_num_threads(args.threads)
    report = Reporter(environment(device, args.size), args.out)
    which = BENCHMARKS if args.which == "all" else (args.which,)
    runners = {"loop": bench_loop, "data": bench_data, "models": bench_models}
    for benchmark in which:
        runners[benchmark](args, device, report)
    return report.records


if __name__ == "__main__":
    main()
