"""Predictions from raw images: a network carries the preprocessing it was trained with.

A trained network expects its inputs normalised with its dataset's mean and std, at its image
size and channel count; fed plain ``[0, 1]`` pixels it answers near chance without a word. So,
as torchvision's ``weights.transforms()`` does, the facts travel with the weights:

* a checkpoint of this project stores them in its hyperparameters (``dataset``: name, mean, std,
  image size, channels, class names; :func:`data_facts` reads them off the datamodule);
* ``zoo.create(name, pretrained=...)`` attaches them as ``net.preprocess`` for the community
  CIFAR-10 checkpoints and torchvision's ImageNet weights (see :mod:`zoo.weights.pretrained`).

One call turns raw images into predictions::

    model = zoo.load("run/checkpoints/last.ckpt")   # ZooModule, eval mode, weights only
    result = model.predict(images)                  # = zoo.weights.predict.predict(model, images)
    result.indices, result.probabilities, result.names

Pixels: uint8 (0..255), uint16 (0..65535) or float in [0, 1]; NaN or infinite pixels are refused.
Layouts (a list may mix them, and its images may differ in size):

=====================  =========================================================================
torch tensor           (H, W) one image; (C, H, W) one image; (N, C, H, W) a batch;
                       grey networks also (N, H, W), a batch of grey images
numpy array            the same, and channels-last: (H, W, C) one image, (N, H, W, C) a batch
PIL image              any mode; 16-bit grey (``I;16``, ``I``) keeps its 16 bits; alpha dropped
=====================  =========================================================================

C is 1 or 3. A shape that two layouts read differently is refused, saying how to pass it (a
(3, H, W) tensor to a grey network: one RGB image or three grey ones?; a (28, 28, 3) array to
a grey network: one RGB image or 28 grey ones?); nothing is guessed. Images of another size are
resized (ImageNet: short side to 256/224 of the crop, then a centre crop, as the evaluation
pipeline does); grey images are repeated to RGB and RGB images turned grey when the network
wants the other. The caller's images are never modified.
"""

from __future__ import annotations

import math
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

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # Pillow's modes of 16-bit PNG/TIFF


def _positive_finite(values: Any, what: str) -> tuple[float, ...]:
    """``values`` as floats, each finite and > 0 (a zero std would divide by zero)."""
    try:
        numbers = tuple(float(value) for value in values)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be numbers, got {cut(values)}") from None
    if not all(math.isfinite(n) and n > 0 for n in numbers):
        raise ValueError(f"{what} must be finite numbers > 0, got {cut(values)}")
    return numbers


