"""Two ways to serve the same in-memory split: on the device, or through a torch DataLoader.

``DeviceLoader`` keeps the uint8 images resident on the training device and does random crop,
horizontal flip and normalisation for a whole batch at once, as airbench and hlb-CIFAR10 do: no
worker processes and no per-sample Python. ``torch_loader`` is the standard torchvision pipeline
(PIL image -> RandomCrop(padding) -> RandomHorizontalFlip -> ToTensor -> Normalize) over the same
arrays: the baseline the benchmark compares against, and the CPU default.

Both draw crop offsets uniformly from ``0..2*padding`` in each axis and flip with p=0.5, pad
with zeros before normalising (as RandomCrop pads the PIL image), and normalise as
``(x / 255 - mean) / std`` with the same float32 operations, so un-augmented batches are
bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from zoo.data.sources import ImageArrays

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for (seed, epoch): reproducible, and the same on every rank and device."""
    mixed = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed) & 0x7FFF_FFFF_FFFF_FFFF)


def shard(order: torch.Tensor, rank: int, world_size: int, drop_last: bool) -> torch.Tensor:
    """This rank's positions in ``order``, DistributedSampler's way.

    drop_last: the tail that does not divide evenly is dropped, so shards are disjoint.
    Otherwise the order wraps around to pad the last shard, so every sample is served and every
    rank runs the same number of batches (at most ``world_size - 1`` samples are served twice).
    """
    if world_size == 1:
        return order
    if drop_last:
        order = order[: len(order) // world_size * world_size]
    else:
        padded = -(-len(order) // world_size) * world_size
        order = torch.cat([order, order[: padded - len(order)]])
    return order[rank::world_size]


class DeviceLoader:
    """Batches ``(float32 normalised NCHW images, int64 labels)`` from a device-resident split.

    Each epoch draws its permutation, crop offsets and flips from ``(seed, epoch)`` on the CPU
    (a few hundred kB, copied once per epoch), so results are the same on any device and world
    size. ``epoch_fn`` gives the epoch (the datamodule passes the trainer's ``current_epoch``, so a
    resumed run continues the same sequence); without it, each ``iter()`` counts one epoch.
    """

    def __init__(
        self,
        split: ImageArrays,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        drop_last: bool = False,
        crop_padding: int = 0,
        flip: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch_fn: Callable[[], int] | None = None,
        batches_done_fn: Callable[[], int] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        device = torch.device(device)
        self.batch_size = batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.crop_padding, self.flip = crop_padding, flip
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch_fn = epoch_fn
        self.batches_done_fn = batches_done_fn
        self._iterations = 0
        self._epoch = 0
        self._resume: dict[str, int] | None = None
        self.num_samples = len(split)
        _, channels, self.height, self.width = split.images.shape
        # Pad once, here, so that each batch's random crop is a single gather (zeros, as
        # torchvision's RandomCrop pads the uint8 image before ToTensor).
        p = crop_padding
        images = split.images if p == 0 else F.pad(split.images, (p, p, p, p))
        self.images = images.to(device).contiguous()  # uint8: a quarter of float32's memory
        self.labels = split.labels.to(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        if self.mean.shape[1] != channels or self.std.shape[1] != channels:
            raise ValueError(f"mean/std have {self.mean.shape[1]}/{self.std.shape[1]} values "
                             f"for {channels}-channel images")
        self.device = device
        per_rank = len(shard(torch.arange(self.num_samples), 0, world_size, drop_last))
        self._len = per_rank // batch_size if drop_last else -(-per_rank // batch_size)

    def __len__(self) -> int:
        return self._len

    # Lightning saves a loader's state_dict in its checkpoints and restores it before iter(): a
    # run killed mid-epoch resumes with exactly the batches it had not trained on yet.
    def state_dict(self) -> dict[str, int]:
        done = self.batches_done_fn() if self.batches_done_fn is not None else 0
        return {"epoch": self._epoch, "batches_done": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self._iterations
        self._iterations += 1
        self._epoch = epoch
        skip = 0
        if self._resume is not None and self._resume.get("epoch") == epoch:
            skip = min(int(self._resume.get("batches_done", 0)), self._len)
        self._resume = None
        n, p = self.num_samples, self.crop_padding
        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        # Offsets and flips per *position* in the epoch order, drawn for all positions on every
        # rank: the augmentation a sample gets does not depend on the world size.
        offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=g)
        flips = torch.rand(n, generator=g) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        positions = shard(torch.arange(n), self.rank, self.world_size, self.drop_last)
        positions = positions[: self._len * self.batch_size]
        plan = torch.stack([order[positions], offsets[positions, 0], offsets[positions, 1],
                            flips[positions].long()], 1).to(self.device, non_blocking=True)
        for start in range(skip * self.batch_size, len(plan), self.batch_size):
            index, top, left, flip = plan[start: start + self.batch_size].unbind(1)
            yield self._crop_flip_normalise(index, top, left, flip.bool()), self.labels[index]

    def _crop_flip_normalise(self, index: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                             flip: torch.Tensor) -> torch.Tensor:
        h, w = self.height, self.width
        if self.crop_padding == 0 and not self.flip:
            batch = self.images[index]
        else:
            rows = top[:, None] + torch.arange(h, device=self.device)  # (B, H)
            cols = torch.arange(w, device=self.device).expand(len(index), w)
            cols = torch.where(flip[:, None], cols.flip(1), cols) + left[:, None]  # (B, W)
            # One gather does crop and flip: pixel (r, c) of sample b reads padded (rows, cols).
            source = self.images[index].flatten(2)  # (B, C, Hp * Wp)
            pixel = (rows[:, :, None] * self.images.shape[3] + cols[:, None, :]).flatten(1)
            batch = source.gather(2, pixel[:, None, :].expand(-1, source.shape[1], -1))
            batch = batch.view(len(index), -1, h, w)
        # the same float32 operations as ToTensor (div 255) + Normalize (sub mean, div std)
        return batch.float().div_(255).sub_(self.mean).div_(self.std)


class PILArrayDataset(Dataset):
    """An in-memory split served as PIL images through torchvision transforms."""

    def __init__(self, split: ImageArrays, transform: Callable[[Image.Image], torch.Tensor]):
        # HWC (or HW for grey) numpy, the layout PIL wants; made once, shared by forked workers
        images = split.images.permute(0, 2, 3, 1).numpy()
        self.images = images[..., 0] if images.shape[3] == 1 else images
        self.labels = split.labels.numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Batch:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def torchvision_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                          crop_padding: int, flip: bool) -> transforms.Compose:
    steps: list = []
    if crop_padding > 0:
        steps.append(transforms.RandomCrop(image_size, padding=crop_padding))
    if flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(list(mean), list(std))]
    return transforms.Compose(steps)


def torch_loader(
    split: ImageArrays,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    shuffle: bool = False,
    drop_last: bool = False,
    crop_padding: int = 0,
    flip: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """The standard torchvision DataLoader pipeline over an in-memory split."""
    transform = torchvision_transform(split.images.shape[-1], mean, std, crop_padding, flip)
    return make_dataloader(PILArrayDataset(split, transform), batch_size, shuffle, drop_last,
                           seed, num_workers, pin_memory)


def make_dataloader(dataset: Dataset, batch_size: int, shuffle: bool, drop_last: bool, seed: int,
                    num_workers: int, pin_memory: bool) -> DataLoader:
    # A seeded generator fixes the shuffle order and the workers' base seeds, so augmentation
    # is reproducible too; persistent workers avoid re-forking every epoch.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
