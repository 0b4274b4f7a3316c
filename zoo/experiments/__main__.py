"""``python -m zoo.experiments NAME ...``: run an experiment, or redraw its figures from its files.

    python -m zoo.experiments gradient_at_init --out DIR [--depths 8 20 ...] [--seeds 3]
    python -m zoo.experiments lesion RUN_OR_CKPT [...] --out DIR [--max-deleted 10 --draws 10]
    python -m zoo.experiments memory --out DIR [--batch-size 64] [--dense-depths 40 64 100 136]
    python -m zoo.experiments vit_gradients --out DIR [--depths 2 4 8 16 32 64] [--seeds 3]
    python -m zoo.experiments vit_rank --out DIR [--depth 64] [--seeds 3]
    python -m zoo.experiments vit_rank_trained RUN_OR_CKPT [...] --out DIR [--max-images 256]
    python -m zoo.experiments redraw DIR [DIR ...]

Each experiment writes its tidy CSV files, its figures and ``meta.json`` (command, machine,
torch, wall seconds, git commit) under ``--out``; ``redraw`` draws the figures again from the
CSV files alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from zoo.config.schemas import load_group_file
from zoo.experiments import gradients, lesion, lesion_figures, lesion_sources, memory, vit_init
from zoo.experiments.tidy import markdown_table, read_csv, read_meta, write_csv, write_meta

GRADIENT_FILES = ("gradient_at_init.csv", "gradient_at_init_summary.csv")
SHOW_DEFAULTS = argparse.ArgumentDefaultsHelpFormatter  # --help says what an option is unset
LESION_FILES = ("lesion_single.csv", "lesion_random.csv")
MEMORY_FILE = memory.MEMORY_FILE
VIT_GRADIENT_FILES = ("vit_gradients.csv", "vit_gradients_summary.csv")
VIT_RANK_FILE = "vit_rank.csv"
VIT_TRAINED_RANK_FILE = "vit_rank_trained.csv"
DEFAULT_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m zoo.experiments",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    grad = commands.add_parser("gradient_at_init", formatter_class=SHOW_DEFAULTS,
                               help="gradient norm per unit at initialisation")
    grad.add_argument("--out", type=Path, required=True)
    grad.add_argument("--depths", type=int, nargs="+", default=list(gradients.GRADIENT_DEPTHS),
                      help="6n+2 depths of plainN / resnetN")
    grad.add_argument("--no-others", action="store_true",
                      help="only plainN / resnetN (no pre-act, DenseNet)")
    grad.add_argument("--seeds", type=int, default=3)
    grad.add_argument("--batch-size", type=int, default=8)
    grad.add_argument("--image-size", type=int, default=32)
    grad.add_argument("--norms", nargs="+", choices=tuple(gradients.NORM_SUFFIX),
                      default=["batch", "none"],
                      help="plainN / resnetN with BatchNorm (batch) and/or without (none)")

    add_lesion_parser(commands)

    mem = commands.add_parser("memory", formatter_class=SHOW_DEFAULTS,
                              help="training and inference peak memory")
    mem.add_argument("--out", type=Path, required=True)
    mem.add_argument("--models", nargs="+", default=list(memory.MEMORY_MODELS))
    mem.add_argument("--dense-depths", type=int, nargs="*", default=list(memory.DENSE_DEPTHS),
                     help="DenseNet-BC-{depth}-12 depths (6n+4) for memory against depth")
    mem.add_argument("--batch-size", type=int, default=64)
    mem.add_argument("--image-size", type=int, default=32)
    mem.add_argument("--in-channels", type=int, default=3, help="1 for Fashion-MNIST's images")
    mem.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    mem.add_argument("--device", default=DEFAULT_DEVICE)

    add_vit_parsers(commands)

    redraw = commands.add_parser("redraw", formatter_class=SHOW_DEFAULTS,
                                 help="draw the figures again from an --out folder's files")
    redraw.add_argument("folders", type=Path, nargs="+")
    return parser


def add_lesion_parser(commands: Any) -> None:
    les = commands.add_parser("lesion", formatter_class=SHOW_DEFAULTS,
                              help="delete blocks of trained nets: one at a time, k at random")
    les.add_argument("checkpoints", nargs="+",
                     help="run directories, .ckpt files, or shipped weights as NAME:DATASET "
                          "(resnet56:fashion_mnist; python -m zoo.models --weights)")
    les.add_argument("--out", type=Path, required=True)
    les.add_argument("--data-config", type=Path, default=None,
                     help="data config YAML (configs/data/fashion_mnist.yaml); default: the run's")
    les.add_argument("--split", choices=("val", "test"), default="test")
    les.add_argument("--max-images", type=int, default=0,
                     help="evaluate on the first N images (0: all)")
    les.add_argument("--max-deleted", type=int, default=10,
                     help="largest k of the k-random curve (0: none)")
    les.add_argument("--draws", type=int, default=10, help="random sets of blocks per k")
    les.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    les.add_argument("--random-max-images", type=int, default=0,
                     help="evaluate the k-random draws on the first N images (0: as --max-images)")
    les.add_argument("--calibration-images", type=int, default=0,
                     help="also evaluate every deletion with BatchNorm statistics re-estimated "
                          "on N training images (0: no control)")
    les.add_argument("--gain-images", type=int, default=512,
                     help="measure each block's residual gain on N evaluation images (0: none)")
    les.add_argument("--append", action="store_true",
                     help="add these nets' rows to the CSV files already in --out")
    les.add_argument("--bf16", action="store_true",
                     help="evaluate under bf16 autocast (faster on CPUs)")
    les.add_argument("--device", default=DEFAULT_DEVICE)


def add_vit_parsers(commands: Any) -> None:
    """The Transformer experiments' commands (docs/RESULTS.md, section 8)."""
    vit = commands.add_parser("vit_gradients", formatter_class=SHOW_DEFAULTS,
                              help="ViT gradient norm per block at init")
    vit.add_argument("--out", type=Path, required=True)
    vit.add_argument("--depths", type=int, nargs="+", default=list(vit_init.VIT_DEPTHS),
                     help="Transformer blocks")
    vit.add_argument("--norms", nargs="+", choices=vit_init.VIT_NORMS,
                     default=list(vit_init.VIT_NORMS))
    vit.add_argument("--seeds", type=int, default=3)
    vit.add_argument("--batch-size", type=int, default=8)
    vit.add_argument("--inits", nargs="+", choices=vit_init.INITS, default=list(vit_init.INITS),
                     help="timm: std 0.02 (as built); xavier: the original Transformer's")

    rank = commands.add_parser("vit_rank", formatter_class=SHOW_DEFAULTS,
                               help="ViT tokens' distance from rank one at init")
    rank.add_argument("--out", type=Path, required=True)
    rank.add_argument("--depth", type=int, default=vit_init.RANK_DEPTH, help="Transformer blocks")
    rank.add_argument("--norms", nargs="+", choices=vit_init.VIT_NORMS,
                      default=list(vit_init.VIT_NORMS))
    rank.add_argument("--seeds", type=int, default=3)
    rank.add_argument("--batch-size", type=int, default=8)
    rank.add_argument("--inits", nargs="+", choices=vit_init.INITS, default=list(vit_init.INITS),
                      help="timm: std 0.02 (as built); xavier: the original Transformer's")

    trained = commands.add_parser("vit_rank_trained", formatter_class=SHOW_DEFAULTS,
                                  help="trained ViTs' tokens: distance from rank one per block")
    trained.add_argument("checkpoints", type=Path, nargs="+", help="run directories or .ckpt files")
    trained.add_argument("--out", type=Path, required=True)
    trained.add_argument("--max-images", type=int, default=256, help="first N test images")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse values that would fail late, in one line that says what to pass instead."""
    positive = {"seeds": "--seeds", "batch_size": "--batch-size", "image_size": "--image-size",
                "steps": "--steps", "draws": "--draws", "depth": "--depth"}
    for key, flag in positive.items():
        if getattr(args, key, 1) < 1:
            raise ValueError(f"{flag} must be at least 1")
    for key, flag in (("max_images", "--max-images"), ("max_deleted", "--max-deleted"),
                      ("random_max_images", "--random-max-images"),
                      ("calibration_images", "--calibration-images"),
                      ("gain_images", "--gain-images")):
        if getattr(args, key, 0) < 0:
            raise ValueError(f"{flag} must be 0 or more")


def run_gradients(args: argparse.Namespace) -> list[str]:
    nets = gradients.gradient_nets(args.depths, others=not args.no_others, norms=args.norms)
    rows = gradients.gradient_at_init(nets, seeds=range(args.seeds), batch_size=args.batch_size,
                                      image_size=args.image_size)
    summary = gradients.summarise_gradients(rows)
    write_csv(args.out / GRADIENT_FILES[0], rows, gradients.GRADIENT_COLUMNS)
    write_csv(args.out / GRADIENT_FILES[1], summary, gradients.SUMMARY_COLUMNS)
    redraw_gradients(args.out)
    print(markdown_table(summary, gradients.SUMMARY_COLUMNS))
    return list(GRADIENT_FILES)


def run_lesion(args: argparse.Namespace) -> list[str]:
    data_cfg = None
    if args.data_config is not None:
        from omegaconf import OmegaConf

        if not args.data_config.is_file():
            raise FileNotFoundError(f"--data-config {args.data_config} does not exist")
        data_cfg = OmegaConf.to_container(load_group_file(args.data_config), resolve=False)
        data_cfg["seed"] = 0  # the seed interpolation points outside the data group
    single, randomised = lesion_sources.lesion_runs(
        args.checkpoints, data_cfg, args.split, args.max_images or None, args.max_deleted,
        args.draws, args.seed, args.bf16, args.device,
        random_max_images=args.random_max_images or None,
        calibration_images=args.calibration_images, gain_images=args.gain_images)
    if args.append:  # nets measured one command at a time (as each run finishes) into one table
        single = _earlier_rows(args.out / LESION_FILES[0]) + single
        randomised = _earlier_rows(args.out / LESION_FILES[1]) + randomised
    write_csv(args.out / LESION_FILES[0], single, lesion.SINGLE_COLUMNS)
    files = [LESION_FILES[0]]
    if randomised:
        write_csv(args.out / LESION_FILES[1], randomised, lesion.RANDOM_COLUMNS)
        files.append(LESION_FILES[1])
    redraw_lesion(args.out)
    print(markdown_table(single, ["run", "unit_name", "downsampling", "deleted", "residual_gain",
                                  "accuracy", "accuracy_bn_reestimated"]))
    return files


def _earlier_rows(path: Path) -> list[dict[str, Any]]:
    return read_csv(path) if path.is_file() else []


def run_memory(args: argparse.Namespace) -> list[str]:
    def report(row: dict[str, Any]) -> None:
        print(markdown_table([row], memory.MEMORY_COLUMNS).splitlines()[-1], flush=True)

    rows = memory.memory_rows(args.models, args.dense_depths, report, batch_size=args.batch_size,
                              image_size=args.image_size, in_channels=args.in_channels,
                              steps=args.steps, device=args.device)
    write_csv(args.out / MEMORY_FILE, rows, memory.MEMORY_COLUMNS)
    redraw_memory(args.out)
    print(markdown_table(rows, memory.MEMORY_COLUMNS))
    return [MEMORY_FILE]


def run_vit_gradients(args: argparse.Namespace) -> list[str]:
    if min(args.depths) < 1:
        raise ValueError("--depths must be at least 1 (Transformer blocks)")
    rows = vit_init.vit_gradients(args.depths, args.norms, range(args.seeds), args.batch_size,
                                  args.inits)
    summary = vit_init.summarise_vit_gradients(rows)
    write_csv(args.out / VIT_GRADIENT_FILES[0], rows, vit_init.GRADIENT_COLUMNS)
    write_csv(args.out / VIT_GRADIENT_FILES[1], summary, vit_init.BLOCK_COLUMNS)
    redraw_vit_gradients(args.out)
    print(markdown_table(summary, vit_init.BLOCK_COLUMNS))
    return list(VIT_GRADIENT_FILES)


def run_vit_rank(args: argparse.Namespace) -> list[str]:
    rows = vit_init.vit_rank(args.depth, args.norms, range(args.seeds), args.batch_size,
                             inits=args.inits)
    write_csv(args.out / VIT_RANK_FILE, rows, vit_init.RANK_COLUMNS)
    redraw_vit_rank(args.out)
    last = [r for r in rows if r["layer"] == args.depth]
    print(markdown_table(last, vit_init.RANK_COLUMNS))
    return [VIT_RANK_FILE]


def run_vit_rank_trained(args: argparse.Namespace) -> list[str]:
    rows = vit_init.trained_rank(args.checkpoints, args.max_images or 256)
    write_csv(args.out / VIT_TRAINED_RANK_FILE, rows, vit_init.TRAINED_RANK_COLUMNS)
    redraw_vit_rank_trained(args.out)
    print(markdown_table([r for r in rows if r["layer"] == max(x["layer"] for x in rows)],
                         vit_init.TRAINED_RANK_COLUMNS))
    return [VIT_TRAINED_RANK_FILE]


# ---------------------------------------------------------------- redrawing from the tidy files


# Each takes the folder of tidy files and, optionally, another folder for the figures
# (``zoo.results`` draws the docs' figures where the docs look for them).


def redraw_gradients(folder: Path, figures: Path | None = None) -> list[Path]:
    rows = read_csv(folder / GRADIENT_FILES[0])
    drawn = gradients.plot_gradient_at_init(rows, figures or folder)
    if figures is not None:  # the docs' table beside the docs' figures, from the per-unit rows
        table = figures / "summary.md"
        table.write_text(gradients.summary_markdown(gradients.summarise_gradients(rows)))
        drawn.append(table)
    return drawn


def redraw_lesion(folder: Path, figures: Path | None = None) -> list[Path]:
    random_file = folder / LESION_FILES[1]
    randomised = read_csv(random_file) if random_file.is_file() else []
    single = read_csv(folder / LESION_FILES[0])
    out = figures or folder
    drawn = [lesion_figures.plot_lesion(single, out, randomised),
             lesion_figures.plot_gain_against_cost(single, out)]
    if figures is not None:  # the docs' tables beside the docs' figures
        (out / "summary.md").write_text(lesion_figures.summary_markdown(single, randomised))
        drawn.append(out / "summary.md")
    return [path for path in drawn if path is not None]


def redraw_memory(folder: Path, figures: Path | None = None) -> list[Path]:
    return [memory.plot_memory(read_csv(folder / MEMORY_FILE), figures or folder)]


def redraw_vit_gradients(folder: Path, figures: Path | None = None) -> list[Path]:
    return vit_init.plot_vit_gradients(read_csv(folder / VIT_GRADIENT_FILES[0]), figures or folder)


def redraw_vit_rank(folder: Path, figures: Path | None = None) -> list[Path]:
    return vit_init.plot_vit_rank(read_csv(folder / VIT_RANK_FILE), figures or folder)


def redraw_vit_rank_trained(folder: Path, figures: Path | None = None) -> list[Path]:
    return vit_init.plot_trained_rank(read_csv(folder / VIT_TRAINED_RANK_FILE), figures or folder)


Redraw = Callable[[Path, "Path | None"], list[Path]]
EXPERIMENTS: dict[str, tuple[Callable[[argparse.Namespace], list[str]], Redraw]] = {
    "gradient_at_init": (run_gradients, redraw_gradients),
    "lesion": (run_lesion, redraw_lesion),
    "memory": (run_memory, redraw_memory),
    "vit_gradients": (run_vit_gradients, redraw_vit_gradients),
    "vit_rank": (run_vit_rank, redraw_vit_rank),
    "vit_rank_trained": (run_vit_rank_trained, redraw_vit_rank_trained),
}


def redraw(folders: Sequence[Path]) -> list[Path]:
    """The figures of each ``--out`` folder, from its CSV files (``meta.json`` names the
    experiment)."""
    drawn = []
    for folder in folders:
        experiment = read_meta(folder).get("experiment")
        if experiment not in EXPERIMENTS:
            raise ValueError(f"{folder}/meta.json names experiment {experiment!r}; "
                             f"expected one of {', '.join(EXPERIMENTS)}")
        drawn += EXPERIMENTS[experiment][1](folder)
    return drawn


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        check_arguments(args)
        if args.command == "redraw":
            for path in redraw(args.folders):
                print(path)
            return 0
        files = EXPERIMENTS[args.command][0](args)
    except (FileNotFoundError, ValueError) as error:  # bad input: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    append = getattr(args, "append", False) and (args.out / "meta.json").is_file()
    earlier = read_meta(args.out) if append else None
    write_meta(args.out, args.command, seconds, argv, files)
    if earlier:  # every command that wrote into the folder, and their time together
        meta = read_meta(args.out)
        meta["commands"] = earlier.get("commands", [earlier.get("command")]) + [meta["command"]]
        meta["wall_seconds"] = round(earlier.get("wall_seconds", 0) + seconds, 2)
        (args.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{args.command}: {seconds:.0f} s; written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
