"""What every benchmark shares: the machine's description, the one training step, synthetic
batches, timing helpers, quiet Lightning, and the reporter (JSON lines + a table at the end)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.training.precision import BF16_CPU_FLAGS, cpu_flags, cpu_model

PRECISIONS = ("32-true", "bf16-mixed")

# Hand-written baseline and zoo share these (SGD as configs/train.yaml; no schedule, so that the
# comparison is the loop and nothing else).
OPTIM = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}


def environment(device: torch.device, size: str) -> dict[str, Any]:
    """The facts every record carries: device, CPU model and bf16 flags, core count, versions."""
    import pytorch_lightning as pl

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{cpu_model()} ({cores} cores, {torch.get_num_threads()} torch threads)"
    flags = cpu_flags()
    return {
        "device": device.type, "device_name": name, "cpu_model": cpu_model(), "cpu_cores": cores,
        # bf16 matrix units: what makes bf16 autocast pay off on a CPU (zoo.training.precision)
        **{f"cpu_{flag}": flag in flags for flag in BF16_CPU_FLAGS},
        "torch": torch.__version__, "pytorch_lightning": pl.__version__, "size": size,
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """What Lightning's ``precision`` does around the forward pass: bf16 autocast (CPU: oneDNN's
    bf16 kernels) for ``bf16-mixed``, nothing for ``32-true``."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class TrainStep:
    """The hand-written training step every baseline runs: channels-last input if asked,
    forward under the precision's autocast, cross-entropy, zero_grad, backward, optimizer step."""

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 precision: str, channels_last: bool, forward: nn.Module | None = None) -> None:
        self.net, self.optimizer, self.device = net, optimizer, device
        self.precision, self.channels_last = precision, channels_last
        self.forward = forward if forward is not None else net  # e.g. torch.compile(net)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            loss = F.cross_entropy(self.forward(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def sgd(net: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(net.parameters(), lr=OPTIM["lr"], momentum=OPTIM["momentum"],
                           nesterov=OPTIM["nesterov"], weight_decay=OPTIM["weight_decay"])


class SyntheticBatches:
    """``count`` batches of normalised float images and labels already on the device (a few
    distinct batches repeated: the loop, not the data, is measured). One object, not a list:
    Lightning reads a list as several dataloaders."""

    def __init__(self, count: int, batch_size: int, shape: Sequence[int], num_classes: int,
                 device: torch.device, distinct: int = 4) -> None:
        g = torch.Generator().manual_seed(0)
        self.count = count
        self.made = [
            (torch.randn(batch_size, *shape, generator=g).to(device),
             torch.randint(0, num_classes, (batch_size,), generator=g).to(device))
            for _ in range(min(distinct, count))
        ]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.made[i % len(self.made)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return (self.made[i % len(self.made)] for i in range(self.count))


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """No "GPU available: ..." banners nor hints about workers or missing validation loaders
    while benchmarking: they would bury the results."""
    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning.pytorch",
                                                    "lightning.fabric", "lightning")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"(pytorch_)?lightning(\.|$)")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def comparison(zoo_rates: Sequence[float], baseline_rates: Sequence[float]) -> dict[str, Any]:
    """Medians of the zoo's and the baseline's img/s over the repeats, and their ratios."""
    zoo_rate, baseline_rate = median(zoo_rates), median(baseline_rates)
    return {
        "zoo_img_per_s": zoo_rate,
        "baseline_img_per_s": baseline_rate,
        "ratio": zoo_rate / baseline_rate,
        "ratio_paired_median": median(
            z / b for z, b in zip(zoo_rates, baseline_rates, strict=True)
        ),
        "repeats": len(zoo_rates),
    }


def log(message: str) -> None:
    print(f"[zoo.bench] {message}", file=sys.stderr, flush=True)


def verdict(ratio: float, target: float | None) -> str:
    """Every target of the benchmarks is a least ratio (zoo / baseline): met or missed."""
    if not target:
        return ""
    return "meets the target" if ratio >= target else "MISSES the target"


class Reporter:
    """Prints one JSON line per result and appends it to ``out`` (JSONL); :meth:`print_table`
    shows the same results for a person at the end."""

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

    def print_table(self) -> None:
        rows = [r for r in self.records if "ratio" in r]
        if not rows:
            return
        header = ["benchmark", "case", "precision", "zoo img/s", "baseline img/s", "ratio",
                  "target", "verdict", "zoo", "baseline"]
        cells = [[r["benchmark"], r["case"], str(r.get("precision", "")),
                  f"{r['zoo_img_per_s']:,.0f}", f"{r['baseline_img_per_s']:,.0f}",
                  f"{r['ratio']:.2f}x", f">= {r['target']:.2f}x" if r.get("target") else "",
                  verdict(r["ratio"], r.get("target")), r["zoo"], r["baseline"]] for r in rows]
        widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
        env = self.env
        flags = [flag for flag in BF16_CPU_FLAGS if env.get(f"cpu_{flag}")]
        print(f"\n{env['device_name']}; CPU bf16 flags: {', '.join(flags) or 'none'}; "
              f"torch {env['torch']}, pytorch-lightning {env['pytorch_lightning']}")
        for row in [header, ["-" * w for w in widths], *cells]:
            print("  ".join(cell.ljust(width)
                            for cell, width in zip(row, widths, strict=True)).rstrip())
