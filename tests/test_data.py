"""The datamodule on small datasets written in the real on-disk formats, and on real Fashion-MNIST.

The generated images encode their own index in their pixels, so tests can tell which image (and
which crop of it) a batch holds without trusting the code under test."""

from __future__ import annotations

import gzip
import pickle
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from omegaconf import OmegaConf
from PIL import Image

from zoo.config.schemas import load_group_file
from zoo.data import (
    DATASET_NAMES,
    CorruptDataError,
    DeviceLoader,
    ImageArrays,
    MissingDataError,
    ZooDataModule,
    build_datamodule,
    sources,
    torch_loader,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"
FMNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_STATS = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}


# -- writers for the real formats ---------------------------------------------------------------


def indexed_images(n: int, channels: int, size: int, start: int = 0) -> np.ndarray:
    """uint8 (n, C, H, W) whose pixel (0, 0, 0) and (1, 0, 0) hold the global index base 256."""
    rng = np.random.default_rng(start)
    images = rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8)
    index = np.arange(start, start + n)
    images[:, 0, 0, 0] = index % 256
    images[:, -1, 0, 1] = index // 256
    return images


def image_ids(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() + 256 * images[:, -1, 0, 1].long()).tolist()


def write_cifar10(root: Path, per_batch: int = 20, test: int = 30) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(5):
        images = indexed_images(per_batch, 3, 32, start=i * per_batch)
        batch = {b"batch_label": f"training batch {i + 1} of 5".encode(),
                 b"labels": [int(j % 10) for j in range(i * per_batch, (i + 1) * per_batch)],
                 b"data": images.reshape(per_batch, -1),
                 b"filenames": [b"x.png"] * per_batch}
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch))
    images = indexed_images(test, 3, 32, start=1000)
    (folder / "test_batch").write_bytes(pickle.dumps(
        {b"labels": [j % 10 for j in range(test)], b"data": images.reshape(test, -1)}))
    (folder / "batches.meta").write_bytes(pickle.dumps(
        {b"label_names": [f"class{j}".encode() for j in range(10)], b"num_cases_per_batch": 20}))
    return folder


def write_cifar100(root: Path, train: int = 120, test: int = 40) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n, start in (("train", train, 0), ("test", test, 1000)):
        images = indexed_images(n, 3, 32, start=start)
        (folder / name).write_bytes(pickle.dumps(
            {b"fine_labels": [j % 100 for j in range(n)],
             b"coarse_labels": [j % 20 for j in range(n)], b"data": images.reshape(n, -1)}))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"c"] * 100}))


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion(folder: Path, train: int = 100, test: int = 20) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, start in (("train", train, 0), ("t10k", test, 1000)):
        images = indexed_images(n, 1, 28, start=start)[:, 0]
        labels = np.arange(n) % 10
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return folder


