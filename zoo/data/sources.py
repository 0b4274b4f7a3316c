"""Where each dataset lives on disk, how to read it, and its augmentation recipe.

Readers return uint8 images in NCHW and int64 labels, the form both loader paths start from.
They are our own small readers, not torchvision's dataset classes: those verify the md5 of the
official archives, so the small files the tests generate in the real formats would fail them.
torchvision is used only to download (``download: true``) and for ImageNet's ``ImageFolder``.

Splits use ``SPLIT_SEED``, a constant and deliberately *not* the run seed: every run, seed and
architecture must train and validate on exactly the same images, or a comparison between two
networks would also compare two splits (He et al. 2015 hold out a fixed 45k/5k split of CIFAR).
"""

from __future__ import annotations

import gzip
import os
import pickle
import socket
import threading
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

SPLIT_SEED = 20151210  # fixed for all runs; the date of He et al.'s arXiv ResNet paper
DIGITS_TEST_SIZE = 360  # 20% of scikit-learn's 1,797 digits, stratified by class
CONNECT_TIMEOUT_S = 10.0  # bound on reaching a download host; offline machines fail fast
READ_TIMEOUT_S = 30.0  # per socket read during a download (not the whole download)


class MissingDataError(FileNotFoundError):
    """The dataset's files are not where we looked; the message says how to get them."""


class CorruptDataError(ValueError):
    """A dataset file exists but is truncated or not in the expected format."""


@dataclass(frozen=True)
class Recipe:
    """Per-dataset facts of the training pipeline, fixed by the papers we reproduce."""

    crop_padding: int  # px of zero padding around the image before the random crop
    flip: bool  # random horizontal flip with p=0.5
    in_memory: bool  # small enough to keep on the device: the device loader may serve it


RECIPES: dict[str, Recipe] = {
    # He et al. 2015, section 4.2: "4 pixels are padded on each side, and a 32x32 crop is
    # randomly sampled from the padded image or its horizontal flip".
    "cifar10": Recipe(crop_padding=4, flip=True, in_memory=True),
    "cifar100": Recipe(crop_padding=4, flip=True, in_memory=True),
    # The same recipe scaled to 28 px (issue 4): clothes are left/right symmetric.
    "fashion_mnist": Recipe(crop_padding=2, flip=True, in_memory=True),
    # 8 px digits: a 1 px shift only, and no flip: a mirrored 2, 3, 4, 5, 7 or 9 is not that digit.
    "digits": Recipe(crop_padding=1, flip=False, in_memory=True),
    # RandomResizedCrop + flip (Szegedy et al. 2015 as used by torchvision's references).
    "imagenet": Recipe(crop_padding=0, flip=True, in_memory=False),
}
DATASET_NAMES: tuple[str, ...] = tuple(sorted(RECIPES))


@dataclass(frozen=True)
class ImageArrays:
    """One split in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ImageArrays:
        index = torch.as_tensor(indices, dtype=torch.long)
        return ImageArrays(self.images[index], self.labels[index])


@dataclass(frozen=True)
class InMemorySplits:
    train: ImageArrays
    val: ImageArrays
    test: ImageArrays


# ---------------------------------------------------------------------------------------------
# Where to look


def default_root() -> Path:
    """``$ZOO_DATA`` if set, else ``./data``: the parent of each dataset's own folder."""
    return Path(os.environ.get("ZOO_DATA") or "data")


CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_FILES = {
    "cifar10": ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                "test_batch", "batches.meta"],
    "cifar100": ["train", "test", "meta"],
}
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


def fashion_mnist_candidates(root: str | None) -> list[Path]:
    """Folders that may hold the four IDX files, in the order we try them."""
    if root is not None:
        # the folder itself, our layout, and torchvision's download layout
        base = Path(root)
        return [base, base / "fashion-mnist", base / "FashionMNIST" / "raw"]
    return [default_root() / "fashion-mnist", default_root() / "FashionMNIST" / "raw",
            FMNIST_SYSTEM_DIR]


def _missing(name: str, looked_at: list[Path], fix: str) -> MissingDataError:
    paths = ", ".join(str(p) for p in looked_at)
    return MissingDataError(f"{name}: dataset files not found (looked in {paths}). {fix}")


# ---------------------------------------------------------------------------------------------
# Downloads (torchvision's downloader, bounded so that an offline machine fails in seconds)


def _check_reachable(url: str) -> None:
    """Ask the download host for ``url``'s headers, giving up after ``CONNECT_TIMEOUT_S``."""
    host = urlparse(url).hostname or url
    result: list[BaseException | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                   timeout=CONNECT_TIMEOUT_S).close()
            result.append(None)
        except urllib.error.HTTPError:
            result.append(None)  # the server answered: the download will report what is wrong
        except OSError as error:
            result.append(error)

    # a thread, so that a DNS lookup or a proxy that never answers cannot hang us either
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S + 1)
    if not result or result[0] is not None:
        reason = result[0] if result else f"no answer in {CONNECT_TIMEOUT_S:.0f} s"
        raise MissingDataError(
            f"cannot reach {host} to download ({reason}); this machine looks offline. "
            "Copy the files into data.root instead."
        )


