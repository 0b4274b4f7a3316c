"""``models``: training img/s and peak memory of a network of every family at its native
resolution, eager and compiled, memory-efficient off and on, at each precision asked for.
Baseline: the same network, eager, memory-efficient off, same precision; with two precisions,
also bf16 against fp32 (eager, memory-efficient off). Memory: :mod:`zoo.measure.memory`."""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch

import zoo
from zoo.bench.common import Reporter, TrainStep, comparison, log, median, synchronize
from zoo.measure.memory import peak_step_memory

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
BASELINE = (False, False)  # (compiled, memory_efficient)


def native_input(name: str, size: str) -> tuple[int, int, dict[str, Any]]:
    """(image side, batch size, create options) of a network at its native resolution."""
    sizes = MODEL_SIZES[size]
    facts = zoo.describe(name)
    imagenet = (facts["default_num_classes"] == 1000
                and not name.startswith(("densenet40", "densenet_bc")))
    side, batch = sizes["imagenet" if imagenet else "cifar"]
    options = {"stem": "imagenet"} if facts["family"] == "resnet" else {}
    return side, batch, options


def variant_name(variant: tuple[bool, bool]) -> str:
    compiled, memory_efficient = variant
    return ("compiled" if compiled else "eager") + ("_memory_efficient" if memory_efficient else "")


def make_step(name: str, options: dict[str, Any], variant: tuple[bool, bool], precision: str,
              channels_last: bool, device: torch.device,
              state: dict[str, torch.Tensor]) -> TrainStep:
    compiled, memory_efficient = variant
    net = zoo.create(name, in_channels=3, memory_efficient=memory_efficient, **options)
    net.load_state_dict(copy.deepcopy(state))
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    # lr 0.01: deep nets on random labels stay finite (NaN arithmetic runs at another speed)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    return TrainStep(net, optimizer, device, precision, channels_last,
                     torch.compile(net) if compiled else net)


def rate(step: TrainStep, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    synchronize(step.device)
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    synchronize(step.device)
    return steps * x.shape[0] / (time.perf_counter() - start)


def prepare(args: argparse.Namespace, name: str, options: dict[str, Any], precision: str,
            device: torch.device, state: dict, x: torch.Tensor, y: torch.Tensor,
            report: Reporter) -> tuple[dict[tuple[bool, bool], TrainStep], dict]:
    """The variants of one network at one precision, warmed up, with their peak step memory."""
    compiles = args.compile if args.compile is not None else device.type == "cuda"
    warmup = (MODEL_SIZES[args.size]["warmup_steps"] if args.warmup_steps is None
              else args.warmup_steps)
    steps: dict[tuple[bool, bool], TrainStep] = {}
    memory: dict[tuple[bool, bool], tuple[float | None, str]] = {}
    for variant in [(c, me) for c in ([False, True] if compiles else [False])
                    for me in (False, True)]:
        try:
            step = make_step(name, options, variant, precision, args.channels_last_of[precision],
                             device, state)
            for _ in range(max(1, warmup)):  # compilation, autotuning, optimizer state
                step(x, y)
            memory[variant] = peak_step_memory(lambda s=step: s(x, y), step.net, step.optimizer,
                                               device)
            steps[variant] = step
        except Exception as error:  # e.g. a compile failure: report it, go on
            if variant == BASELINE:
                raise
            log(f"models {name} {precision} {variant}: failed: {error!r}")
            report.emit({"benchmark": "models", "case": f"{name}_{variant_name(variant)}",
                         "model": name, "precision": precision, "compiled": variant[0],
                         "memory_efficient": variant[1], "error": repr(error)[:500]})
    return steps, memory


def bench_one_model(args: argparse.Namespace, name: str, device: torch.device,
                    report: Reporter) -> list[dict]:
    side, batch_size, options = native_input(name, args.size)
    batch_size = args.batch_size or batch_size
    steps_per_repeat = args.steps or MODEL_SIZES[args.size]["steps"]
    num_classes = zoo.describe(name)["default_num_classes"]  # 1000 for ImageNet nets
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, side, side, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    torch.manual_seed(0)
    state = zoo.create(name, in_channels=3, **options).state_dict()
    runners, memory = {}, {}
    for precision in args.precisions:
        prepared, peaks = prepare(args, name, options, precision, device, state, x, y, report)
        runners.update({(precision, *v): s for v, s in prepared.items()})
        memory.update({(precision, *v): m for v, m in peaks.items()})
    rates: dict[tuple, list[float]] = {key: [] for key in runners}
    for repeat in range(args.repeats):
        for key in list(runners) if repeat % 2 == 0 else list(reversed(runners)):
            rates[key].append(rate(runners[key], x, y, steps_per_repeat))
        log(f"models {name} repeat {repeat}: " + ", ".join(
            f"{p}/{variant_name((c, m))}: {rates[(p, c, m)][-1]:.1f}" for p, c, m in runners))
    common = {"benchmark": "models", "model": name, **options, "image_size": side,
              "batch_size": batch_size, "steps_per_repeat": steps_per_repeat}
    results = []
    for precision, compiled, me in runners:
        peak, method = memory[(precision, compiled, me)]
        base_rates, (base_peak, _) = rates[(precision, *BASELINE)], memory[(precision, *BASELINE)]
        results.append(report.emit({
            **common, "case": f"{name}_{variant_name((compiled, me))}", "compiled": compiled,
            "memory_efficient": me, "precision": precision,
            "channels_last": args.channels_last_of[precision],
            "zoo": "this variant", "baseline": "same network, eager, memory_efficient off",
            **comparison(rates[(precision, compiled, me)], base_rates),
            "step_time_ratio": median(base_rates) / median(rates[(precision, compiled, me)]),
            "peak_memory_mb": peak, "baseline_peak_memory_mb": base_peak,
            "memory_ratio": peak / base_peak if peak is not None and base_peak else None,
            "memory_method": method,
        }))
    if {"bf16-mixed", "32-true"} <= set(args.precisions):
        results.append(report.emit({
            **common, "case": f"{name}_bf16_over_fp32", "compiled": False,
            "memory_efficient": False, "precision": "bf16-mixed / 32-true",
            "zoo": "eager, bf16-mixed", "baseline": "eager, 32-true",
            **comparison(rates[("bf16-mixed", *BASELINE)], rates[("32-true", *BASELINE)]),
        }))
    return results


def bench_models(args: argparse.Namespace, device: torch.device, report: Reporter) -> list[dict]:
    names = args.models.split(",") if args.models else MODEL_SIZES[args.size]["models"]
    torch.backends.cudnn.benchmark = True
    results = []
    for name in names:
        results += bench_one_model(args, name, device, report)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results