def write_image_folder(root: Path, classes: dict[str, list[str]], per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for split, names in classes.items():
        for name in names:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (30 + 4 * i, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{name}_{i}.JPEG", "JPEG")


def datamodule(name: str, root: Path | None, **overrides) -> ZooDataModule:
    """The real config for ``name`` with ``overrides``, built the way train.py builds it."""
    cfg = OmegaConf.create({"seed": 0, "data": load_group_file(CONFIGS / f"{name}.yaml")})
    cfg.data.root = None if root is None else str(root)
    cfg.data.num_workers = 0
    for key, value in overrides.items():
        cfg.data[key] = value
    return build_datamodule(cfg.data)


def collect(loader) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def unnormalise(x: torch.Tensor, dm: ZooDataModule) -> torch.Tensor:
    mean = torch.tensor(dm.mean).view(1, -1, 1, 1)
    std = torch.tensor(dm.std).view(1, -1, 1, 1)
    return (x * std + mean).mul(255).round().to(torch.uint8)


# -- configs and construction -------------------------------------------------------------------


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_every_config_builds_and_states_its_facts(name):
    dm = datamodule(name, None)
    assert dm.name == name
    assert len(dm.mean) == len(dm.std) == dm.in_channels
    assert dm.num_classes in (10, 100, None) and dm.image_size in (8, 28, 32, 224)  # None: folders
    assert "stem" in OmegaConf.load(CONFIGS / f"{name}.yaml")  # for the model config only


def test_build_datamodule_rejects_unknown_names_and_keys():
    with pytest.raises(ValueError, match="valid names: cifar10, cifar100, digits"):
        build_datamodule({"name": "mnist"})
    cfg = dict(OmegaConf.to_container(load_group_file(CONFIGS / "digits.yaml")), seed=0)
    cfg["colour"] = "red"
    with pytest.raises(ValueError, match=r"unknown data config key\(s\) \['colour'\]"):
        build_datamodule(cfg)
    with pytest.raises(ValueError, match="data.loader must be one of"):
        datamodule("digits", None, loader="gpu")
    with pytest.raises(ValueError, match="too large for the device loader"):
        datamodule("imagenet", None, loader="device")


# -- CIFAR --------------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", ["device", "torch"])
def test_cifar10_pickles_load_with_fixed_split(tmp_path, loader):
    write_cifar10(tmp_path)
    dm = datamodule("cifar10", tmp_path, val_size=20, batch_size=16, loader=loader)
    dm.setup("fit")
    assert (len(dm.splits.train), len(dm.splits.val), len(dm.splits.test)) == (80, 20, 30)
    train_ids, val_ids = image_ids(dm.splits.train.images), image_ids(dm.splits.val.images)
    assert sorted(train_ids + val_ids) == list(range(100))  # a partition of the training set
    assert image_ids(dm.splits.test.images) == list(range(1000, 1030))
    assert dm.splits.train.labels.tolist() == [i % 10 for i in train_ids]  # labels stay paired

    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(dm.train_dataloader()) == 5  # 80 // 16, the last partial batch dropped
    xs, ys = collect(dm.test_dataloader())
    assert xs.shape == (30, 3, 32, 32) and 0 <= ys.min() and ys.max() < 10
    assert len(dm.test_dataloader()) == 2  # 16 + 14: evaluation keeps every image
    # the reader keeps the red/green/blue planes in order: un-normalising gives the raw bytes
    raw = indexed_images(30, 3, 32, start=1000)
    assert torch.equal(unnormalise(xs, dm), torch.from_numpy(raw))

    # the split is a constant, not the run seed: every run and architecture sees it
    other = datamodule("cifar10", tmp_path, val_size=20, batch_size=16, loader=loader, seed=7)
    other.setup("fit")
    assert image_ids(other.splits.val.images) == val_ids


def test_cifar100_uses_fine_labels(tmp_path):
    write_cifar100(tmp_path)
    dm = datamodule("cifar100", tmp_path, val_size=20, batch_size=10, loader="device")
    dm.setup("fit")
    assert (len(dm.splits.train), len(dm.splits.val), len(dm.splits.test)) == (100, 20, 40)
    _, labels = collect(dm.test_dataloader())
    assert labels.tolist() == [i % 100 for i in range(40)]
    assert dm.num_classes == 100


def test_config_facts_must_match_the_files(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(ValueError, match="outside 0..4"):
        datamodule("cifar10", tmp_path, val_size=20, num_classes=5).setup("fit")
    with pytest.raises(ValueError, match="3x32x32, the data config says 3x28x28"):
        datamodule("cifar10", tmp_path, val_size=20, image_size=28).setup("fit")
    with pytest.raises(ValueError, match="no full batch"):
        datamodule("cifar10", tmp_path, val_size=20, batch_size=128).setup("fit")


def test_corrupt_cifar_pickle_names_the_file(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8),
                                                         b"labels": [1, 2]})[:40])
    with pytest.raises(CorruptDataError, match="data_batch_3"):
        datamodule("cifar10", tmp_path, val_size=20).setup("fit")


class RunsCode:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickle_reader_runs_no_code(tmp_path, protocol, capsys):
    folder = write_cifar10(tmp_path)
    batch = {b"data": indexed_images(20, 3, 32).reshape(20, -1), b"labels": [0] * 20}
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=protocol))
    assert len(sources.read_cifar_batch(folder / "data_batch_2", b"labels")) == 20
    batch[b"labels"] = RunsCode()
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=protocol))
    with pytest.raises(CorruptDataError, match="data_batch_2.*refusing to load .*print"):
        sources.read_cifar_batch(folder / "data_batch_2", b"labels")
    assert "pwned" not in capsys.readouterr().out


