"""Predictions from raw images: a network carries the preprocessing it was trained with.

A trained network expects its inputs normalised with its dataset's mean and std, at its image
size and channel count; fed plain ``[0, 1]`` pixels it answers near chance without a word. So,
as torchvision's ``weights.transforms()`` does, the facts travel with the weights:

* a checkpoint of this project stores them in its hyperparameters (``dataset``: name, mean, std,
  image size, channels, class names; :func:`data_facts` reads them off the datamodule);
* ``zoo.create(name, pretrained=...)`` attaches them as ``net.preprocess`` for the community
  CIFAR-10 checkpoints and torchvision's ImageNet weights (see :mod:`zoo.pretrained`).

One call turns raw images into predictions::

    module = ZooModule.load_from_checkpoint("run/checkpoints/last.ckpt")
    result = module.predict(images)   # = zoo.predict.predict(module, images)
    result.indices, result.probabilities, result.names

``images``: uint8 tensors (0..255) or float tensors in [0, 1], shaped (H, W), (N, H, W) for
grey images, (C, H, W) or (N, C, H, W); PIL images; numpy arrays shaped like the tensors; or a
list of any of these (sizes may differ). Images of another size are resized (ImageNet: short
side to 256/224 of the crop, then a centre crop, as the evaluation pipeline does); grey images
are repeated to RGB and RGB images turned grey when the network wants the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

# Class names where the dataset files do not hold them (Xiao et al. 2017, Table 1; the CIFAR-10
# ``batches.meta``, used when that file cannot be read).
KNOWN_CLASS_NAMES: dict[str, list[str]] = {
    "digits": [str(digit) for digit in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
}
CIFAR_META = {"cifar10": ("batches.meta", b"label_names"),
              "cifar100": ("meta", b"fine_label_names")}
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's, over the ImageNet training set
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------- data facts


def class_names_of(datamodule: Any) -> list[str] | None:
    """The dataset's class names in label order, or None where they cannot be known."""
    folders = getattr(datamodule, "folders", None)
    if folders:  # ImageNet-format: the class folders, sorted, are the labels
        names = list(folders["val"].classes)
    else:
        names = _cifar_meta_names(datamodule) or KNOWN_CLASS_NAMES.get(datamodule.name)
    return names if names is not None and len(names) == datamodule.num_classes else None


def _cifar_meta_names(datamodule: Any) -> list[str] | None:
    if datamodule.name not in CIFAR_META:
        return None
    from zoo.data import sources

    filename, key = CIFAR_META[datamodule.name]
    try:
        meta = sources._unpickle(sources.locate(datamodule.name, datamodule.root) / filename)
        return [name.decode() if isinstance(name, bytes) else str(name) for name in meta[key]]
    except (OSError, ValueError, KeyError, TypeError):  # missing or foreign meta: known list
        return None


def data_facts(datamodule: Any) -> dict[str, Any]:
    """What a checkpoint needs to preprocess raw images as its training did (names, numbers)."""
    image_size = int(datamodule.image_size)
    return {
        "name": datamodule.name,
        "mean": [float(m) for m in datamodule.mean],
        "std": [float(s) for s in datamodule.std],
        "image_size": image_size,
        "in_channels": int(datamodule.in_channels),
        # ImageNet evaluation resizes the short side to 256/224 of the crop, then crops the centre
        "resize_size": round(image_size * 256 / 224) if datamodule.name == "imagenet" else None,
        "class_names": class_names_of(datamodule),
    }


# ---------------------------------------------------------------------------- preprocessing


