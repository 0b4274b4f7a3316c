"""Loading weights: community CIFAR checkpoints, torchvision files, Lightning checkpoints,
torchvision's published weights through the hub cache, and every way a file can be wrong."""

from __future__ import annotations

import ast
import logging
import os
from pathlib import Path

import pytest
import torch
import torchvision
from community_weights import write_akamaster_file

import zoo
from zoo.weights import pretrained
from zoo.weights.pretrained import (
    ArchitectureMismatchError,
    CheckpointError,
    PretrainedUnavailableError,
    UnsafeCheckpointError,
)

# ---------------------------------------------------------------- community CIFAR checkpoints
# Files in the published format, made by tests/community_weights.py (the real ones are not part
# of the repository).


@pytest.fixture(scope="module")
def resnet20_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_akamaster_file(tmp_path_factory.mktemp("community"), 20)


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_community_checkpoint_loads_exactly(depth: int, tmp_path: Path) -> None:
    name = f"resnet{depth}"
    path = write_akamaster_file(tmp_path, depth)
    stored = torch.load(path, weights_only=True, map_location="cpu")["state_dict"]
    net = zoo.create(name, num_classes=10, pretrained=str(path))
    own = net.state_dict()
    assert len(stored) > 0
    for key, value in stored.items():
        assert key.startswith("module.")
        # Weights and BN running statistics, bit for bit.
        assert torch.equal(own[key[len("module."):]], value), key


def test_community_resnet20_computes_the_reference_network(resnet20_file: Path) -> None:
    # A hand-written ResNet-20 from the checkpoint's tensors alone, with the option-A shortcut
    # padding planes // 4 zero channels on *both* sides, must give the same logits.
    import torch.nn.functional as F

    path = resnet20_file
    weights = {
        k[len("module."):]: v
        for k, v in torch.load(path, weights_only=True, map_location="cpu")["state_dict"].items()
    }
    net = zoo.create("resnet20", pretrained=str(path)).eval()

    def bn(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.batch_norm(
            x, weights[f"{prefix}.running_mean"], weights[f"{prefix}.running_var"],
            weights[f"{prefix}.weight"], weights[f"{prefix}.bias"], False, 0.0, 1e-5,
        )

    def reference(x: torch.Tensor) -> torch.Tensor:
        x = F.relu(bn(F.conv2d(x, weights["conv1.weight"], padding=1), "bn1"))
        for stage, planes in ((1, 16), (2, 32), (3, 64)):
            for index in range(3):
                p = f"layer{stage}.{index}"
                stride = 2 if stage > 1 and index == 0 else 1
                out = F.conv2d(x, weights[f"{p}.conv1.weight"], stride=stride, padding=1)
                out = F.relu(bn(out, f"{p}.bn1"))
                out = bn(F.conv2d(out, weights[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
                shortcut = x
                if stride == 2:
                    shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))
                x = F.relu(out + shortcut)
        return F.linear(x.mean((2, 3)), weights["linear.weight"], weights["linear.bias"])

    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(net(x), expected, atol=1e-4, rtol=1e-4)
        assert torch.equal(net(x).argmax(1), expected.argmax(1))


# ---------------------------------------------------------------- other sources


def _randomised(net: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_torchvision_state_dict_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = _randomised(torchvision.models.resnet18(weights=None))
    path = tmp_path / "resnet18-custom.pth"
    torch.save(reference.state_dict(), path)
    net = zoo.create("resnet18", pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), atol=1e-5, rtol=1e-5)


def test_lightning_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = _randomised(zoo.create("densenet40_12", num_classes=10))
    state = {f"net.{k}": v for k, v in source.state_dict().items()}
    state["criterion.weight"] = torch.ones(10)  # other LightningModule state is ignored
    path = tmp_path / "epoch=3-step=100.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "global_step": 100}, path)
    net = zoo.create("densenet40_12", num_classes=10, pretrained=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key


def test_compiled_lightning_checkpoint(tmp_path: Path) -> None:
    source = zoo.create("resnet20")
    state = {f"net._orig_mod.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "last.ckpt")
    net = zoo.create("resnet20", pretrained=str(tmp_path / "last.ckpt"))
    assert torch.equal(net.linear.weight, source.linear.weight)


def test_a_zoo_checkpoint_that_does_not_fit_names_the_options_it_was_trained_with(
        tmp_path: Path) -> None:
    # the 1000-layer experiments train narrow nets (model.widths=[4,8,16]); loading one into the
    # default widths must say which overrides rebuild the network that fits
    source = zoo.create("preact_resnet110", widths=(4, 8, 16), in_channels=1)
    model = {"name": "preact_resnet110", "num_classes": 10, "in_channels": 1, "pretrained": None,
             "memory_efficient": False, "compile": False, "widths": [4, 8, 16]}
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()},
                "hyper_parameters": {"model": model}}, tmp_path / "last.ckpt")
    with pytest.raises(ArchitectureMismatchError, match=r"shape differs") as error:
        zoo.create("preact_resnet110", in_channels=1, pretrained=str(tmp_path / "last.ckpt"))
    assert str(error.value).endswith("It was trained as model=preact_resnet110 "
                                     "model.num_classes=10 model.in_channels=1 "
                                     "model.widths=[4,8,16]")
    net = zoo.create("preact_resnet110", in_channels=1, widths=(4, 8, 16),
                     pretrained=str(tmp_path / "last.ckpt"))
    assert torch.equal(net.conv1.weight, source.conv1.weight)


def test_other_num_classes_loads_all_but_the_classifier(
    caplog: pytest.LogCaptureFixture, resnet20_file: Path
) -> None:
    path = resnet20_file
    stored = torch.load(path, weights_only=True, map_location="cpu")["state_dict"]
    torch.manual_seed(0)
    fresh = zoo.create("resnet20", num_classes=100)
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="zoo.weights.pretrained"):
        net = zoo.create("resnet20", num_classes=100, pretrained=str(path))
    assert net.linear.weight.shape == (100, 64)
    assert torch.equal(net.linear.weight, fresh.linear.weight)  # classifier untouched
    assert torch.equal(net.layer3[2].conv2.weight, stored["module.layer3.2.conv2.weight"])
    records = [r for r in caplog.records if r.name == "zoo.weights.pretrained"]
    assert len(records) == 1
    assert "classifier" in records[0].getMessage() and "100" in records[0].getMessage()