# -- the two loader paths -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist", "digits"])
def test_both_paths_give_identical_unaugmented_batches(tmp_path, name):
    if name == "cifar10":
        write_cifar10(tmp_path)
        kw = {"val_size": 20}
    elif name == "fashion_mnist":
        write_fashion(tmp_path)
        kw = {"val_size": 10}
    else:
        kw = {}
    paths = {}
    for loader in ("device", "torch"):
        dm = datamodule(name, tmp_path, batch_size=8, loader=loader, **kw)
        dm.setup("fit")
        paths[loader] = [list(dm.val_dataloader()), list(dm.test_dataloader())]
    for device_batches, torch_batches in zip(*paths.values(), strict=True):
        assert len(device_batches) == len(torch_batches)
        for (xd, yd), (xt, yt) in zip(device_batches, torch_batches, strict=True):
            assert torch.equal(xd, xt) and torch.equal(yd, yt)  # bit-identical ToTensor+Normalize


def position_coded_split(n: int, size: int = 16) -> ImageArrays:
    """Channel 0 holds row + 1, channel 1 holds column + 1 (0 only in the crop padding)."""
    grid = torch.arange(1, size + 1, dtype=torch.uint8)
    image = torch.stack([grid[:, None].expand(size, size), grid[None, :].expand(size, size),
                         torch.zeros(size, size, dtype=torch.uint8)])
    return ImageArrays(image.expand(n, 3, size, size).clone(), torch.zeros(n, dtype=torch.long))


def decode_crops(x: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, flipped) of each crop, read from the centre pixels (never padding)."""
    pixels = x.mul(255).round().long()
    size = x.shape[-1]
    centre = size // 2
    row = pixels[:, 0, centre, centre] - 1
    col = pixels[:, 1, centre, centre] - 1
    flipped = pixels[:, 1, centre, centre + 1] < pixels[:, 1, centre, centre]
    top = row + pad - centre
    left = torch.where(flipped, col + pad - (size - 1 - centre), col + pad - centre)
    return top, left, flipped


def offset_counts(top: torch.Tensor, left: torch.Tensor, pad: int) -> torch.Tensor:
    return torch.bincount(top * (2 * pad + 1) + left, minlength=(2 * pad + 1) ** 2)


def chi_square(counts: torch.Tensor) -> float:
    expected = counts.sum().item() / len(counts)
    return float(((counts.double() - expected) ** 2 / expected).sum())


def test_device_augmentation_matches_torchvision_distribution():
    pad, n = 4, 4050
    split = position_coded_split(n)
    kw = {"batch_size": 512, "mean": [0.0] * 3, "std": [1.0] * 3, "shuffle": True,
          "drop_last": False, "crop_padding": pad, "flip": True, "seed": 3}
    x, _ = collect(DeviceLoader(split, **kw))
    top, left, flipped = decode_crops(x, pad)
    assert top.min() == 0 and left.min() == 0 and top.max() == 2 * pad and left.max() == 2 * pad
    counts = offset_counts(top, left, pad)
    assert (counts > 0).all()  # every one of the 81 offsets occurs
    # 80 degrees of freedom: the 0.001 critical value is 124.8 (fixed seed: not flaky)
    assert chi_square(counts) < 124.8
    assert abs(flipped.double().mean().item() - 0.5) < 0.03  # 4050 draws: sd 0.008

    # each crop equals torchvision's crop (+ flip) of the zero-padded image, to the bit
    source = Image.fromarray(split.images[0].permute(1, 2, 0).numpy())
    padded = TF.pad(source, pad)
    for i in range(0, n, 500):
        expected = TF.crop(padded, int(top[i]), int(left[i]), 16, 16)
        if flipped[i]:
            expected = TF.hflip(expected)
        assert torch.equal(x[i], TF.to_tensor(expected))

    # the torchvision pipeline on the same data passes the same uniformity test
    xt, _ = collect(torch_loader(position_coded_split(1215), **kw))
    top_t, left_t, flipped_t = decode_crops(xt, pad)
    counts_t = offset_counts(top_t, left_t, pad)
    assert (counts_t > 0).all() and chi_square(counts_t) < 124.8
    assert abs(flipped_t.double().mean().item() - 0.5) < 0.05


def test_digits_and_fashion_recipes():
    dm = datamodule("digits", None, batch_size=1137)
    dm.setup("fit")
    assert dm.recipe.crop_padding == 1 and not dm.recipe.flip  # digits are not mirror-symmetric
    assert datamodule("fashion_mnist", None).recipe.crop_padding == 2


@pytest.mark.parametrize("loader", ["device", "torch"])
def test_crop_padding_overrides_the_recipe(tmp_path, loader):
    """data.crop_padding=0: the training images are the originals or their mirrors, no shifts;
    the recipe's pad-2 crop shifts most of them."""
    write_fashion(tmp_path, train=200)
    for crop_padding, expect_all_unshifted in ((0, True), (None, False)):
        dm = datamodule("fashion_mnist", tmp_path, val_size=10, batch_size=19, loader=loader,
                        crop_padding=crop_padding)
        dm.setup("fit")
        originals = {image.numpy().tobytes() for image in dm.splits.train.images}
        x, _ = collect(dm.train_dataloader())
        images = unnormalise(x, dm)
        as_is = [image.numpy().tobytes() in originals for image in images]
        mirrored = [image.flip(-1).numpy().tobytes() in originals for image in images]
        unshifted = [a or m for a, m in zip(as_is, mirrored, strict=True)]
        if expect_all_unshifted:
            assert dm.crop_padding == 0 and all(unshifted)
            assert 0.3 < sum(mirrored) / len(mirrored) < 0.7  # the flips are still drawn
        else:
            assert dm.crop_padding == 2 and sum(unshifted) < len(unshifted) / 2


