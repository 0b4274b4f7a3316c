"""The command line of ``python -m zoo.bench`` (see :mod:`zoo.bench` for what each benchmark
does)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch

from zoo.bench.common import PRECISIONS, Reporter, environment
from zoo.bench.data import bench_data
from zoo.bench.loop import LOOP_VARIANTS, bench_loop
from zoo.bench.models import bench_models
from zoo.training.precision import choose_channels_last, choose_precision

BENCHMARKS = ("loop", "data", "models")
SIZES = ("small", "full")
RUNNERS = {"loop": bench_loop, "data": bench_data, "models": bench_models}


def input_shape(text: str) -> tuple[int, int, int]:
    """``1x28x28`` -> (1, 28, 28)."""
    try:
        channels, height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give CxHxW, e.g. 1x28x28") from None
    if min(channels, height, width) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every size must be at least 1")
    return channels, height, width


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m zoo.bench",
                                     description="Benchmarks of the zoo against its baselines.")
    add = parser.add_argument
    add("which", choices=[*BENCHMARKS, "all"])
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu | cuda | cuda:N (default: cuda when available)")
    add("--size", choices=SIZES, default=None,
        help="small (CI, CPU) or full (GPU); default full on cuda, small on cpu")
    add("--precision", nargs="+", choices=["auto", *PRECISIONS], default=["auto"],
        help="one or both, measured in the same run (both: bf16/fp32 ratios too); auto: what "
             "train.py's trainer.precision=auto picks on this machine")
    add("--channels-last", choices=["auto", "on", "off"], default="auto",
        help="NHWC activations; auto: what train.py's channels_last=auto picks")
    add("--repeats", type=int, default=5, help="timed repeats after warm-up (median)")
    add("--steps", type=int, default=None, help="loop: steps per fit; models: steps per repeat")
    add("--warmup-steps", type=int, default=None, help="untimed steps (loop: inside each fit)")
    add("--batch-size", type=int, default=None)
    add("--input", type=input_shape, default=None, help="loop: CxHxW of the images, e.g. 1x28x28")
    add("--model", default=None, help="loop: the network (default per size)")
    add("--variants", default=None, help=f"loop: comma list of {', '.join(LOOP_VARIANTS)}")
    add("--sync-debug", action="store_true",
        help="loop, CUDA: warn with a stack at every host sync inside the zoo's timed steps")
    add("--models", default=None, help="models: comma list of names (default per size)")
    add("--compile", action=argparse.BooleanOptionalAction, default=None,
        help="also torch.compile (default: on for cuda, off for cpu)")
    add("--workers", default=None, help="data: comma list of DataLoader worker counts")
    add("--images", type=int, default=None, help="data: images per epoch (default per size)")
    add("--no-train-step", action="store_true", help="data: skip the ResNet-20 step case")
    add("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    add("--out", default=None, help="append the JSON lines to this file")
    return parser


def resolve_numerics(args: argparse.Namespace, device: torch.device) -> None:
    """``args.precisions`` (auto resolved as train.py resolves it, duplicates dropped) and
    ``args.channels_last_of`` {precision: bool}."""
    image_size = args.input[-1] if args.input else 32  # the benchmarks' inputs: 32 px and up
    precisions = [choose_precision(p, device.type, image_size)[0] for p in args.precision]
    args.precisions = list(dict.fromkeys(precisions))
    requested = {"on": True, "off": False, "auto": "auto"}[args.channels_last]
    args.channels_last_of = {p: choose_channels_last(requested, device.type, p)
                             for p in args.precisions}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
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
    resolve_numerics(args, device)
    report = Reporter(environment(device, args.size), args.out)
    for benchmark in BENCHMARKS if args.which == "all" else (args.which,):
        RUNNERS[benchmark](args, device, report)
    report.print_table()
    return report.records
