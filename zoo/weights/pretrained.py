"""Reading weight files safely, and loading weights people already have into the zoo's networks.

``create(name, pretrained=...)`` (exported as ``zoo.create``) builds a network with
:func:`zoo.models.create` and loads ``pretrained`` into it with :func:`load_pretrained`, the one
loader that training runs use too. ``pretrained`` is

* a torchvision state-dict file (``resnet50-0676ba61.pth``; DenseNet files with torchvision's
  old ``norm.1``-style keys included);
* a community CIFAR checkpoint (``{"state_dict": {"module.conv1.weight": ...}, "best_prec1"}``,
  the format of akamaster/pytorch_resnet_cifar10);
* a Lightning checkpoint of this project (``{"state_dict": {"net.conv1.weight": ...}, ...}``);
* ``"fashion_mnist"``: the zoo's own trained weights, shipped inside the package with their
  SHA-256 (:mod:`zoo.weights`, ``docs/WEIGHTS.md``);
* ``"imagenet"``: torchvision's published ImageNet weights (``IMAGENET1K_V1``) for that name,
  read from the torch hub cache, ``torch.hub.get_dir()/checkpoints/<file>``. A missing file is
  downloaded; offline, loading fails within seconds naming the file and where to put it.
* ``"cifar10"``: the community CIFAR-10 weights of ResNet-20/32/44/56/110/1202 published in
  akamaster/pytorch_resnet_cifar10 (:data:`CIFAR10_WEIGHTS`), from the same cache, the same way;
  the file's SHA-256 must begin with the 8 hex digits in its name.

Files are read with ``torch.load(weights_only=True)`` (:func:`safe_load`, which
:mod:`zoo.weights.checkpoint` uses too): loading never runs code from the file, and a file that
needs pickled code is refused (:class:`UnsafeCheckpointError`). This module imports no Lightning, so
that ``import zoo`` stays light.

A checkpoint whose classifier has another number of classes loads everything else and says so
in one log line (fine-tuning); any other mismatch is an :class:`ArchitectureMismatchError`
listing the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from zoo import models, weights
from zoo.models.densenet import remap_legacy_keys
from zoo.weights.files import (  # the file-reading layer; its names are this module's too
    ArchitectureMismatchError,
    CheckpointError,
    PretrainedUnavailableError,
    UnsafeCheckpointError,
    is_url,
    local_copy,
    safe_load,
    what_is_there,
)
from zoo.weights.predict import IMAGENET_MEAN, IMAGENET_STD, KNOWN_CLASS_NAMES, Preprocess

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0  # seconds to resolve, connect and get headers; offline fails here
_MAX_LISTED = 8  # keys listed per category in a mismatch error


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The network state dict stored in ``path``, with wrapper prefixes removed."""
    return _state_dict_of(safe_load(path), Path(path))


def _state_dict_of(content: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        state_dict = content["state_dict"]  # community CIFAR and Lightning checkpoints
    elif (
        isinstance(content, dict)
        and content
        and all(isinstance(value, torch.Tensor) for value in content.values())
    ):
        state_dict = content  # a bare state dict (torchvision)
    else:
        found = (
            f"a dict with keys {sorted(map(str, content))[:_MAX_LISTED]}"
            if isinstance(content, dict)
            else type(content).__name__
        )
        raise CheckpointError(
            f"{path} holds no state dict: expected a state dict or {{'state_dict': ...}}, "
            f"found {found}"
        )
    state_dict = dict(state_dict)
    if any(key.startswith("net.") for key in state_dict):
        # A Lightning checkpoint of this project: the LightningModule holds the network as
        # ``self.net``; anything else in it (losses, metrics) is not the network's.
        state_dict = {k[4:]: v for k, v in state_dict.items() if k.startswith("net.")}
    for prefix in ("module.", "_orig_mod."):  # (Distributed)DataParallel, torch.compile
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: state dict entries are not tensors: {not_tensors[:5]}")
    return state_dict


# ---------------------------------------------------------------- torchvision's published weights


def imagenet_weights_url(name: str) -> str:
    """URL of torchvision's ``IMAGENET1K_V1`` weights for ``name`` (e.g. ``resnet50``)."""
    published = [n for n in torchvision.models.list_models() if n.startswith(("resnet", "dense"))]
    if name not in published:
        raise CheckpointError(
            f"torchvision publishes no ImageNet weights for {name!r}; "
            f"pretrained='imagenet' works for: {', '.join(sorted(published))}"
        )
    return torchvision.models.get_model_weights(name)["IMAGENET1K_V1"].url


def imagenet_weights_file(name: str) -> Path:
    """Where the torch hub cache keeps the weights (download them here when offline)."""
    filename = imagenet_weights_url(name).rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _check_reachable(url: str, timeout_s: float) -> None:
    """Raise unless the server of ``url`` answers within ``timeout_s``.

    torch.hub's download opens the URL without a timeout, and name resolution ignores socket
    timeouts anyway: offline it could wait for minutes. So a HEAD request goes first, in a daemon
    thread that is abandoned if it does not answer in time, and an offline machine fails here.
    """
    errors: queue.Queue[BaseException | None] = queue.Queue()

    def ask() -> None:
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "torch.hub"})
        try:
            urllib.request.urlopen(request, timeout=timeout_s).close()
            errors.put(None)
        except urllib.error.HTTPError:  # the server answered: the download reports its error
            errors.put(None)
        except Exception as error:  # noqa: BLE001 - reported to the waiting thread
            errors.put(error)

    threading.Thread(target=ask, daemon=True).start()
    try:
        error = errors.get(timeout=timeout_s)
    except queue.Empty:
        raise TimeoutError(f"no answer within {timeout_s:.0f} s") from None
    if error is not None:
        raise error


