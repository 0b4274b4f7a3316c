"""``data``: one epoch of the device-resident loader (:class:`zoo.data.DeviceLoader`) against the
torchvision ``DataLoader`` + transforms pipeline at its best worker count, on synthetic uint8 data
of CIFAR shape and Fashion-MNIST shape; once only iterating, once with a ResNet-20 training step
per batch (at the first ``--precision``)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable

import torch

import zoo
from zoo.bench.common import Reporter, TrainStep, comparison, log, median, synchronize

# Worker counts tried for the torchvision DataLoader; the fastest is the baseline.
WORKERS = {"cpu": (0, 1, 2), "cuda": (4, 8, 16)}

# Dataset shapes: channels, side, crop padding, mean, std (configs/data).
DATA_SHAPES = {
    "cifar_shape": (3, 32, 4, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "fashion_mnist_shape": (1, 28, 2, (0.2860,), (0.3530,)),
}

# (images per epoch, batch size, images of the training-step variant)
DATA_SIZES = {"full": (45_000, 512, 45_000), "small": (2_048, 128, 256)}


def synthetic_split(count: int, channels: int, side: int, num_classes: int = 10):
    from zoo.data import ImageArrays

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, channels, side, side), dtype=torch.uint8, generator=g)
    return ImageArrays(images, torch.randint(0, num_classes, (count,), generator=g))


class Consumer:
    """What happens to each batch: ``iterate`` touches every pixel on the device; ``resnet20``
    runs a ResNet-20 training step (the "CIFAR-shape ResNet-20 epoch" of the issue)."""

    def __init__(self, kind: str, channels: int, device: torch.device, precision: str,
                 channels_last: bool) -> None:
        self.kind, self.device = kind, device
        self.checksum = torch.zeros((), device=device)
        if kind == "resnet20":
            torch.manual_seed(0)
            net = zoo.create("resnet20", num_classes=10, in_channels=channels).to(device)
            if channels_last:
                net = net.to(memory_format=torch.channels_last)
            optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
            self.step = TrainStep(net, optimizer, device, precision, channels_last)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.kind == "iterate":
            self.checksum += x.sum() + y.sum()  # on the device: no host sync per batch
            return
        self.step(x, y)


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
    workers = (tuple(int(w) for w in args.workers.split(",")) if args.workers
               else WORKERS[device.type])
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
        precision = args.precisions[0]
        consume = Consumer(kind, channels, device, precision, args.channels_last_of[precision])
        seconds: dict[str, list[float]] = {name: [] for name in loaders}
        images = {}
        for loader in loaders.values():  # warm-up: worker start-up, cudnn autotuning
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
            "precision": precision if kind == "resnet20" else None,
            "zoo_epoch_s": median(seconds["device"]), "baseline_epoch_s": per_worker[best],
            "baseline_epoch_s_per_workers": {k.removeprefix("torch_w"): v
                                             for k, v in per_worker.items()},
            **comparison(zoo_rates, baseline_rates),
            "target": 5.0 if device.type == "cuda" and kind == "resnet20" else 1.0,
        }))
    return results
