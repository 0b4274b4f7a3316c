"""Files in the format of the community CIFAR-10 ResNets (akamaster/pytorch_resnet_cifar10), made
by the tests themselves so that no test needs the published files or anything outside the
repository.

The format, as published (checked against the real resnet20-12fca82f.th): a legacy (non-zip)
``torch.save`` of ``{"best_prec1": float, "state_dict": OrderedDict}``, keys with the ``module.``
prefix of ``nn.DataParallel`` in the order below, no ``num_batches_tracked``. The keys and
shapes are written out from that description and He et al. 2015 (16/32/64 filters, n blocks per
stage, depth 6n+2), not taken from the zoo's own networks, so that loading them tests the zoo.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import torch

WIDTHS = (16, 32, 64)


def akamaster_state_dict(depth: int, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Random weights and batch-norm statistics (not the identity) under the published keys."""
    generator = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    def conv(key: str, out_planes: int, in_planes: int) -> None:
        state[key] = randn(out_planes, in_planes, 3, 3) * (2.0 / (9 * in_planes)) ** 0.5

    def batch_norm(prefix: str, planes: int) -> None:
        state[f"{prefix}.weight"] = 1.0 + 0.2 * randn(planes)
        state[f"{prefix}.bias"] = 0.1 * randn(planes)
        state[f"{prefix}.running_mean"] = 0.1 * randn(planes)
        state[f"{prefix}.running_var"] = 1.0 + 0.2 * randn(planes).abs()

    conv("module.conv1.weight", WIDTHS[0], 3)
    batch_norm("module.bn1", WIDTHS[0])
    in_planes = WIDTHS[0]
    for stage, planes in enumerate(WIDTHS, start=1):
        for index in range((depth - 2) // 6):
            prefix = f"module.layer{stage}.{index}"
            conv(f"{prefix}.conv1.weight", planes, in_planes)
            batch_norm(f"{prefix}.bn1", planes)
            conv(f"{prefix}.conv2.weight", planes, planes)
            batch_norm(f"{prefix}.bn2", planes)
            in_planes = planes
    state["module.linear.weight"] = 0.1 * randn(10, WIDTHS[-1])
    state["module.linear.bias"] = 0.1 * randn(10)
    return state


def write_akamaster_file(directory: Path, depth: int, seed: int = 0,
                         name: str | None = None) -> Path:
    """Save a checkpoint in the published format; named ``resnet<depth>-<sha256[:8]>.th`` (as the
    published files are) unless ``name`` is given."""
    directory.mkdir(parents=True, exist_ok=True)
    content = {"best_prec1": 91.78, "state_dict": akamaster_state_dict(depth, seed)}
    temporary = directory / "weights.partial"
    torch.save(content, temporary, _use_new_zipfile_serialization=False)
    digest = hashlib.sha256(temporary.read_bytes()).hexdigest()
    return temporary.rename(directory / (name or f"resnet{depth}-{digest[:8]}.th"))