def cut(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class Preprocess:
    """Raw images -> the normalised float32 (N, C, H, W) batch a network was trained on.

    ``resize_size``: resize the short side to it, then centre-crop ``image_size`` (ImageNet);
    None: resize any other size straight to ``image_size``. The caller's images are never
    modified (every step works on a copy).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], image_size: int,
                 in_channels: int, resize_size: int | None = None,
                 class_names: Sequence[str] | None = None, name: str | None = None) -> None:
        self.std = _positive_finite(std, "std")
        self.image_size, self.in_channels = (int(n) for n in _positive_finite(
            (image_size, in_channels), "image_size and in_channels"))
        self.mean = tuple(float(m) for m in mean)
        if not all(math.isfinite(m) for m in self.mean):
            raise ValueError(f"mean must be finite numbers, got {cut(mean)}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(f"mean and std need {self.in_channels} values (one per channel), "
                             f"got {cut(mean)} and {cut(std)}")
        self.resize_size = int(_positive_finite([resize_size], "resize_size")[0]) \
            if resize_size else None
        self.class_names = [str(n) for n in class_names] if class_names is not None else None
        self.name = name

    @classmethod
    def from_facts(cls, facts: dict[str, Any] | None) -> Preprocess:
        if not facts:
            raise ValueError("this network carries no data facts (a checkpoint written before "
                             "they were stored?); pass "
                             "preprocess=zoo.weights.predict.Preprocess(mean=..., std=..., "
                             "image_size=..., in_channels=...) with its data config's values")
        try:
            return cls(facts["mean"], facts["std"], facts["image_size"], facts["in_channels"],
                       facts.get("resize_size"), facts.get("class_names"), facts.get("name"))
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            raise ValueError(
                f"this network's data facts are unusable ({error}); pass "
                "preprocess=zoo.weights.predict.Preprocess(mean=..., std=..., image_size=..., "
                "in_channels=...) with the values of its data config (configs/data/)") from None

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
        if batch.shape[0] == 0 or 0 in batch.shape[2:]:
            raise ValueError(f"no pixels to classify: the images are shaped "
                             f"{tuple(batch.shape)} as (N, C, H, W)")
        if device is not None:
            batch = batch.to(device)  # uint8 travels at a quarter of float32's size
        batch = self._to_unit_range(batch)  # a new tensor: the in-place steps below are safe
        batch = self._match_channels(batch)
        batch = self._resize(batch)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
        # the same float32 operations as the loaders: x / 255, minus mean, divided by std
        return batch.sub_(mean).div_(std)

    def _as_nchw(self, images: Any) -> torch.Tensor:
        from PIL import Image

        if isinstance(images, Image.Image):
            return self._from_pil(images)
        from_numpy = isinstance(images, np.ndarray)
        if from_numpy:
            try:  # a copy: read-only arrays need no warning, and the caller's array is untouched
                images = torch.from_numpy(np.array(images, copy=True))
            except TypeError:
                raise TypeError(f"numpy images must hold numbers, got dtype {images.dtype}") \
                    from None
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be tensors, numpy arrays or PIL images (or a list of "
                            f"them), got {type(images).__name__}")
        return self._one_reading(images.detach(), from_numpy)

    def _readings(self, images: torch.Tensor, from_numpy: bool) -> dict[str, torch.Tensor]:
        """Every layout ``images`` could be in, as (N, C, H, W) views (see the module's table)."""
        grey, dims = self.in_channels == 1, images.ndim
        readings: dict[str, Any] = {}
        if dims == 2:
            readings["(H, W)"] = lambda x: x[None, None]
        elif dims == 3:
            readings["(C, H, W)"] = lambda x: x[None]
            if grey:  # a batch of grey images, as datasets of grey images hold them
                readings["(N, H, W)"] = lambda x: x[:, None]
            if from_numpy:  # numpy's images are channels-last (PIL, OpenCV, matplotlib)
                readings["(H, W, C)"] = lambda x: x.permute(2, 0, 1)[None]
        elif dims == 4:
            readings["(N, C, H, W)"] = lambda x: x
            if from_numpy:
                readings["(N, H, W, C)"] = lambda x: x.permute(0, 3, 1, 2)
        fitting = {name: read(images) for name, read in readings.items()}
        return {name: batch for name, batch in fitting.items()
                if batch.shape[1] in (1, 3, self.in_channels)}

    def _one_reading(self, images: torch.Tensor, from_numpy: bool) -> torch.Tensor:
        """The one layout that fits ``images``; two that give different batches are refused."""
        shape, kind = tuple(images.shape), "numpy array" if from_numpy else "tensor"
        readings = self._readings(images, from_numpy)
        distinct: dict[str, torch.Tensor] = {}
        for name, batch in readings.items():
            if not any(batch.shape == seen.shape and torch.equal(batch, seen)
                       for seen in distinct.values()):
                distinct[name] = batch
        if len(distinct) == 1:
            return next(iter(distinct.values()))
        if distinct:
            meanings = " or ".join(f"as {name} {b.shape[0]} image(s) of {b.shape[1]} channel(s)"
                                   for name, b in distinct.items())
            shapes = " or ".join(str(tuple(b.shape)) for b in distinct.values())
            raise ValueError(
                f"a {kind} shaped {shape} is ambiguous for a {self.in_channels}-channel network: "
                f"{meanings}; pass an (N, C, H, W) tensor, {shapes}")
        raise ValueError(
            f"a {kind} shaped {shape} is not an image layout the zoo reads: "
            f"{self._layouts(from_numpy)}, with 1 or 3 channels (see zoo.weights.predict)")

    def _layouts(self, from_numpy: bool) -> str:
        layouts = ["(H, W)", "(C, H, W)"]
        layouts += ["(N, H, W)"] if self.in_channels == 1 else []
        layouts += ["(H, W, C)"] if from_numpy else []
        layouts += ["(N, C, H, W)"] + (["(N, H, W, C)"] if from_numpy else [])
        return ", ".join(layouts)

    def _from_pil(self, image: Any) -> torch.Tensor:
        from torchvision.transforms.functional import pil_to_tensor

        if image.mode in SIXTEEN_BIT_MODES:  # convert("L") would clip every value above 255
            pixels = np.array(image, dtype=np.int64)
            if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
                raise ValueError(f"a PIL image of mode {image.mode} holds values outside "
                                 "0..65535; the zoo reads 32-bit integer images as 16-bit")
            return torch.from_numpy((pixels / 65535).astype(np.float32))[None, None]
        if image.mode == "F":  # 32-bit float pixels: the [0, 1] rule of float tensors applies
            return torch.from_numpy(np.array(image, dtype=np.float32))[None, None]
        # other modes (P, 1, LA, RGBA, CMYK, ...) as Pillow converts them; alpha is dropped
        return pil_to_tensor(image.convert("L" if self.in_channels == 1 else "RGB"))[None]

    @staticmethod
    def _to_unit_range(batch: torch.Tensor) -> torch.Tensor:
        if batch.dtype == torch.uint8:
            return batch.float().div_(255)
        if batch.dtype == torch.uint16:
            return batch.float().div_(65535)
        if not batch.is_floating_point():
            raise TypeError(f"images must be uint8 (0..255), uint16 (0..65535) or float in "
                            f"[0, 1], got {batch.dtype}; convert with images.to(torch.uint8)")
        batch = batch.to(torch.float32, copy=True)
        finite = torch.isfinite(batch).flatten(1).all(1)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten().tolist()
            raise ValueError(f"image(s) {cut(bad)} of the batch hold NaN or infinite pixels; "
                             "replace them (torch.nan_to_num) or leave those images out")
        low, high = batch.aminmax()
        if low < 0 or high > 1:
            raise ValueError(f"float images must hold values in [0, 1], found {float(low):.3g}.."
                             f"{float(high):.3g}; pass 0..255 pixels as uint8, not float")
        return batch


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
                     "not loaded with pretrained=...); pass "
                     "preprocess=zoo.weights.predict.Preprocess(...)")


def check_finite_weights(model: nn.Module) -> None:
    """Refuse a network whose weights or running statistics hold NaN or infinity: it would answer
    class 0 with NaN probabilities for every image."""
    tensors = [(name, t) for name, t in (*model.named_parameters(), *model.named_buffers())
               if t.is_floating_point()]
    if not tensors:
        return
    finite = torch.stack([torch.isfinite(t).all() for _, t in tensors])
    if not bool(finite.all()):  # one host sync for the whole network
        name = tensors[int((~finite).nonzero()[0])][0]
        raise ValueError(f"the network's {name} holds NaN or infinite values (saved by a run that "
                         "diverged?); load an earlier checkpoint of the run (best-*.ckpt)")


def predict(model: nn.Module, images: Any, preprocess: Preprocess | None = None,
            batch_size: int = 256) -> Predictions:
    """Classify raw images with ``model`` in eval mode; its train/eval mode is restored after.

    ``images`` (never modified): see the module's table of layouts. Raises ValueError, with what
    to do, for NaN or infinite pixels, non-finite weights, unusable data facts, no pixels, an
    ambiguous layout, or a ``batch_size`` that is not a whole number > 0.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number > 0, got {cut(batch_size)}")
    preprocess = preprocess or preprocessing_of(model)
    check_finite_weights(model)
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
    finite = torch.isfinite(logits).all(1)
    if not bool(finite.all()):  # finite inputs and weights, yet an overflow inside the network
        bad = (~finite).nonzero().flatten().tolist()
        raise ValueError(f"the network's outputs for image(s) {cut(bad)} are NaN or infinite "
                         "(an overflow inside it); predict in float32, on the CPU if need be")
    indices = logits.argmax(1)  # of the logits, as the test accuracy counts them
    names = preprocess.class_names
    return Predictions(indices, logits.softmax(1),
                       [names[i] if names and i < len(names) else str(i)
                        for i in indices.tolist()])