def _download(url: str, destination: Path) -> None:
    # Only the start is bounded: a transfer that stalls once started waits as torch.hub does
    # (it has no read timeout; Ctrl-C stops it, and no partial file is left).
    _check_reachable(url, CONNECT_TIMEOUT_S)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # torchvision's file names end in the first hex digits of the file's sha256
    expected = re.search(r"-([a-f0-9]{8,})\.", destination.name)
    try:  # into a temporary file beside the destination, moved into place when complete
        torch.hub.download_url_to_file(url, str(destination), progress=False,
                                       hash_prefix=expected.group(1) if expected else None)
    except RuntimeError as error:  # torch.hub's "invalid hash value"
        raise CheckpointError(f"download of {url} is corrupt ({error})") from None


def fetch_imagenet_weights(name: str) -> Path:
    """The cached file of torchvision's weights for ``name``; download it if missing."""
    return fetch_published_weights(name, "imagenet")


# ---------------------------------------------------------------- community CIFAR-10 weights

# Yerlan Idelbayev, akamaster/pytorch_resnet_cifar10 (BSD-2-Clause): He et al. 2015's CIFAR
# ResNets (option-A shortcuts) trained on CIFAR-10, test error 8.27/7.37/6.90/6.61/6.32/6.18%
# as published. The 8 hex digits in each name are the first of the file's SHA-256.
CIFAR10_WEIGHTS = {
    "resnet20": "resnet20-12fca82f.th",
    "resnet32": "resnet32-d509ac18.th",
    "resnet44": "resnet44-014dd654.th",
    "resnet56": "resnet56-4bfd9763.th",
    "resnet110": "resnet110-1d1ed7c2.th",
    "resnet1202": "resnet1202-f3b1deed.th",
}
CIFAR10_WEIGHTS_URL = ("https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/"
                       "pretrained_models/{file}")
PUBLISHED = {"imagenet": "torchvision's ImageNet weights", "cifar10": "community CIFAR-10 weights"}


def cifar10_weights_file(name: str) -> Path:
    """Where the torch hub cache keeps the CIFAR-10 weights of ``name`` (put them here offline)."""
    if name not in CIFAR10_WEIGHTS:
        raise CheckpointError(f"no published CIFAR-10 weights for {name!r}; pretrained='cifar10' "
                              f"works for: {', '.join(CIFAR10_WEIGHTS)}")
    return Path(torch.hub.get_dir()) / "checkpoints" / CIFAR10_WEIGHTS[name]


def check_hash_prefix(path: Path) -> None:
    """The file's SHA-256 must begin with the hex digits of its name (``resnet20-12fca82f.th``):
    a truncated or replaced file in the cache is refused, not loaded."""
    expected = re.search(r"-([a-f0-9]{8,})\.", path.name)
    if expected is None:
        return
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(expected.group(1)):
        raise CheckpointError(
            f"{path} is not the published file: its SHA-256 begins {digest.hexdigest()[:8]}, not "
            f"{expected.group(1)}; delete it and download it again")


