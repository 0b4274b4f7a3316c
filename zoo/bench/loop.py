"""``loop``: Lightning + ZooModule against a hand-written PyTorch loop, same work, same run.

Every contestant (the hand-written loop and each zoo variant, at every precision asked for)
runs the same network from the same initial weights on the same synthetic batches already on
the device; after one warm-up fit each, the repeats alternate their order so that drift in
machine load hits all alike. Records: each zoo variant against the hand loop at the same
precision, and with two precisions, bf16 against fp32 for the hand loop and for the zoo.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import zoo
from zoo.bench.common import (
    OPTIM,
    Reporter,
    SyntheticBatches,
    TrainStep,
    comparison,
    log,
    quiet_lightning,
    sgd,
    synchronize,
)
from zoo.config.schemas import load_group_file


@dataclass(frozen=True)
class LoopSize:
    model: str
    options: dict[str, Any]
    input_shape: tuple[int, int, int]  # channels, height, width
    batch_size: int
    steps: int  # per timed fit, warm-up steps included
    warmup_steps: int


LOOP_SIZES = {
    # The CIFAR-shape reference: ResNet-18 (3x3 stem) at 32 px, batch 512:
    # 56,821 img/s (H200).
    "full": LoopSize("resnet18", {"stem": "cifar"}, (3, 32, 32), 512, 200, 30),
    "small": LoopSize("resnet20", {}, (3, 32, 32), 16, 12, 3),
}
LOOP_VARIANTS = ("zoo", "zoo_gradient_flow", "zoo_default_callbacks")
HAND = "hand_loop"
TARGETS = {"zoo": 0.97, "zoo_gradient_flow": 0.95, "zoo_default_callbacks": 0.95}
PRECISIONS_COMPARED = ("bf16-mixed", "32-true")  # numerator, denominator of the speed-up
BF16_OVER_FP32_TARGET = 1.6  # issue 13: resnet20, batch 128, CPU with bf16 matrix units


def hand_written_loop(step: TrainStep, batches: SyntheticBatches, skip: int) -> float:
    """The loop the zoo must keep up with; img/s over batches skip..n-1."""
    step.net.train()
    last = len(batches) - 1
    start = 0.0
    for i, (x, y) in enumerate(batches):
        if i == skip:
            synchronize(step.device)
            start = time.perf_counter()
        if i == last:  # the window ends where the zoo's does: at the start of the last batch
            synchronize(step.device)
            break
        step(x, y)
    return (last - skip) * batches[0][0].shape[0] / (time.perf_counter() - start)


def step_timer(device: torch.device, skip: int, last: int, sync_debug: bool = False):
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        """Times batches skip..last-1: from the start of batch ``skip`` to the start of ``last``,
        so every Lightning hook, logger and callback of those steps is inside the window.
        ``sync_debug`` (CUDA): warn, with a stack, at every host synchronisation in the window."""

        def __init__(self) -> None:
            self.start = self.end = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            debug = sync_debug and device.type == "cuda"
            if batch_idx == skip:
                synchronize(device)
                self.start = time.perf_counter()
                if debug:
                    torch.cuda.set_sync_debug_mode("warn")
            elif batch_idx == last:
                if debug:
                    torch.cuda.set_sync_debug_mode("default")
                synchronize(device)
                self.end = time.perf_counter()

    return StepTimer()


def loop_callbacks(variant: str) -> list:
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

        default = load_group_file(
            Path(__file__).resolve().parents[2] / "configs/callbacks/default.yaml"
        )
        default.gradient_flow.every_n_steps = 50  # ${trainer.log_every_n_steps} resolves here
        return build_measurement_callbacks(OmegaConf.to_container(default, resolve=True))
    raise ValueError(f"unknown loop variant {variant!r}; choose from {', '.join(LOOP_VARIANTS)}")


def lightning_fit(module, batches: SyntheticBatches, device: torch.device, precision: str,
                  skip: int, variant: str, root: str, sync_debug: bool = False) -> float:
    """One ``trainer.fit`` over ``batches`` with Lightning's defaults for logging (its default
    logger, every 50 steps) and progress bar; img/s over batches skip..n-1."""
    import pytorch_lightning as pl

    timer = step_timer(device, skip, len(batches) - 1, sync_debug)
    with quiet_lightning():
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=[device.index or 0] if device.type == "cuda" else 1,
            precision=precision, max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0,
            enable_checkpointing=False,  # a checkpoint at epoch end is no per-step cost
            enable_model_summary=False, benchmark=device.type == "cuda",
            default_root_dir=root, callbacks=[timer, *loop_callbacks(variant)],
        )
        trainer.fit(module, train_dataloaders=batches)
    return (len(batches) - 1 - skip) * batches[0][0].shape[0] / (timer.end - timer.start)


@dataclass
class LoopSetup:
    model: str
    options: dict[str, Any]
    shape: tuple[int, int, int]
    batch_size: int
    steps: int
    skip: int
    compile: bool


def loop_setup(args: argparse.Namespace, device: torch.device) -> LoopSetup:
    size = LOOP_SIZES[args.size]
    steps = args.steps or size.steps
    skip = (min(size.warmup_steps, max(0, steps - 2)) if args.warmup_steps is None
            else args.warmup_steps)
    if steps - 1 <= skip:
        raise ValueError(f"--steps {steps} leaves no timed step after {skip} warm-up steps")
    return LoopSetup(
        model=args.model or size.model, options=size.options if args.model is None else {},
        shape=args.input or size.input_shape, batch_size=args.batch_size or size.batch_size,
        steps=steps, skip=skip,
        compile=args.compile if args.compile is not None else device.type == "cuda",
    )


def contestants(setup: LoopSetup, variants: list[str], precisions: list[str],
                channels_last: dict[str, bool], device: torch.device) -> dict[tuple[str, str], Any]:
    """{(precision, name): the hand loop's TrainStep or a ZooModule}, all from one initial net."""
    from zoo.training.module import ZooModule

    torch.manual_seed(0)
    initial = zoo.create(setup.model, num_classes=10, in_channels=setup.shape[0], **setup.options)
    made: dict[tuple[str, str], Any] = {}
    for precision in precisions:
        net: nn.Module = zoo.create(setup.model, num_classes=10, in_channels=setup.shape[0],
                                    **setup.options)
        net.load_state_dict(initial.state_dict())
        net = net.to(device)
        if channels_last[precision]:
            net = net.to(memory_format=torch.channels_last)
        forward = torch.compile(net) if setup.compile else net
        made[(precision, HAND)] = TrainStep(net, sgd(net), device, precision,
                                            channels_last[precision], forward)
        for variant in variants:
            module = ZooModule(
                model={"name": setup.model, "num_classes": 10, "in_channels": setup.shape[0],
                       "compile": setup.compile, **setup.options},
                optim=dict(OPTIM), scheduler={"name": "none"},
                channels_last=channels_last[precision],
            )
            module.net.load_state_dict(initial.state_dict())
            made[(precision, variant)] = module
    return made


def bench_loop(args: argparse.Namespace, device: torch.device, report: Reporter) -> list[dict]:
    setup = loop_setup(args, device)
    variants = args.variants.split(",") if args.variants else list(LOOP_VARIANTS)
    unknown = [v for v in variants if v not in LOOP_VARIANTS]
    if unknown:
        raise ValueError(f"unknown loop variant {unknown[0]!r}; "
                         f"choose from {', '.join(LOOP_VARIANTS)}")
    precisions, channels_last = args.precisions, args.channels_last_of
    batches = SyntheticBatches(setup.steps, setup.batch_size, setup.shape, 10, device)
    torch.backends.cudnn.benchmark = True  # Trainer(benchmark=True) sets the same for the zoo
    runners = contestants(setup, variants, precisions, channels_last, device)
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as root:
        def run(key: tuple[str, str]) -> float:
            precision, name = key
            if name == HAND:
                return hand_written_loop(runners[key], batches, setup.skip)
            return lightning_fit(runners[key], batches, device, precision, setup.skip, name,
                                 os.path.join(root, f"{name}-{precision}"), args.sync_debug)

        for key in rates:  # warm-up: compilation, cudnn autotuning, lazy initialisation
            run(key)
        for repeat in range(args.repeats):
            order = list(rates) if repeat % 2 == 0 else list(reversed(rates))
            for key in order:
                rates[key].append(run(key))
                log(f"loop {key[1]} {key[0]} repeat {repeat}: {rates[key][-1]:.1f} img/s")
    return emit_loop_records(report, setup, variants, precisions, channels_last, rates)


def emit_loop_records(report: Reporter, setup: LoopSetup, variants: list[str],
                      precisions: list[str], channels_last: dict[str, bool],
                      rates: dict[tuple[str, str], list[float]]) -> list[dict]:
    common = {"benchmark": "loop", "model": setup.model, **setup.options,
              "input_shape": list(setup.shape), "image_size": setup.shape[-1],
              "batch_size": setup.batch_size, "timed_steps": setup.steps - 1 - setup.skip,
              "compile": setup.compile}
    results = []
    for precision in precisions:
        for variant in variants:
            results.append(report.emit({
                **common, "case": variant, "precision": precision,
                "channels_last": channels_last[precision],
                "zoo": f"Lightning + ZooModule ({variant})",
                "baseline": "hand-written PyTorch loop, same precision",
                **comparison(rates[(precision, variant)], rates[(precision, HAND)]),
                "target": TARGETS[variant],
            }))
    bf16_cpu = report.env["device"] == "cpu" and any(
        value for key, value in report.env.items() if key.endswith("_bf16"))
    if set(PRECISIONS_COMPARED) <= set(precisions):
        low, high = PRECISIONS_COMPARED
        for name in [HAND, *variants]:
            results.append(report.emit({
                **common, "case": f"{name}_bf16_over_fp32", "precision": f"{low} / {high}",
                "channels_last": [channels_last[low], channels_last[high]],
                "zoo": f"{name}, {low}", "baseline": f"{name}, {high}",
                **comparison(rates[(low, name)], rates[(high, name)]),
                "target": BF16_OVER_FP32_TARGET if name == HAND and bf16_cpu else None,
            }))
    return results