@pytest.mark.parametrize("name, crop_padding, message", [
    ("fashion_mnist", -1, "must be in 0..27"),
    ("fashion_mnist", 28, "must be in 0..27"),
    ("imagenet", 4, "RandomResizedCrop"),
])
def test_bad_crop_padding_says_what_is_allowed(name, crop_padding, message):
    with pytest.raises(ValueError, match=message):
        datamodule(name, None, crop_padding=crop_padding)


def test_reshuffle_each_epoch_reproducible_with_seed():
    split = ImageArrays(torch.from_numpy(indexed_images(200, 1, 8)), torch.arange(200) % 10)
    kw = {"batch_size": 16, "mean": [0.5], "std": [0.5], "shuffle": True, "drop_last": True,
          "crop_padding": 1}

    def epochs(loader, k):
        return [collect(loader) for _ in range(k)]

    first = epochs(DeviceLoader(split, seed=5, **kw), 2)
    again = epochs(DeviceLoader(split, seed=5, **kw), 2)
    other = epochs(DeviceLoader(split, seed=6, **kw), 1)
    assert not torch.equal(first[0][1], first[1][1])  # epoch 1 is a new order
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)  # and the same for the same seed
    assert not torch.equal(first[0][1], other[0][1])
    # epoch_fn pins the epoch (the datamodule passes trainer.current_epoch)
    pinned = DeviceLoader(split, seed=5, epoch_fn=lambda: 1, **kw)
    assert torch.equal(collect(pinned)[0], first[1][0])
    assert len(DeviceLoader(split, seed=5, **kw)) == 200 // 16


