"""``trainer.precision=auto`` and ``channels_last=auto``: the fastest numerics this hardware
trains in.

bf16 autocast halves the cost of convolutions wherever the hardware has bf16 matrix units:
CUDA GPUs from Ampere on, and CPUs with ``amx_bf16`` (Intel Sapphire Rapids and later) or
``avx512_bf16`` (Intel Cooper Lake, AMD Zen 4 and later), which oneDNN uses under
``torch.autocast("cpu", dtype=torch.bfloat16)``. Measured on this project's 2-core AMD EPYC
(``avx512_bf16``), one SGD step of ResNet-20 at batch 128 (docs/BENCHMARKS.md):

=============  =====  ======
input          fp32   bf16
=============  =====  ======
1x28x28        597    1,274  img/s  (2.1x)
3x32x32        483      943  img/s  (2.0x)
1x8x8        4,501    4,574  img/s  (1.0x: maps this small are bound by overhead, not FLOPs)
=============  =====  ======

so ``auto`` keeps fp32 below :data:`MIN_BF16_IMAGE_SIZE`. Channels-last (NHWC) made the same
fp32 CPU step 1.2x faster and bf16 1.03x; on GPUs it feeds the tensor cores. BatchNorm
statistics, the loss and the optimizer state stay fp32 under autocast either way.
"""

from __future__ import annotations

import platform
from functools import lru_cache

import torch

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
MIN_BF16_IMAGE_SIZE = 16  # smaller maps: bf16 measured no faster on the CPU (8x8 digits)
FORCED = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "64",
          "transformer-engine", "16", "bf16")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The feature flags of this machine's CPU (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_flags(flags: frozenset[str] | set[str] | None = None) -> list[str]:
    """The bf16 matrix-instruction flags this CPU has, e.g. ``["avx512_bf16"]``."""
    flags = cpu_flags() if flags is None else flags
    return [flag for flag in BF16_CPU_FLAGS if flag in flags]


def resolve_accelerator(accelerator: str | None) -> str:
    """``cpu`` or ``cuda`` (or ``mps``): what Lightning's ``auto`` picks on this machine."""
    accelerator = str(accelerator or "auto").lower()
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    return accelerator


def check_accelerator(accelerator: str | None, cuda_available: bool | None = None) -> None:
    """A GPU asked for on a machine without one: one line that says what to use instead
    (Lightning's own words, "No supported gpu backend found!", do not)."""
    if str(accelerator or "auto").lower() not in ("gpu", "cuda"):
        return
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        raise ValueError(
            f"trainer.accelerator={accelerator} but this machine has no CUDA GPU: train on the "
            "CPU with trainer=cpu (several CPU processes: trainer=cpu trainer.strategy=ddp "
            "trainer.devices=N)")


def choose_precision(
    requested: str | int | None,
    accelerator: str,
    image_size: int,
    flags: frozenset[str] | set[str] | None = None,
    cuda_bf16: bool | None = None,
) -> tuple[str, str]:
    """The precision to train in and one line saying why.

    ``requested`` other than ``auto`` is kept as it is (``32-true`` forces fp32).
    """
    if requested is not None and str(requested) != "auto":
        return str(requested), "as requested (trainer.precision)"
    device = resolve_accelerator(accelerator)
    if device == "cuda":
        if cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if cuda_bf16:
            return "bf16-mixed", "this CUDA GPU computes in bf16"
        return "32-true", "this CUDA GPU has no bf16 support"
    if device != "cpu":
        return "32-true", f"no bf16 autocast chosen for {device}"
    found = cpu_bf16_flags(flags)
    if not found:
        return "32-true", "this CPU has no bf16 matrix instructions (amx_bf16 / avx512_bf16)"
    if image_size < MIN_BF16_IMAGE_SIZE:
        return "32-true", (f"{image_size}x{image_size} images are too small for bf16 to pay off "
                           f"on the CPU (measured; {MIN_BF16_IMAGE_SIZE} px and larger use it)")
    return "bf16-mixed", f"this CPU has {' and '.join(found)} (bf16 matrix instructions)"


def choose_channels_last(requested: bool | str | None, accelerator: str, precision: str) -> bool:
    """``channels_last=auto``: NHWC on the CPU (measured faster) and for bf16/fp16 on CUDA."""
    if requested is None or str(requested).lower() != "auto":
        return bool(requested)
    device = resolve_accelerator(accelerator)
    if device == "cpu":
        return True
    return device == "cuda" and ("bf16" in precision or "16" in precision)