def test_other_architecture_lists_keys(resnet20_file: Path) -> None:
    path = resnet20_file
    with pytest.raises(ArchitectureMismatchError, match=r"missing \(60\): layer1\.3\.conv1"):
        zoo.create("resnet32", pretrained=str(path))
    with pytest.raises(ArchitectureMismatchError, match=r"unexpected \(\d+\)") as error:
        zoo.create("densenet40_12", pretrained=str(path))
    assert "and" in str(error.value) and "more" in str(error.value)  # long lists truncated
    with pytest.raises(ArchitectureMismatchError, match=r"shape differs"):
        zoo.create("resnet20", shortcut="A", in_channels=1, pretrained=str(path))


# ---------------------------------------------------------------- bad files


def test_missing_truncated_and_non_checkpoint_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found: .*nowhere.pth"):
        zoo.create("resnet20", pretrained=str(tmp_path / "nowhere.pth"))
    good = tmp_path / "good.pth"
    torch.save(zoo.create("resnet20").state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pth"
    text.write_text("these are my notes, not weights\n")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    for path in (truncated, text, empty):
        with pytest.raises(CheckpointError, match=f"cannot read {path}"):
            zoo.create("resnet20", pretrained=str(path))
    tensor_only = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        zoo.create("resnet20", pretrained=str(tensor_only))
    with pytest.raises(CheckpointError,
                       match="checkpoint path, 'imagenet', 'cifar10' or 'fashion_mnist'"):
        zoo.create("resnet20", pretrained=True)


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # unpickling this would run a shell command
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "hostile.pth"
    torch.save({"state_dict": zoo.create("resnet20").state_dict(), "x": _Hostile(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load .*hostile.pth.*system"):
        zoo.create("resnet20", pretrained=str(path))
    assert not marker.exists()


# ---------------------------------------------------------------- "imagenet"


def test_imagenet_offline_fails_fast_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # A port that refuses at once, so the test is offline even on a machine with a network.
    monkeypatch.setattr(
        pretrained, "imagenet_weights_url",
        lambda name: "http://127.0.0.1:9/models/resnet18-f37072fd.pth",
    )
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(PretrainedUnavailableError) as error:
        zoo.create("resnet18", pretrained="imagenet")
    assert str(expected) in str(error.value)
    assert not expected.exists()


def test_imagenet_url_and_cache_file_come_from_torchvision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert pretrained.imagenet_weights_url("resnet50").endswith("/resnet50-0676ba61.pth")
    assert pretrained.imagenet_weights_file("densenet121") == (
        tmp_path / "hub" / "checkpoints" / "densenet121-a639ec97.pth"
    )
    with pytest.raises(CheckpointError, match="no ImageNet weights for 'plain18'"):
        zoo.create("plain18", pretrained="imagenet")


def test_imagenet_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    reference = _randomised(torchvision.models.densenet121(weights=None))
    cached = pretrained.imagenet_weights_file("densenet121")
    cached.parent.mkdir(parents=True)
    # Published DenseNet files carry the old "norm.1"-style keys.
    legacy = {}
    for key, value in reference.state_dict().items():
        if "num_batches_tracked" in key:
            continue
        for part in ("norm1", "norm2", "conv1", "conv2"):
            key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        legacy[key] = value
    torch.save(legacy, cached)

    def no_download(*args: object) -> None:
        raise AssertionError("the cached file must be used without a download")

    monkeypatch.setattr(pretrained, "_download", no_download)
    net = zoo.create("densenet121", pretrained="imagenet").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), atol=1e-5, rtol=1e-5)


def _serve(directory: Path):
    """An HTTP server on 127.0.0.1 for the files in ``directory``; returns it and its base URL."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=directory))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_download_checks_the_hash_in_the_file_name(tmp_path: Path) -> None:
    import hashlib

    served = tmp_path / "served"
    served.mkdir()
    weights = served / "weights.pth"
    torch.save(zoo.create("resnet8").state_dict(), weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    server, base = _serve(served)
    try:
        good = tmp_path / "hub" / f"resnet8-{digest[:8]}.pth"
        pretrained._download(f"{base}/weights.pth", good)
        assert good.read_bytes() == weights.read_bytes()
        corrupt = tmp_path / "hub" / "resnet8-00000000.pth"
        with pytest.raises(CheckpointError, match="is corrupt"):
            pretrained._download(f"{base}/weights.pth", corrupt)
        assert not corrupt.exists() and not list(corrupt.parent.glob("*.partial"))
    finally:
        server.shutdown()


def test_importing_the_zoo_loads_no_lightning() -> None:
    # zoo.create loads weights through zoo.weights.pretrained, which needs no Lightning; the models
    # layer imports nothing above it.
    import subprocess
    import sys

    code = ("import sys, zoo, zoo.models; "
            "print(sorted(m for m in sys.modules if 'lightning' in m))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip() == "[]"
    for path in (Path(zoo.__file__).parent / "models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.startswith("zoo.models") or name.split(".")[0] != "zoo", (
                    f"{path.name} imports {name}: the models layer imports nothing above it")