def fetch_published_weights(name: str, source: str) -> Path:
    """The cached file of ``source``'s (``imagenet``, ``cifar10``) weights for ``name``; download
    it if missing, check the hash in its name."""
    if source == "imagenet":
        url, destination = imagenet_weights_url(name), imagenet_weights_file(name)
    else:
        destination = cifar10_weights_file(name)
        url = CIFAR10_WEIGHTS_URL.format(file=destination.name)
    if destination.is_file():
        if source == "cifar10":  # a file placed by hand; torchvision's come from torch.hub
            check_hash_prefix(destination)
        return destination
    log.info("downloading %s to %s", url, destination)
    try:
        _download(url, destination)
    except (OSError, TimeoutError) as error:  # URLError, socket.timeout are OSErrors
        raise PretrainedUnavailableError(
            f"{PUBLISHED[source]} for {name} are not in the torch hub cache and cannot be "
            f"downloaded ({error}). Place {destination.name} (from {url}) at {destination} "
            f"(the cache is torch.hub.get_dir(); set TORCH_HOME to move it)."
        ) from None
    return destination


# ---------------------------------------------------------------- loading into a network


def _classifier_name(net: nn.Module) -> str | None:
    linears = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f", ... and {more} more" if more > 0 else "")


def _trained_as(content: Any) -> str:
    """The model options a zoo checkpoint was trained with, as overrides to repeat (e.g. the
    narrow ``model.widths`` of the 1000-layer experiments); empty for other files."""
    hyper_parameters = content.get("hyper_parameters") if isinstance(content, dict) else None
    model = hyper_parameters.get("model") if isinstance(hyper_parameters, dict) else None
    if not isinstance(model, dict) or "name" not in model:
        return ""
    skipped = {"name", "pretrained", "compile", "memory_efficient"}
    options = " ".join(f"model.{key}={value}".replace(" ", "") for key, value in model.items()
                       if key not in skipped)
    return f". It was trained as model={model['name']} {options}".rstrip()


def looks_like_a_name(source: str) -> bool:
    """``"cifar100"`` or ``"fashion-mnist"``, not ``"runs/last.ckpt"``: no folder, no suffix."""
    return not any(sep in source for sep in ("/", os.sep, ".")) and bool(source)


def unknown_weights_name(source: str) -> str:
    """One line for a ``pretrained=`` that is neither a file nor a weights name."""
    import difflib

    names = [*weights.datasets(), *sorted(PUBLISHED)]
    close = difflib.get_close_matches(source.lower().replace("-", "_"), names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"pretrained={source!r} is neither a checkpoint file nor a weights name; {hint}"
            f"names: {', '.join(names)} (python -m zoo.models --weights lists the shipped ones)")


def load_pretrained(net: nn.Module, name: str, source: str | os.PathLike[str]) -> nn.Module:
    """Load ``source`` (a checkpoint path, ``"imagenet"``, ``"cifar10"`` or a dataset of the zoo's
    shipped weights) into ``net`` (built as ``name``)."""
    if not isinstance(source, (str, os.PathLike)) or not str(source):
        raise CheckpointError("pretrained must be a checkpoint path, 'imagenet', 'cifar10' or "
                              f"'fashion_mnist', got {source!r}")
    if source in PUBLISHED:
        path = fetch_published_weights(name, source)
    elif source in weights.datasets():  # the zoo's own, shipped in the package (zoo.weights)
        path = weights.weights_file(name, str(source))
    else:  # a path, or an http(s) URL that safe_load reads as data
        path = source if is_url(source) else Path(source)
        if isinstance(path, Path) and not path.exists() and looks_like_a_name(str(source)):
            raise CheckpointError(unknown_weights_name(str(source)))
    content = safe_load(path)
    from zoo.weights.hparams import (
        check_hyper_parameters,  # it imports zoo.weights.predict's Preprocess
    )

    check_hyper_parameters(content, path)
    state_dict = remap_legacy_keys(_state_dict_of(content, path))

    own = net.state_dict()
    # Checkpoints written before BN counted its batches lack num_batches_tracked; BN fills it.
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    misshapen = [k for k in state_dict if k in own and state_dict[k].shape != own[k].shape]

    classifier = _classifier_name(net)
    head_keys = {f"{classifier}.weight", f"{classifier}.bias"}
    if not missing and not unexpected and misshapen and set(misshapen) <= head_keys:
        found = state_dict[f"{classifier}.weight"].shape[0]
        wanted = own[f"{classifier}.weight"].shape[0]
        for key in head_keys:
            state_dict.pop(key, None)
        net.load_state_dict(state_dict, strict=False)
        log.warning("%s: loaded %s except the classifier '%s' (%d classes in the checkpoint, %d "
                    "in the network), which keeps its fresh initialisation", name, path,
                    classifier, found, wanted)
        return net
    if missing or unexpected or misshapen:
        shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in misshapen]
        problems = [
            f"missing ({len(missing)}): {_listed(missing)}" if missing else "",
            f"unexpected ({len(unexpected)}): {_listed(unexpected)}" if unexpected else "",
            f"shape differs ({len(shapes)}): {_listed(shapes)}" if shapes else "",
        ]
        raise ArchitectureMismatchError(
            f"{path} does not fit {name} (a checkpoint of another architecture or options?); "
            + "; ".join(p for p in problems if p) + _trained_as(content)
        )
    net.load_state_dict(state_dict, strict=True)
    num_classes = own[f"{classifier}.weight"].shape[0] if classifier else 0
    preprocess = known_preprocessing(name, content, num_classes)
    if preprocess is not None:
        net.preprocess = preprocess  # what zoo.weights.predict.predict(net, images) normalises with
    return net


