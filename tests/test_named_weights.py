"""Published weights by name: ``pretrained="cifar10"`` (akamaster's CIFAR-10 ResNets) through the
torch hub cache, with the SHA-256 prefix of the file name checked, and one line when the file is
neither cached nor downloadable. The files are made by the tests (tests/community_weights.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from community_weights import write_akamaster_file

import zoo
from zoo.weights import pretrained
from zoo.weights.predict import KNOWN_CLASS_NAMES
from zoo.weights.pretrained import CheckpointError, PretrainedUnavailableError


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache of the test's own; returns its checkpoints/ folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def no_download(*args: object) -> None:
    raise AssertionError("a cached file must be used without a download")


def test_the_published_files_and_their_url() -> None:
    assert list(pretrained.CIFAR10_WEIGHTS) == [f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202)]
    assert pretrained.CIFAR10_WEIGHTS["resnet56"] == "resnet56-4bfd9763.th"
    assert pretrained.CIFAR10_WEIGHTS_URL.format(file="resnet20-12fca82f.th") == (
        "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
        "resnet20-12fca82f.th")


def test_cifar10_weights_by_name_load_from_the_hub_cache(
    hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = write_akamaster_file(hub, 20)  # its name carries its own hash, as published
    monkeypatch.setitem(pretrained.CIFAR10_WEIGHTS, "resnet20", cached.name)
    monkeypatch.setattr(pretrained, "_download", no_download)
    stored = torch.load(cached, weights_only=True)["state_dict"]
    for net in (zoo.create("resnet20", pretrained="cifar10"),
                zoo.create("resnet20", num_classes=10, in_channels=3, pretrained="cifar10")):
        assert torch.equal(net.layer3[2].bn2.running_var, stored["module.layer3.2.bn2.running_var"])
        assert torch.equal(net.linear.weight, stored["module.linear.weight"])
        assert net.preprocess.class_names == KNOWN_CLASS_NAMES["cifar10"]
        assert net.preprocess.mean == (0.485, 0.456, 0.406)  # as the publisher trained


def test_training_from_cifar10_weights_takes_the_same_path(
    hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # model.pretrained=cifar10 reaches load_pretrained with the network ZooModule built
    cached = write_akamaster_file(hub, 32)
    monkeypatch.setitem(pretrained.CIFAR10_WEIGHTS, "resnet32", cached.name)
    net = pretrained.load_pretrained(zoo.models.create("resnet32", num_classes=10), "resnet32",
                                     "cifar10")
    stored = torch.load(cached, weights_only=True)["state_dict"]
    assert torch.equal(net.conv1.weight, stored["module.conv1.weight"])


def test_a_cached_file_whose_hash_differs_is_refused(hub: Path) -> None:
    # Under the published name but not the published bytes (a truncated or replaced download)
    write_akamaster_file(hub, 20, name="resnet20-12fca82f.th")
    with pytest.raises(CheckpointError, match=r"resnet20-12fca82f.th is not the published file: "
                                              r"its SHA-256 begins [0-9a-f]{8}, not 12fca82f"):
        zoo.create("resnet20", pretrained="cifar10")


def test_offline_and_missing_is_one_line_naming_the_file_its_url_and_where_to_put_it(
    hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A port that refuses at once: offline even on a machine with a network.
    monkeypatch.setattr(pretrained, "CIFAR10_WEIGHTS_URL", "http://127.0.0.1:9/{file}")
    with pytest.raises(PretrainedUnavailableError) as error:
        zoo.create("resnet56", pretrained="cifar10")
    message = str(error.value)
    assert "\n" not in message
    assert "community CIFAR-10 weights for resnet56 are not in the torch hub cache" in message
    assert f"Place resnet56-4bfd9763.th (from http://127.0.0.1:9/resnet56-4bfd9763.th) at " \
           f"{hub / 'resnet56-4bfd9763.th'}" in message
    assert not list(hub.glob("*"))  # nothing half-written left


def test_a_net_without_published_cifar10_weights_lists_those_with() -> None:
    for name in ("resnet8", "plain20", "resnet18"):
        with pytest.raises(CheckpointError, match=f"no published CIFAR-10 weights for '{name}'; "
                                                  "pretrained='cifar10' works for: resnet20, "
                                                  "resnet32, resnet44, resnet56, resnet110, "
                                                  "resnet1202"):
            zoo.create(name, pretrained="cifar10")