def test_ddp_shards_are_disjoint_with_equal_batch_counts():
    n = 203
    split = ImageArrays(torch.from_numpy(indexed_images(n, 1, 8)), torch.arange(n) % 10)
    kw = {"batch_size": 10, "mean": [0.5], "std": [0.5], "seed": 1}
    # training: shuffled, drop_last; 101 samples per rank -> 10 batches each
    ranks = [DeviceLoader(split, shuffle=True, drop_last=True, rank=r, world_size=2, **kw)
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 10
    seen = [image_ids(unnormalise(collect(loader)[0], SimpleNamespace(mean=[.5], std=[.5])))
            for loader in ranks]
    assert len(seen[0]) == len(seen[1]) == 100
    assert not set(seen[0]) & set(seen[1])  # disjoint
    # evaluation: every sample served, ranks padded to the same count (DistributedSampler's way)
    ranks = [DeviceLoader(split, rank=r, world_size=2, **kw) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 11
    served = [image_ids(unnormalise(collect(loader)[0], SimpleNamespace(mean=[.5], std=[.5])))
              for loader in ranks]
    assert len(served[0]) == len(served[1]) == 102 and set(served[0] + served[1]) == set(range(n))


def test_datamodule_takes_rank_device_and_epoch_from_trainer():
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")),
                              global_rank=1, world_size=2, current_epoch=0)
    dm = datamodule("digits", None, batch_size=64, loader="device")
    dm.trainer = trainer
    dm.setup("fit")
    train = dm.train_dataloader()
    assert (train.rank, train.world_size, len(train)) == (1, 2, 1137 // 2 // 64)
    _, epoch0 = collect(train)
    assert torch.equal(collect(train)[1], epoch0)  # still epoch 0: same order
    trainer.current_epoch = 1
    assert not torch.equal(collect(train)[1], epoch0)


def test_lightning_trains_on_the_device_loader():
    import pytorch_lightning as pl

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
            self.labels: list[list[int]] = []

        def on_train_epoch_start(self):
            self.labels.append([])

        def training_step(self, batch, _):
            x, y = batch
            assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32
            self.labels[-1] += y.tolist()
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, _):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = datamodule("digits", None, batch_size=128, loader="device")
    model = Recorder()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    assert trainer.num_training_batches == 1137 // 128
    assert [len(e) for e in model.labels] == [8 * 128, 8 * 128]
    assert model.labels[0] != model.labels[1]  # reshuffled from the seed each epoch
    standalone = DeviceLoader(dm.splits.train, 128, dm.mean, dm.std, shuffle=True, drop_last=True,
                              crop_padding=1, seed=dm.seed)
    assert collect(standalone)[1].tolist() == model.labels[0]


# -- Fashion-MNIST (IDX) ------------------------------------------------------------------------


def test_fashion_idx_files_load(tmp_path):
    write_fashion(tmp_path / "fm")
    dm = datamodule("fashion_mnist", tmp_path / "fm", val_size=10, batch_size=8, loader="device")
    dm.setup("fit")
    assert (len(dm.splits.train), len(dm.splits.val), len(dm.splits.test)) == (90, 10, 20)
    x, y = collect(dm.test_dataloader())
    assert x.shape == (20, 1, 28, 28) and y.tolist() == [i % 10 for i in range(20)]
    assert torch.equal(unnormalise(x, dm), torch.from_numpy(indexed_images(20, 1, 28, 1000)))
    # torchvision's download layout under data.root is found too
    write_fashion(tmp_path / "tv" / "FashionMNIST" / "raw")
    assert sources.locate("fashion_mnist", str(tmp_path / "tv")).name == "raw"


@pytest.mark.parametrize("damage", ["magic", "truncated", "gzip"])
def test_corrupt_idx_names_the_file(tmp_path, damage):
    folder = write_fashion(tmp_path)
    target = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(target.read_bytes())
    if damage == "magic":
        target.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + raw[4:]))
    elif damage == "truncated":
        target.write_bytes(gzip.compress(raw[:-100]))
    else:
        target.write_bytes(target.read_bytes()[:200])
    with pytest.raises(CorruptDataError, match="train-images-idx3-ubyte.gz"):
        datamodule("fashion_mnist", folder, val_size=10).setup("fit")


