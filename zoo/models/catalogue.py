"""The catalogue of the zoo: every registered network with its facts, measured, not typed.

``python -m zoo.models`` prints it; ``--markdown`` prints the table the README holds (a test
checks the two agree). Parameters are counted and FLOPs measured with torch's
``FlopCounterMode`` (a multiply-add counts as 2 FLOPs) for one image at the network's native
input (the registry's ``input_size``: CIFAR nets 3x32x32 with 10 classes, ImageNet nets
3x224x224 with 1000 classes). Networks
are built on the ``meta`` device: no memory and no arithmetic, so the 1202-layer nets take
seconds, not minutes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache

import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    family: str
    skip: str  # "add", "concat" or "none"
    depth: int  # weighted layers, as the name counts them
    parameters: int
    flops: int  # for one image at input_size
    input_size: int  # pixels per side, 3 channels
    num_classes: int
    paper: str


@cache
def catalogue_entry(name: str) -> CatalogueEntry:
    """Facts of one network at its native input size (cached per process)."""
    from zoo.models import create, describe

    facts = describe(name)  # the registry's facts: nothing is read from the name
    num_classes, size = facts["default_num_classes"], facts["input_size"]
    with torch.device("meta"):
        net = create(name, num_classes=num_classes).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            net(torch.empty(1, 3, size, size))
    return CatalogueEntry(
        name=name, family=facts["family"], skip=facts["skip"], depth=facts["depth"],
        parameters=sum(p.numel() for p in net.parameters()),
        flops=int(counter.get_total_flops()), input_size=size, num_classes=num_classes,
        paper=facts["paper"],
    )


def catalogue() -> list[CatalogueEntry]:
    """Every registered network, in the registry's order (sorted names)."""
    from zoo.models import list_models

    return [catalogue_entry(name) for name in list_models()]


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M"


def _gflops(flops: int) -> str:
    return f"{flops / 1e9:.3f}"


def markdown_table(entries: list[CatalogueEntry]) -> str:
    """The README's table of every network."""
    lines = ["| name | family | skip | depth | parameters | GFLOPs | input | paper |",
             "|---|---|---|---:|---:|---:|---|---|"]
    for e in entries:
        lines.append(f"| `{e.name}` | {e.family} | {e.skip} | {e.depth} "
                     f"| {_millions(e.parameters)} | {_gflops(e.flops)} "
                     f"| {e.input_size}px, {e.num_classes} classes | {e.paper} |")
    return "\n".join(lines)


def text_table(entries: list[CatalogueEntry]) -> str:
    header = ("name", "family", "skip", "depth", "params", "GFLOPs", "input", "paper")
    rows = [header] + [
        (e.name, e.family, e.skip, str(e.depth), _millions(e.parameters), _gflops(e.flops),
         f"{e.input_size}px/{e.num_classes}", e.paper) for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def as_dicts(entries: list[CatalogueEntry]) -> list[dict]:
    return [asdict(e) for e in entries]


def weights_markdown(entries: list[dict]) -> str:
    """The table of the zoo's shipped weights (docs/WEIGHTS.md) from manifest entries
    (zoo/weights/manifest.json)."""
    lines = ["| name | dataset | test acc. | training error (eval mode) "
             "| validation error by epoch | parameters | MFLOPs | file | wall time "
             "| trained with |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for e in entries:
        by_epoch = " → ".join(f"{100 * err:.1f}" for err in e["val_err_by_epoch"]) + "%"
        lines.append(
            f"| `{e['name']}` | {e['dataset']} | {100 * e['test_acc']:.2f}% "
            f"| {100 * e['train_err']:.2f}% | {by_epoch} | {e['parameters'] / 1e6:.2f}M "
            f"| {e['flops'] / 1e6:.1f} | {e['bytes'] / 1e6:.2f} MB "
            f"| {e['fit_seconds'] / 60:.1f} min | `{e['command']}` |")
    return "\n".join(lines)