def known_preprocessing(name: str, content: Any, num_classes: int) -> Any:
    """The preprocessing the loaded weights were trained with, where it is known.

    A checkpoint of this project stores its data facts; akamaster's CIFAR-10 ResNets (a dict
    with ``best_prec1``) normalised with ImageNet's mean and std (its README and trainer.py);
    torchvision's ImageNet weights come with ``weights.transforms()`` and category names.
    """
    if not isinstance(content, dict):
        return None
    facts = (content.get("hyper_parameters") or {}).get("dataset")
    if isinstance(facts, dict):
        return Preprocess.from_facts(facts)
    if "best_prec1" in content and num_classes == 10:
        return Preprocess(IMAGENET_MEAN, IMAGENET_STD, image_size=32, in_channels=3,
                          class_names=KNOWN_CLASS_NAMES["cifar10"], name="cifar10")
    if "state_dict" not in content and num_classes == 1000:  # a bare torchvision state dict
        try:
            weights = torchvision.models.get_model_weights(name)["IMAGENET1K_V1"]
        except (ValueError, KeyError):  # not a torchvision name (plain18, ...)
            return None
        tv = weights.transforms()
        return Preprocess(tv.mean, tv.std, image_size=tv.crop_size[0], in_channels=3,
                          resize_size=tv.resize_size[0], class_names=weights.meta["categories"],
                          name="imagenet")
    return None


# ---------------------------------------------------------------- zoo.create


def create(
    name: str,
    num_classes: int | None = None,
    in_channels: int | None = None,
    pretrained: str | os.PathLike[str] | None = None,
    **options: Any,
) -> nn.Module:
    """Build a network by name (:func:`zoo.models.create`) and load ``pretrained`` into it.

    ``pretrained``: a checkpoint path, ``"imagenet"`` or ``"cifar10"`` (see the module's
    docstring), or a dataset the zoo ships its own weights for (``"fashion_mnist"``,
    :mod:`zoo.weights`; classes, channels and widths then default to the weights'). The other
    arguments are :func:`zoo.models.create`'s (``in_channels`` 3 when unset). This is
    ``zoo.create``.
    """
    if isinstance(pretrained, str) and pretrained in weights.datasets():
        num_classes, in_channels, options = weights.creation_arguments(
            name, pretrained, num_classes, in_channels, options)
    in_channels = 3 if in_channels is None else in_channels
    net = models.create(name, num_classes=num_classes, in_channels=in_channels, **options)
    if pretrained:
        load_pretrained(net, name, pretrained)
    return net


__all__ = [
    "CIFAR10_WEIGHTS",
    "ArchitectureMismatchError",
    "CheckpointError",
    "PretrainedUnavailableError",
    "UnsafeCheckpointError",
    "cifar10_weights_file",
    "create",
    "fetch_imagenet_weights",
    "fetch_published_weights",
    "imagenet_weights_file",
    "imagenet_weights_url",
    "is_url",
    "load_pretrained",
    "local_copy",
    "read_checkpoint",
    "safe_load",
    "what_is_there",
]
