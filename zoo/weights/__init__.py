"""The zoo's own trained weights, shipped inside the package: ``pretrained="fashion_mnist"``.

Like torchvision's ``weights=`` enums and timm's ``pretrained=True``, a name and a dataset pick
a file; unlike them, the zoo ships the *plain twins* too, so that a trained plain-56 can be set
beside a trained ResNet-56 in seconds (lesion, gradient flow, residual gains) without training.

One manifest, ``manifest.json`` beside this file, is the single record: the loader reads it to
find and check a file, and ``docs/WEIGHTS.md`` / ``python -m zoo.models --weights`` print it.
Each entry holds the file name, its SHA-256 (checked on every load), the model options it was
trained with, the data facts its preprocessing needs (mean, std, size, class names), and how it
was made: test accuracy and eval-mode training error measured *on the shipped file*, parameters,
FLOPs, file size, the training command, the commit, the machine and the wall time.

Files are state dicts in bf16 (BatchNorm statistics in fp32) read with ``weights_only=True``:
data, never code. ``python -m zoo.weights export RUN_DIR`` writes a new one and its entry.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from zoo.weights.files import CheckpointError

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"


class ShippedWeightsError(CheckpointError):
    """A shipped weight that is unknown, missing or altered: one line says which and what to do."""


def manifest(path: Path | None = None) -> list[dict[str, Any]]:
    """Every entry of the manifest, in its order (an empty list when there is none)."""
    path = path or MANIFEST
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())["weights"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ShippedWeightsError(f"{path}: unreadable weights manifest ({error}); reinstall "
                                  "the package") from None
    return list(entries)


def datasets() -> list[str]:
    """The datasets the zoo ships weights for (``pretrained=`` accepts these names)."""
    return sorted({entry["dataset"] for entry in manifest()})


def entry_for(name: str, dataset: str) -> dict[str, Any]:
    """The manifest entry of ``name`` trained on ``dataset``."""
    entries = manifest()
    for entry in entries:
        if entry["name"] == name and entry["dataset"] == dataset:
            return entry
    shipped = sorted(e["name"] for e in entries if e["dataset"] == dataset)
    raise ShippedWeightsError(
        f"no shipped {dataset} weights for {name}; shipped: {', '.join(shipped) or 'none'} "
        "(python -m zoo.models --weights lists them; or pass a checkpoint path)")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_file(name: str, dataset: str) -> Path:
    """The checked file of ``name`` on ``dataset``: present, and its SHA-256 the manifest's."""
    entry = entry_for(name, dataset)
    path = MANIFEST.parent / entry["file"]
    if not path.is_file():
        raise ShippedWeightsError(f"{path}: shipped weights missing; reinstall the package "
                                  "(pip install --force-reinstall .)")
    found = sha256_of(path)
    if found != entry["sha256"]:
        raise ShippedWeightsError(f"{path}: SHA-256 {found[:12]}... is not the manifest's "
                                  f"{entry['sha256'][:12]}...: the file was altered or damaged; "
                                  "reinstall the package")
    return path


def model_options(name: str, dataset: str) -> dict[str, Any]:
    """``zoo.create`` arguments the weights need (classes, channels, widths ...)."""
    return dict(entry_for(name, dataset)["model_options"])


def creation_arguments(name: str, dataset: str, num_classes: int | None, in_channels: int | None,
                       options: dict[str, Any]) -> tuple[int, int, dict[str, Any]]:
    """``zoo.create``'s arguments for shipped weights: the ones left unset come from the
    manifest, so ``zoo.create("resnet56", pretrained="fashion_mnist")`` is enough."""
    shipped = model_options(name, dataset)
    num_classes = num_classes if num_classes is not None else shipped["num_classes"]
    in_channels = in_channels if in_channels is not None else shipped["in_channels"]
    rest = {k: v for k, v in shipped.items() if k not in ("num_classes", "in_channels")}
    return num_classes, in_channels, {**rest, **options}


def markdown_table(entries: list[dict[str, Any]] | None = None) -> str:
    """docs/WEIGHTS.md's table, from the manifest alone."""
    from zoo.models.catalogue import weights_markdown

    return weights_markdown(manifest() if entries is None else entries)


def provenance_lines(entries: list[dict[str, Any]] | None = None) -> str:
    """One line per file: its SHA-256, commit and machine."""
    entries = manifest() if entries is None else entries
    return "\n".join(f"- `{e['file']}`: SHA-256 `{e['sha256']}`, commit `{e['commit'][:10]}`, "
                     f"{e['machine']}" for e in entries)
