"""One LightningDataModule for every dataset of the zoo, built from a ``configs/data/*.yaml``.

Every architecture sees the same splits and augmentation: splits are fixed by
``sources.SPLIT_SEED`` (not the run seed) and the augmentation recipe per dataset lives in
``sources.RECIPES`` (``data.crop_padding`` overrides its crop, e.g. 0 for flips only in short
runs). The run ``seed`` only orders the batches and draws the augmentation.

Splits: CIFAR-10/100 45k/5k train/val from the official training set (He et al. 2015) and the
official test set as test; Fashion-MNIST 55k/5k and its official test set; digits 360 test
images (stratified), then ``val_size`` validation images (stratified), the rest train;
ImageNet's labelled ``val`` folder serves as both val and test, because the official test
labels are not public (as in the ResNet and DenseNet papers, which report on val).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Subset

from zoo.config.schemas import LOADERS
from zoo.data import sources
from zoo.data.loaders import DeviceLoader, make_dataloader, torch_loader
from zoo.data.sources import DATASET_NAMES, RECIPES, ImageArrays, InMemorySplits, MissingDataError

if TYPE_CHECKING:
    from omegaconf import DictConfig

MODEL_ONLY_KEYS = ("stem",)  # facts in the data config that the model config reads, not us


class ZooDataModule(pl.LightningDataModule):
    """Batches of ``(float32 normalised NCHW images, int64 labels)`` for one dataset.

    ``loader``: ``device`` keeps the uint8 images on the trainer's device and augments whole
    batches there (CIFAR, Fashion-MNIST, digits); ``torch`` is the torchvision DataLoader
    pipeline; ``auto`` picks ``device`` for in-memory datasets (any device), else ``torch``.
    """

    def __init__(
        self,
        name: str,
        num_classes: int | None,  # None: ImageNet-format folders say it (one class per folder)
        in_channels: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        root: str | None = None,
        batch_size: int = 128,  # per device
        num_workers: int = 2,
        loader: str = "auto",
        train_subset: int | None = None,
        val_size: int | None = 5000,
        augment: bool = True,
        crop_padding: int | None = None,  # None: the dataset's recipe (sources.RECIPES)
        download: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if name not in RECIPES:
            raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
        if loader not in LOADERS:
            raise ValueError(f"data.loader must be one of {', '.join(LOADERS)}, got {loader!r}")
        self.recipe = RECIPES[name]
        if loader == "device" and not self.recipe.in_memory:
            raise ValueError(f"{name} is too large for the device loader; use data.loader=torch")
        if name == "imagenet" and val_size is not None:
            raise ValueError("imagenet validates on its val folder; set data.val_size=null")
        if name != "imagenet" and num_classes is None:
            raise ValueError(f"{name} needs data.num_classes; only folder datasets count theirs")
        if name != "imagenet" and val_size is None:
            raise ValueError(f"{name} needs data.val_size (images held out for validation)")
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"data.mean and data.std need {in_channels} values (one per channel)")
        if crop_padding is not None and name == "imagenet":
            raise ValueError("data.crop_padding is the padded random crop of in-memory datasets; "
                             "imagenet trains on RandomResizedCrop: leave data.crop_padding=null")
        if crop_padding is not None and not 0 <= crop_padding < image_size:
            raise ValueError(f"data.crop_padding must be in 0..{image_size - 1} px (0: no crop; "
                             f"null: the {name} recipe's {self.recipe.crop_padding}), "
                             f"got {crop_padding}")
        if batch_size < 1 or num_workers < 0 or seed < 0:
            raise ValueError("data.batch_size must be >= 1, data.num_workers and seed >= 0")
        self.name, self.root = name, root
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.batch_size, self.num_workers, self.loader = batch_size, num_workers, loader
        self.train_subset, self.val_size = train_subset, val_size
        self.augment, self.download, self.seed = augment, download, seed
        self.crop_padding = self.recipe.crop_padding if crop_padding is None else crop_padding
        self.splits: InMemorySplits | None = None
        self.folders: dict[str, Any] | None = None  # ImageNet's ImageFolder datasets
        self.device = torch.device("cpu")
        self.rank, self.world_size = 0, 1

    # -- Lightning hooks ------------------------------------------------------------------------

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node, before setup: the place to download.
        if self.download and self.name != "digits" and not sources.has_files(self.name, self.root):
            sources.download(self.name, self.root)

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.device = self.trainer.strategy.root_device
            self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size
        if self.splits is not None or self.folders is not None:
            return  # fit then test: the data is already in memory
        try:
            self._load()
        except MissingDataError:
            if not self.download or self.name == "digits":
                raise
            self.prepare_data()  # setup() called without prepare_data(), e.g. outside a Trainer
            self._load()

    def _load(self) -> None:
        if self.name == "imagenet":
            self.folders = self._image_folders()
            return
        splits = sources.load_in_memory(self.name, self.root, self.val_size)
        keep = sources.subset_indices(len(splits.train), self.train_subset)
        if keep is not None:
            splits = InMemorySplits(splits.train.subset(keep), splits.val, splits.test)
        for split_name, split in (("train", splits.train), ("val", splits.val),
                                  ("test", splits.test)):
            self._check_facts(split_name, split)
        self._check_one_batch(len(splits.train))
        self.splits = splits

    def _check_facts(self, split_name: str, split: ImageArrays) -> None:
        """The config's facts must describe the files, or the model is built wrong silently."""
        if len(split) == 0:  # min() of no labels would fail with a bare RuntimeError
            raise ValueError(f"{self.name}: the {split_name} split is empty; check the dataset "
                             f"files{f' under {self.root}' if self.root else ''} and data.val_size")
        _, channels, height, width = split.images.shape
        if (channels, height, width) != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"{self.name} {split_name} images are {channels}x{height}x{width}, "
                             f"the data config says {self.in_channels}x{self.image_size}x"
                             f"{self.image_size}")
        low, top = int(split.labels.min()), int(split.labels.max())
        if low < 0 or top >= self.num_classes:
            raise ValueError(f"{self.name} {split_name} has labels {low}..{top}, outside 0.."
                             f"{self.num_classes - 1} (data.num_classes={self.num_classes})")

    def _check_one_batch(self, train_size: int) -> None:
        # the train loader drops the last partial batch (BatchNorm fails on a batch of one)
        if train_size < self.batch_size * self.world_size:
            raise ValueError(f"{self.name}: {train_size} training images make no full batch of "
                             f"{self.batch_size} per device x {self.world_size} device(s); "
                             "lower data.batch_size or raise data.train_subset")

    def _image_folders(self) -> dict[str, Any]:
        from torchvision import transforms
        from torchvision.datasets import ImageFolder

        root = sources.locate(self.name, self.root)
        normalize = transforms.Normalize(list(self.mean), list(self.std))
        size = self.image_size
        # "resize 256, center crop 224": the short side at 8/7 of the crop, as torchvision's refs
        eval_tf = [transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size)]
        train_tf = ([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
                    if self.augment else eval_tf)
        folders = {}
        for split, steps in (("train", train_tf), ("val", eval_tf)):
            try:
                folders[split] = ImageFolder(
                    str(root / split),
                    transforms.Compose(steps + [transforms.ToTensor(), normalize]),
                )
            except FileNotFoundError as error:  # no class folders, or no images in them
                raise MissingDataError(f"imagenet: {root / split}: {error}") from error
        if folders["train"].classes != folders["val"].classes:
            only_train = sorted(set(folders["train"].classes) - set(folders["val"].classes))
            only_val = sorted(set(folders["val"].classes) - set(folders["train"].classes))
            raise ValueError(f"imagenet: train and val class folders differ under {root} "
                             f"(only in train: {only_train[:5]}, only in val: {only_val[:5]}); "
                             "labels would not match. Use the same <wnid> folders in both.")
        if self.num_classes is None:  # not set by the user: a subset (Imagenette) has fewer
            self.num_classes = len(folders["train"].classes)
        elif len(folders["train"].classes) != self.num_classes:
            raise ValueError(f"imagenet: {root / 'train'} has {len(folders['train'].classes)} "
                             f"class folders but data.num_classes={self.num_classes}; "
                             "set data.num_classes=null to count the folders")
        keep = sources.subset_indices(len(folders["train"]), self.train_subset)
        if keep is not None:
            folders["train"] = Subset(folders["train"], keep.tolist())
        self._check_one_batch(len(folders["train"]))
        return folders

    # -- loaders --------------------------------------------------------------------------------

    @property
    def loader_kind(self) -> str:
        """``device`` or ``torch``: what ``auto`` resolves to on the current device."""
        if self.loader != "auto":
            return self.loader
        # In-memory datasets: batched augmentation in the training process beats worker
        # processes on the CPU too (Fashion-MNIST, 2 cores: 18 s against 73 s an epoch).
        return "device" if self.recipe.in_memory else "torch"

    def train_dataloader(self) -> DeviceLoader | DataLoader:
        return self._loader("train", training=True)

    def val_dataloader(self) -> DeviceLoader | DataLoader:
        return self._loader("val", training=False)

    def test_dataloader(self) -> DeviceLoader | DataLoader:
        return self._loader("test", training=False)

    def train_eval_dataloader(self) -> DeviceLoader | DataLoader | None:
        """The training images in order, without augmentation: for measuring training error."""
        if self.folders is not None:
            return None  # ImageNet: 1.28M images, the eval pass is not worth its hour
        return self._loader("train", training=False)

    def _loader(self, split_name: str, training: bool) -> DeviceLoader | DataLoader:
        if self.splits is None and self.folders is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        pin_memory = self.device.type == "cuda"
        if self.folders is not None:  # ImageNet: val doubles as test
            dataset = self.folders["train" if training else "val"]
            return make_dataloader(dataset, self.batch_size, shuffle=training, drop_last=training,
                                   seed=self.seed, num_workers=self.num_workers,
                                   pin_memory=pin_memory)
        split = getattr(self.splits, split_name)
        augment = training and self.augment
        crop_padding = self.crop_padding if augment else 0
        flip = self.recipe.flip and augment
        if self.loader_kind == "device":
            epoch_fn = batches_done_fn = None
            if self.trainer is not None:
                trainer = self.trainer
                epoch_fn = lambda: trainer.current_epoch  # noqa: E731
                # batches trained so far in this epoch, as the fit loop counts them
                batches_done_fn = (  # noqa: E731
                    lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed
                )
            return DeviceLoader(split, self.batch_size, self.mean, self.std, device=self.device,
                                shuffle=training, drop_last=training, crop_padding=crop_padding,
                                flip=flip, seed=self.seed, rank=self.rank,
                                world_size=self.world_size, epoch_fn=epoch_fn,
                                batches_done_fn=batches_done_fn)
        return torch_loader(split, self.batch_size, self.mean, self.std, shuffle=training,
                            drop_last=training, crop_padding=crop_padding, flip=flip,
                            seed=self.seed, num_workers=self.num_workers, pin_memory=pin_memory)


def build_datamodule(data_cfg: dict[str, Any] | DictConfig) -> ZooDataModule:
    """A :class:`ZooDataModule` from a data config (dict or DictConfig, e.g. ``cfg.data``)."""
    from omegaconf import DictConfig, OmegaConf

    cfg = OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) \
        else dict(data_cfg)
    name = cfg.get("name")
    if name not in RECIPES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    for key in MODEL_ONLY_KEYS:
        cfg.pop(key, None)
    accepted = list(inspect.signature(ZooDataModule.__init__).parameters)[1:]
    unknown = sorted(set(cfg) - set(accepted))
    if unknown:
        raise ValueError(f"unknown data config key(s) {unknown}; accepted: {', '.join(accepted)}")
    return ZooDataModule(**cfg)