def download(name: str, root: str | None) -> None:
    """Fetch ``name`` into ``root`` (default ``$ZOO_DATA`` or ``./data``) with torchvision."""
    import torchvision.datasets as tvd

    target = str(Path(root) if root is not None else default_root())
    kinds = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "fashion_mnist": tvd.FashionMNIST}
    if name not in kinds:
        raise ValueError(f"{name}: no download available; see the README for how to get it")
    dataset_class = kinds[name]
    url = dataset_class.url if hasattr(dataset_class, "url") else dataset_class.mirrors[0]
    _check_reachable(url)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(READ_TIMEOUT_S)
    try:
        dataset_class(target, train=True, download=True)
    finally:
        socket.setdefaulttimeout(previous)


def has_files(name: str, root: str | None) -> bool:
    try:
        locate(name, root)
    except MissingDataError:
        return False
    return True


def locate(name: str, root: str | None) -> Path:
    """The folder holding ``name``'s files, or a :class:`MissingDataError` saying how to fix it."""
    if name in CIFAR_FOLDERS:
        folder = (Path(root) if root is not None else default_root()) / CIFAR_FOLDERS[name]
        absent = [f for f in CIFAR_FILES[name] if not (folder / f).is_file()]
        if absent:
            raise _missing(name, [folder],
                           f"Missing {', '.join(absent)}. Put the python version of the dataset "
                           "there, set data.root=<folder holding "
                           f"{CIFAR_FOLDERS[name]}>, or set data.download=true when online.")
        return folder
    if name == "fashion_mnist":
        candidates = fashion_mnist_candidates(root)
        needed = [f for pair in FMNIST_FILES.values() for f in pair]
        for folder in candidates:
            if all((folder / f).is_file() for f in needed):
                return folder
        raise _missing(name, candidates,
                       "Run `apt-get install dataset-fashion-mnist`, set data.root=<folder "
                       "with the four IDX .gz files>, or set data.download=true when online.")
    if name == "imagenet":
        folder = (Path(root) if root is not None else default_root() / "imagenet")
        absent = [folder / s for s in ("train", "val") if not (folder / s).is_dir()]
        if absent:
            raise _missing(name, absent,
                           "Set data.root=<folder with train/<wnid>/*.JPEG and "
                           "val/<wnid>/*.JPEG>; the README says how to build it from the "
                           "official archives.")
        return folder
    raise ValueError(f"{name}: not a file-based dataset")


# ---------------------------------------------------------------------------------------------
# Readers


# What a CIFAR batch may reference: numpy arrays and the bytes codec. Anything else (os.system,
# ...) is refused, so a doctored "dataset" file cannot run code when we read it.
PICKLE_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
    (f"numpy.{core}.{module}", name)
    for core in ("core", "_core")
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                         ("numeric", "_frombuffer"))
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as error:  # truncated or foreign files fail in many ways; all mean corrupt
        raise CorruptDataError(f"{path}: not a readable CIFAR pickle batch ({error})") from error


REFETCH = "the file is damaged or not the dataset's: download it again (data.download=true)"


def whole_number_labels(path: Path, labels: object) -> np.ndarray:
    """Labels as int64, refusing anything that is not a list of whole numbers that fit.

    ``np.asarray(labels, dtype=np.int64)`` would truncate 3.9 to 3 silently, and fail with a
    bare TypeError on ``None`` or OverflowError on ``2**70``, naming no file."""
    try:
        array = np.asarray(labels)
    except (TypeError, ValueError) as error:  # ragged nesting and the like
        raise CorruptDataError(f"{path}: the labels are not a list of numbers ({error}); "
                               f"{REFETCH}") from None
    if array.ndim != 1:
        raise CorruptDataError(f"{path}: the labels must be a flat list, "
                               f"found shape {array.shape}; {REFETCH}")
    if array.dtype.kind not in "iu" and array.size > 0:  # [] reads as float64: no labels is not bad
        values = array.tolist()
        bad = next((v for v in values if isinstance(v, float) and not v.is_integer()),
                   None) or next((v for v in values if isinstance(v, bool)
                                  or not isinstance(v, int) or not -2**63 <= v < 2**63), None)
        raise CorruptDataError(f"{path}: the labels must be whole numbers, found {bad!r} "
                               f"({array.dtype} values); {REFETCH}")
    return array.astype(np.int64)