class Preprocess:
    """Raw images -> the normalised float32 (N, C, H, W) batch a network was trained on.

    ``resize_size``: resize the short side to it, then centre-crop ``image_size`` (ImageNet);
    None: resize any other size straight to ``image_size``.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], image_size: int,
                 in_channels: int, resize_size: int | None = None,
                 class_names: Sequence[str] | None = None, name: str | None = None) -> None:
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean and std need {in_channels} values (one per channel)")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.image_size, self.in_channels = int(image_size), int(in_channels)
        self.resize_size = int(resize_size) if resize_size else None
        self.class_names = list(class_names) if class_names is not None else None
        self.name = name

    @classmethod
    def from_facts(cls, facts: dict[str, Any] | None) -> Preprocess:
        if not facts:
            raise ValueError("this network carries no data facts (a checkpoint written before "
                             "they were stored?); pass preprocess=zoo.predict.Preprocess(mean=..., "
                             "std=..., image_size=..., in_channels=...) with its data config's "
                             "values")
        return cls(facts["mean"], facts["std"], facts["image_size"], facts["in_channels"],
                   facts.get("resize_size"), facts.get("class_names"), facts.get("name"))

    def __repr__(self) -> str:
        resize = f"resize_size={self.resize_size}, " if self.resize_size else ""
        return (f"Preprocess({self.name or 'images'}: {resize}image_size={self.image_size}, "
                f"in_channels={self.in_channels}, mean={self.mean}, std={self.std})")

    def __call__(self, images: Any, device: torch.device | str | None = None) -> torch.Tensor:
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("no images given (an empty list)")
            # one at a time: the images of a list may differ in size
            return torch.cat([self(image, device) for image in images])
        batch = self._as_nchw(images)
        if device is not None:
            batch = batch.to(device)  # uint8 travels at a quarter of float32's size
        batch = self._to_unit_range(batch)
        batch = self._match_channels(batch)
        batch = self._resize(batch)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
        # the same float32 operations as the loaders: x / 255, minus mean, divided by std
        return batch.sub_(mean).div_(std)

    def _as_nchw(self, images: Any) -> torch.Tensor:
        from PIL import Image

        if isinstance(images, Image.Image):
            from torchvision.transforms.functional import pil_to_tensor

            return pil_to_tensor(images.convert("L" if self.in_channels == 1 else "RGB"))[None]
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be tensors, numpy arrays or PIL images (or a list of "
                            f"them), got {type(images).__name__}")
        if images.ndim == 2:  # one grey image (H, W)
            return images[None, None]
        if images.ndim == 3:  # grey nets: a batch (N, H, W); colour nets: one image (C, H, W)
            return images[:, None] if self.in_channels == 1 else images[None]
        if images.ndim == 4:
            return images
        raise ValueError(f"images must be shaped (H, W), (N, H, W), (C, H, W) or (N, C, H, W), "
                         f"got {tuple(images.shape)}")

    @staticmethod
    def _to_unit_range(batch: torch.Tensor) -> torch.Tensor:
        if batch.dtype == torch.uint8:
            return batch.float().div_(255)
        if not batch.is_floating_point():
            raise TypeError(f"images must be uint8 (0..255) or float in [0, 1], got {batch.dtype}; "
                            "convert with images.to(torch.uint8)")
        low, high = batch.aminmax()
        if low < 0 or high > 1:
            raise ValueError(f"float images must hold values in [0, 1], found {float(low):.3g}.."
                             f"{float(high):.3g}; pass 0..255 pixels as uint8, not float")
        return batch.float()

    def _match_channels(self, batch: torch.Tensor) -> torch.Tensor:
        channels = batch.shape[1]
        if channels == self.in_channels:
            return batch
        if channels == 1 and self.in_channels == 3:
            return batch.expand(-1, 3, -1, -1).contiguous()
        if channels == 3 and self.in_channels == 1:
            from torchvision.transforms.functional import rgb_to_grayscale

            return rgb_to_grayscale(batch)
        raise ValueError(f"images have {channels} channels; this network takes {self.in_channels} "
                         "(1 or 3 are converted)")

    def _resize(self, batch: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import functional as TF

        size = self.image_size
        if self.resize_size is not None:
            batch = TF.resize(batch, self.resize_size, antialias=True)
            return TF.center_crop(batch, [size, size])
        if tuple(batch.shape[-2:]) != (size, size):
            batch = TF.resize(batch, [size, size], antialias=True)
        return batch


# ---------------------------------------------------------------------------- predicting


@dataclass(frozen=True)
class Predictions:
    """``indices`` (N,) int64 predicted classes, ``probabilities`` (N, classes) softmax,
    ``names`` the predicted class name of each image (the index as text where unknown)."""

    indices: torch.Tensor
    probabilities: torch.Tensor
    names: list[str]

    def __len__(self) -> int:
        return len(self.indices)


def preprocessing_of(model: nn.Module) -> Preprocess:
    """The preprocessing a zoo module or a pretrained network carries."""
    if callable(getattr(model, "transforms", None)):
        return model.transforms()  # ZooModule: from the checkpoint's hyperparameters
    preprocess = getattr(model, "preprocess", None)
    if isinstance(preprocess, Preprocess):
        return preprocess
    raise ValueError(f"{type(model).__name__} carries no preprocessing (trained from scratch, "
                     "not loaded with pretrained=...); pass preprocess=zoo.predict.Preprocess(...)")


def predict(model: nn.Module, images: Any, preprocess: Preprocess | None = None,
            batch_size: int = 256) -> Predictions:
    """Classify raw images with ``model`` in eval mode; its train/eval mode is restored after."""
    preprocess = preprocess or preprocessing_of(model)
    device = next(model.parameters()).device
    batch = preprocess(images)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = torch.cat([model(chunk.to(device)).float().cpu()
                                for chunk in batch.split(batch_size)])
    finally:
        model.train(was_training)
    indices = logits.argmax(1)  # of the logits, as the test accuracy counts them
    names = preprocess.class_names
    return Predictions(indices, logits.softmax(1),
                       [names[i] if names else str(i) for i in indices.tolist()])
