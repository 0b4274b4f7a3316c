"""zoo.weights.predict's preprocessing: every accepted input form gives the loaders' exact batch;
pretrained weights carry their preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from community_weights import write_akamaster_file

import zoo
from zoo.weights.predict import KNOWN_CLASS_NAMES, Preprocess

GREY = Preprocess([0.3], [0.4], image_size=8, in_channels=1, class_names=list("0123456789"))


def loader_batch(images: torch.Tensor) -> torch.Tensor:
    """What the device loader feeds the network: x / 255, minus mean, over std (float32)."""
    return images.float().div_(255).sub_(0.3).div_(0.4)


def test_every_input_form_gives_the_loaders_batch():
    from PIL import Image

    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    expected = loader_batch(images)
    assert torch.equal(GREY(images), expected)                      # (N, C, H, W)
    assert torch.equal(GREY(images[:, 0]), expected)                # (N, H, W)
    assert torch.equal(GREY(images[0, 0]), expected[:1])            # (H, W)
    assert torch.equal(GREY(images.numpy()), expected)              # numpy
    assert torch.equal(GREY([Image.fromarray(i[0].numpy()) for i in images]), expected)  # PIL
    assert torch.allclose(GREY(images.float() / 255), expected, atol=1e-6)  # [0, 1] floats


def test_other_sizes_and_channels_are_converted():
    rgb = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert GREY(rgb).shape == (2, 1, 8, 8)
    colour = Preprocess([0.5] * 3, [0.25] * 3, image_size=224, in_channels=3, resize_size=256)
    assert colour(torch.zeros(300, 400, dtype=torch.uint8)[None].expand(3, -1, -1)).shape == (
        1, 3, 224, 224)


def test_float_images_outside_unit_range_and_odd_dtypes_get_one_clear_error():
    with pytest.raises(ValueError, match=r"\[0, 1\].*uint8"):
        GREY(torch.full((2, 8, 8), 200.0))
    with pytest.raises(TypeError, match="uint8"):
        GREY(torch.zeros(2, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="no data facts"):
        Preprocess.from_facts(None)


def test_predict_restores_train_mode_and_names_classes():
    from zoo.weights.predict import predict

    net = zoo.create("resnet8", num_classes=10, in_channels=1).train()
    result = predict(net, torch.zeros(4, 8, 8, dtype=torch.uint8), preprocess=GREY)
    assert net.training and len(result) == 4
    assert result.names == [str(i) for i in result.indices.tolist()]
    with pytest.raises(ValueError, match="carries no preprocessing"):
        predict(net, torch.zeros(3, 8, 8, dtype=torch.uint8))


def test_community_cifar_weights_carry_their_preprocessing(tmp_path: Path):
    path = write_akamaster_file(tmp_path, 20)  # the published format (tests/community_weights.py)
    net = zoo.create("resnet20", num_classes=10, in_channels=3, pretrained=str(path))
    assert net.preprocess.class_names == KNOWN_CLASS_NAMES["cifar10"]
    assert net.preprocess.mean == (0.485, 0.456, 0.406) and net.preprocess.image_size == 32


def test_torchvision_state_dict_carries_imagenet_transforms(tmp_path: Path):
    import torchvision

    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    net = zoo.create("resnet18", pretrained=str(path))
    assert (net.preprocess.resize_size, net.preprocess.image_size) == (256, 224)
    assert net.preprocess.class_names[0] == "tench" and len(net.preprocess.class_names) == 1000
    assert np.allclose(net.preprocess.std, (0.229, 0.224, 0.225))