def read_cifar_batch(path: Path, label_key: bytes) -> ImageArrays:
    """One CIFAR python batch: ``{b"data": uint8 (N, 3072), label_key: [N ints]}``."""
    batch = _unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise CorruptDataError(f"{path}: expected a dict with b'data' and {label_key!r}")
    data = np.asarray(batch[b"data"])
    labels = whole_number_labels(path, batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CorruptDataError(f"{path}: b'data' must be uint8 (N, 3072), got "
                               f"{data.dtype} {data.shape}")
    if len(labels) != len(data):
        raise CorruptDataError(f"{path}: {len(data)} images but {len(labels)} labels")
    if len(data) == 0:
        raise CorruptDataError(f"{path}: holds no images; {REFETCH}")
    # rows are the red, green, blue 32x32 planes in order: exactly NCHW
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return ImageArrays(images, torch.from_numpy(labels))


def read_cifar(name: str, folder: Path) -> tuple[ImageArrays, ImageArrays]:
    """(official train set, official test set)."""
    if name == "cifar10":
        parts = [read_cifar_batch(folder / f"data_batch_{i}", b"labels") for i in range(1, 6)]
        train = ImageArrays(torch.cat([p.images for p in parts]),
                            torch.cat([p.labels for p in parts]))
        return train, read_cifar_batch(folder / "test_batch", b"labels")
    return (read_cifar_batch(folder / "train", b"fine_labels"),
            read_cifar_batch(folder / "test", b"fine_labels"))


IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (LeCun's MNIST format), gzip-compressed, of uint8 with ``ndim`` dimensions."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as error:  # bad header, truncated or damaged stream
        raise CorruptDataError(f"{path}: not a readable .gz file ({error}); download it again "
                               "(data.download=true) or reinstall dataset-fashion-mnist") from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE or raw[3] != ndim:
        raise CorruptDataError(f"{path}: bad IDX magic number (expected 0x0000080{ndim}, got "
                               f"0x{raw[:4].hex()}); is this the right file?")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape))
    if shape[0] == 0:
        raise CorruptDataError(f"{path}: holds no items (its header says {shape}); {REFETCH}")
    if len(raw) - header != size:
        raise CorruptDataError(f"{path}: header promises {shape} = {size} bytes but the file "
                               f"holds {len(raw) - header}; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_fashion_mnist(folder: Path) -> tuple[ImageArrays, ImageArrays]:
    """(official 60k train set, official 10k test set)."""
    splits = []
    for images_file, labels_file in (FMNIST_FILES["train"], FMNIST_FILES["test"]):
        images = read_idx(folder / images_file, ndim=3)
        labels = read_idx(folder / labels_file, ndim=1)
        if len(images) != len(labels):
            raise CorruptDataError(f"{folder / labels_file}: {len(labels)} labels for "
                                   f"{len(images)} images in {images_file}")
        splits.append(ImageArrays(torch.from_numpy(images.copy()).unsqueeze(1),
                                  torch.from_numpy(labels.astype(np.int64))))
    return splits[0], splits[1]


def read_digits() -> ImageArrays:
    """scikit-learn's 1,797 8x8 digits (bundled in its wheel), scaled from 0..16 to uint8.

    ``round(v * 255 / 16)`` puts them on the same 0..255 scale as every other dataset so that
    both loader paths divide by 255 as ToTensor does; the rounding moves no value by more than
    0.5/255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return ImageArrays(torch.from_numpy(images), torch.from_numpy(digits.target.astype(np.int64)))


# ---------------------------------------------------------------------------------------------
# Splits


def holdout(train: ImageArrays, val_size: int, stratify: bool) -> tuple[ImageArrays, ImageArrays]:
    """Split ``val_size`` images off ``train`` with the fixed ``SPLIT_SEED``."""
    if not 0 < val_size < len(train):
        raise ValueError(f"data.val_size must be between 1 and {len(train) - 1} (the training "
                         f"set has {len(train)} images), got {val_size}")
    if stratify:
        from sklearn.model_selection import train_test_split

        keep, held = train_test_split(np.arange(len(train)), test_size=val_size,
                                      stratify=train.labels.numpy(), random_state=SPLIT_SEED)
    else:
        order = np.random.default_rng(SPLIT_SEED).permutation(len(train))
        keep, held = order[val_size:], order[:val_size]
    return train.subset(np.sort(keep)), train.subset(np.sort(held))


def subset_indices(size: int, subset: int | None) -> np.ndarray | None:
    """A fixed random ``subset`` of ``range(size)`` (the same for every run), or None for all."""
    if subset is None:
        return None
    if not 0 < subset <= size:
        raise ValueError(f"data.train_subset must be between 1 and {size}, got {subset}")
    return np.sort(np.random.default_rng(SPLIT_SEED + 1).permutation(size)[:subset])


def load_in_memory(name: str, root: str | None, val_size: int) -> InMemorySplits:
    """Read ``name`` from disk and split off validation; the test split is the official one.

    digits has no official test split: 360 images (20%) are held out, stratified, then
    ``val_size`` more, stratified, from the rest.
    """
    if name == "digits":
        everything = read_digits()
        rest, test = holdout(everything, DIGITS_TEST_SIZE, stratify=True)
        train, val = holdout(rest, val_size, stratify=True)
        return InMemorySplits(train, val, test)
    folder = locate(name, root)
    if name in CIFAR_FOLDERS:
        official_train, test = read_cifar(name, folder)
    else:
        official_train, test = read_fashion_mnist(folder)
    train, val = holdout(official_train, val_size, stratify=False)
    return InMemorySplits(train, val, test)