@pytest.mark.skipif(not FMNIST_SYSTEM.is_dir(),
                    reason="real Fashion-MNIST absent: apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist():
    dm = datamodule("fashion_mnist", FMNIST_SYSTEM, batch_size=500, loader="device")
    dm.setup("fit")
    assert (len(dm.splits.train), len(dm.splits.val), len(dm.splits.test)) == (55000, 5000, 10000)
    assert dm.splits.test.labels.bincount().tolist() == [1000] * 10  # the official test set
    every = torch.cat([dm.splits.train.images, dm.splits.val.images]).double() / 255
    assert every.mean().item() == pytest.approx(dm.mean[0], abs=5e-4)  # the config's facts
    assert every.std().item() == pytest.approx(dm.std[0], abs=5e-4)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (500, 1, 28, 28) and 0 <= y.min() and y.max() <= 9
    assert abs(x.mean().item()) < 0.2  # normalised


def test_digits_split_is_stratified():
    dm = datamodule("digits", None)
    dm.setup("fit")
    assert (len(dm.splits.train), len(dm.splits.val), len(dm.splits.test)) == (1137, 300, 360)
    counts = dm.splits.test.labels.bincount()
    assert counts.min() >= 35 and counts.max() <= 37
    every = torch.cat([dm.splits.train.images, dm.splits.val.images]).double() / 255
    assert every.mean().item() == pytest.approx(dm.mean[0], abs=5e-4)
    assert every.std().item() == pytest.approx(dm.std[0], abs=5e-4)
    small = datamodule("digits", None, train_subset=200, seed=9)
    small.setup("fit")
    same = datamodule("digits", None, train_subset=200, seed=1)
    same.setup("fit")
    assert len(small.splits.train) == 200
    assert torch.equal(small.splits.train.images, same.splits.train.images)


# -- missing data -------------------------------------------------------------------------------


@pytest.mark.parametrize("name,fix", [("cifar10", "data.download=true"),
                                      ("cifar100", "data.download=true"),
                                      ("fashion_mnist", "apt-get install dataset-fashion-mnist"),
                                      ("imagenet", "data.root=")])
def test_missing_files_fail_fast_naming_path_and_fix(tmp_path, name, fix):
    root = tmp_path / "nothing_here"
    start = time.monotonic()
    with pytest.raises(MissingDataError) as error:
        datamodule(name, root).setup("fit")
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert message.startswith(name) and str(root) in message and fix in message


def test_download_attempt_is_bounded(monkeypatch):
    import threading

    released = threading.Event()

    def never_answers(*args, **kwargs):
        released.wait(30)  # a DNS lookup or proxy that hangs, until this test ends
        raise OSError("abandoned")  # the probe thread ends quietly, not inside a later test

    monkeypatch.setattr(sources, "CONNECT_TIMEOUT_S", 0.5)
    monkeypatch.setattr(sources.urllib.request, "urlopen", never_answers)
    start = time.monotonic()
    with pytest.raises(MissingDataError, match="cannot reach example.org .*no answer"):
        sources._check_reachable("https://example.org/cifar.tar.gz")
    assert time.monotonic() - start < 3
    released.set()


def test_download_offline_fails_within_seconds(tmp_path, monkeypatch):
    def refused(*args, **kwargs):
        raise OSError("connection refused")

    monkeypatch.setattr(sources.urllib.request, "urlopen", refused)
    start = time.monotonic()
    with pytest.raises(MissingDataError, match="cannot reach www.cs.toronto.edu"):
        datamodule("cifar10", tmp_path, download=True).setup("fit")
    assert time.monotonic() - start < 5


# -- ImageNet (ImageFolder) ---------------------------------------------------------------------


def test_imagenet_folder(tmp_path):
    wnids = ["n01440764", "n01443537", "n01484850"]
    write_image_folder(tmp_path, {"train": wnids, "val": wnids}, per_class=3)
    dm = datamodule("imagenet", tmp_path, num_classes=3, image_size=16, batch_size=4)
    dm.setup("fit")
    assert dm.loader_kind == "torch"
    loader = dm.train_dataloader()
    assert loader.drop_last and len(loader) == 2
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    xv, yv = collect(dm.val_dataloader())
    xt, yt = collect(dm.test_dataloader())
    assert xv.shape == (9, 3, 16, 16) and sorted(yv.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert torch.equal(xv, xt) and torch.equal(yv, yt)  # val doubles as test


def test_imagenet_bad_trees_give_clear_errors(tmp_path):
    write_image_folder(tmp_path / "a", {"train": ["n1", "n2"], "val": ["n1", "n3"]})
    with pytest.raises(ValueError, match=r"only in train: \['n2'\], only in val: \['n3'\]"):
        datamodule("imagenet", tmp_path / "a", num_classes=2, image_size=16, batch_size=2).setup()
    (tmp_path / "b" / "train" / "n1").mkdir(parents=True)  # a class folder with no images
    (tmp_path / "b" / "val").mkdir(parents=True)
    with pytest.raises(MissingDataError, match="imagenet: .*train"):
        datamodule("imagenet", tmp_path / "b", num_classes=1, image_size=16).setup()
    write_image_folder(tmp_path / "c", {"train": ["n1", "n2"], "val": ["n1", "n2"]})
    with pytest.raises(ValueError, match="2 class folders but data.num_classes=1000; set data.nu"):
        datamodule("imagenet", tmp_path / "c", num_classes=1000, image_size=16,
                   batch_size=2).setup()
    counted = datamodule("imagenet", tmp_path / "c", image_size=16, batch_size=2)
    counted.setup()  # the config's default: the folders say how many classes
    assert counted.num_classes == 2
