"""The prediction call and every way a trained model is loaded (issue 24 items 1, 4, 5 and its
"ways in for code"; issue 25 item 2): the caller's images are never modified, NaN never comes out
as an answer, layouts are read explicitly or refused, and loading never runs code (URLs too)."""

from __future__ import annotations

import http.server
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from zoo.weights.predict import Preprocess, predict
from zoo.weights.pretrained import CheckpointError, UnsafeCheckpointError

GREY = Preprocess([0.3], [0.4], image_size=8, in_channels=1, class_names=list("0123456789"))
COLOUR = Preprocess([0.5] * 3, [0.25] * 3, image_size=8, in_channels=3)
FACTS = {"name": "digits", "mean": [0.3], "std": [0.4], "image_size": 8, "in_channels": 1,
         "resize_size": None, "class_names": [str(d) for d in range(10)]}


@pytest.fixture
def net():
    torch.manual_seed(0)
    return zoo.create("resnet8", num_classes=10, in_channels=1)


def save_zoo_checkpoint(path: Path, **hyper_parameters) -> Path:
    """A checkpoint as Lightning writes one for ZooModule, without a training run."""
    import pytorch_lightning as pl

    from zoo.training.module import ZooModule

    module = ZooModule({"name": "resnet8", "num_classes": 10, "in_channels": 1}, dataset=FACTS)
    torch.save({"state_dict": module.state_dict(), "pytorch-lightning_version": pl.__version__,
                "hyper_parameters": {**dict(module.hparams), **hyper_parameters}}, path)
    return path


# ---------------------------------------------------------------- the caller's images


def test_predict_never_modifies_the_callers_images(net):
    tensor = torch.rand(4, 1, 8, 8)
    array = np.random.default_rng(0).random((4, 8, 8), dtype=np.float32)
    items = [torch.rand(8, 8), torch.rand(1, 8, 8)]
    copies = tensor.clone(), array.copy(), [item.clone() for item in items]
    first = predict(net, tensor, GREY)
    predict(net, array, GREY)
    predict(net, items, GREY)
    assert torch.equal(tensor, copies[0]) and np.array_equal(array, copies[1])
    assert all(torch.equal(a, b) for a, b in zip(items, copies[2], strict=True))
    assert torch.equal(predict(net, tensor, GREY).probabilities, first.probabilities)  # again


def test_read_only_arrays_and_tensors_that_require_grad_predict_without_a_warning(net):
    array = np.zeros((2, 8, 8), np.uint8)
    array.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyTorch's "non-writable" UserWarning would fail here
        assert len(predict(net, array, GREY)) == 2
    wanting_grad = torch.rand(2, 1, 8, 8, requires_grad=True)
    assert len(predict(net, wanting_grad, GREY)) == 2
    assert wanting_grad.grad is None


# ---------------------------------------------------------------- NaN never comes out


def test_nan_or_infinite_pixels_are_refused_naming_the_images(net):
    images = torch.rand(3, 1, 8, 8)
    images[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"image\(s\) \[1\] .*NaN or infinite.*nan_to_num"):
        predict(net, images, GREY)
    images[1, 0, 2, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        predict(net, images, GREY)


@pytest.mark.parametrize("std", [[0.0], [float("nan")], [float("inf")], [-0.2], ["x"]])
def test_a_zero_or_non_finite_std_in_the_data_facts_is_refused(std):
    with pytest.raises(ValueError, match=r"data facts are unusable \(std.*Preprocess\("):
        Preprocess.from_facts({**FACTS, "std": std})


def test_non_finite_weights_are_refused_naming_the_tensor(net):
    with torch.no_grad():
        net.layer2[0].conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer2\.0\.conv1\.weight holds NaN.*earlier checkpoint"):
        predict(net, torch.zeros(2, 1, 8, 8, dtype=torch.uint8), GREY)


# ---------------------------------------------------------------- layouts


def test_ambiguous_layouts_are_refused_saying_how_to_pass_them():
    with pytest.raises(ValueError, match=r"\(28, 28, 3\) is ambiguous.*\(28, 1, 28, 3\) or "
                                         r"\(1, 3, 28, 28\)"):
        GREY(np.zeros((28, 28, 3), np.uint8))  # one RGB image, or 28 grey images 28x3?
    with pytest.raises(ValueError, match=r"tensor shaped \(3, 8, 8\) is ambiguous"):
        GREY(torch.zeros(3, 8, 8, dtype=torch.uint8))  # one RGB image, or three grey ones?
    with pytest.raises(ValueError, match=r"\(3, 3, 3, 3\) is ambiguous"):
        COLOUR(np.arange(81, dtype=np.uint8).reshape(3, 3, 3, 3))  # NCHW or NHWC?
    with pytest.raises(ValueError, match=r"\(5, 8, 8\) is not an image layout.*\(N, C, H, W\)"):
        COLOUR(torch.zeros(5, 8, 8, dtype=torch.uint8))  # a batch needs its channels


def test_every_layout_that_fits_one_way_gives_the_same_batch():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)  # channels-last, as numpy holds it
    expected = COLOUR(torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous())
    assert torch.equal(COLOUR(rgb), expected)                              # (N, H, W, C)
    assert torch.equal(COLOUR(rgb[0]), expected[:1])                       # (H, W, C)
    assert torch.equal(COLOUR(rgb.transpose(0, 3, 1, 2)), expected)        # (N, C, H, W)
    assert torch.equal(COLOUR(torch.from_numpy(rgb[0]).permute(2, 0, 1)), expected[:1])
    grey = rng.integers(0, 256, (5, 8, 8), dtype=np.uint8)
    assert GREY(grey).shape == (5, 1, 8, 8)                                # (N, H, W)
    assert torch.equal(GREY(grey[:1]), GREY(grey[0]))                      # (1, H, W) = (H, W)
    assert COLOUR(grey[0]).shape == (1, 3, 8, 8)                           # grey to RGB


def test_sixteen_bit_pil_images_keep_their_range():
    from PIL import Image

    low, high = np.full((8, 8), 1000, np.uint16), np.full((8, 8), 60000, np.uint16)
    as_read = [GREY(Image.fromarray(pixels)) for pixels in (low, high)]
    assert Image.fromarray(high).mode == "I;16"
    assert float(as_read[1].mean()) > float(as_read[0].mean())  # not both clipped to 255
    assert torch.allclose(as_read[1], torch.full_like(as_read[1], (60000 / 65535 - 0.3) / 0.4))


@pytest.mark.parametrize("images", [torch.zeros(0, 1, 8, 8), torch.zeros(1, 1, 0, 0),
                                    np.zeros((0, 8, 8), np.uint8), []],
                         ids=["empty-batch", "0x0-image", "empty-array", "empty-list"])
def test_no_pixels_is_one_clear_error(net, images):
    with pytest.raises(ValueError, match="no (pixels|images)"):
        predict(net, images, GREY)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_a_batch_size_that_is_not_a_whole_number_above_zero_is_refused(net, batch_size):
    with pytest.raises(ValueError, match="batch_size must be a whole number > 0"):
        predict(net, torch.zeros(2, 1, 8, 8), GREY, batch_size=batch_size)


# ---------------------------------------------------------------- loading


def test_zoo_load_gives_an_eval_mode_model_that_predicts(tmp_path: Path):
    model = zoo.load(save_zoo_checkpoint(tmp_path / "ok.ckpt"))
    assert type(model).__name__ == "ZooModule" and not model.training
    result = model.predict(np.zeros((4, 8, 8), np.uint8))
    assert len(result) == 4 and set(result.names) <= set(FACTS["class_names"])


@pytest.mark.parametrize(("hyper_parameters", "expected"), [
    ("garbage", "hyper_parameters is str, not a dict"),
    ({"optim": {"name": "sgd", "lr": "fast"}}, r"optim\.lr='fast' is not a finite number"),
    ({"model": {"name": "x" * 2_000_000}}, r"model\.name='x+\.\.\. \(2,000,002 characters\)"),
    ({"dataset": {**FACTS, "std": [0.0]}}, r"dataset: .*std must be finite numbers > 0"),
])
def test_checkpoint_hyper_parameters_of_the_wrong_type_are_one_short_line(tmp_path: Path,
                                                                        hyper_parameters,
                                                                        expected):
    path = save_zoo_checkpoint(tmp_path / "odd.ckpt")
    content = torch.load(path, weights_only=True)
    content["hyper_parameters"] = hyper_parameters if isinstance(hyper_parameters, str) else \
        {**content["hyper_parameters"], **hyper_parameters}
    torch.save(content, path)
    for load in (zoo.load, lambda p: zoo.create("resnet8", num_classes=10, in_channels=1,
                                                pretrained=str(p))):
        with pytest.raises(CheckpointError, match=expected) as caught:
            load(path)
        message = str(caught.value)
        assert str(path) in message and "\n" not in message and len(message) < 400


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def http_folder(tmp_path: Path):
    """A folder served over http on 127.0.0.1 (a thread of this process); yields (folder, url)."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):  # no request lines in the test output
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_hostile_checkpoint_from_a_url_is_refused_and_never_runs(tmp_path: Path, http_folder):
    from zoo.training.module import ZooModule

    folder, url = http_folder
    marker = tmp_path / "marker"
    save_zoo_checkpoint(folder / "evil.ckpt")
    content = torch.load(folder / "evil.ckpt", weights_only=True)
    torch.save({**content, "payload": _Hostile(marker)}, folder / "evil.ckpt")
    for load in (ZooModule.load_from_checkpoint, zoo.load,
                 lambda u: zoo.create("resnet8", num_classes=10, in_channels=1, pretrained=u)):
        with pytest.raises(UnsafeCheckpointError, match=f"refusing to load {url}/evil.ckpt"):
            load(f"{url}/evil.ckpt")
    assert not marker.exists()
    with pytest.raises(ValueError, match="weights_only=False .* not accepted"):
        ZooModule.load_from_checkpoint(f"{url}/evil.ckpt", weights_only=False)
    assert not marker.exists()


def test_a_checkpoint_from_a_url_loads_as_data(http_folder):
    folder, url = http_folder
    save_zoo_checkpoint(folder / "good.ckpt")
    model = zoo.load(f"{url}/good.ckpt")
    assert len(model.predict(torch.zeros(8, 8, dtype=torch.uint8))) == 1
    with pytest.raises(CheckpointError, match=f"cannot download {url}/missing.ckpt"):
        zoo.load(f"{url}/missing.ckpt")


# ---------------------------------------------------------------- the README's example


def readme_block(heading: str) -> str:
    """The first ```python block under ``heading`` in README.md."""
    from conftest import REPO

    text = (REPO / "README.md").read_text()
    section = text[text.index(f"## {heading}\n"):]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_the_readmes_prediction_example_runs_as_written(tmp_path: Path):
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    trained = subprocess.run([sys.executable, str(REPO / "train.py"), "model=resnet8",
                              "data=digits", "trainer.max_epochs=1", "logger=csv",
                              "callbacks.progress_bar=none"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600, check=False)
    assert trained.returncode == 0, trained.stderr[-3000:]
    answer = subprocess.run([sys.executable, "-c", readme_block("Predict with a trained model")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert answer.returncode == 0, answer.stderr[-3000:]
    names = answer.stdout.splitlines()[0]
    assert names.startswith("[") and names.count("'") == 10  # five class names, as digits
    assert "Warning" not in answer.stderr, answer.stderr


def test_a_resume_checkpoint_with_a_string_learning_rate_is_one_line_through_train_py(
        tmp_path: Path):
    from conftest import run_train

    path = save_zoo_checkpoint(tmp_path / "odd.ckpt", optim={"name": "sgd", "lr": "fast"})
    result = run_train(tmp_path / "run", "model=resnet8", f"ckpt_path={path}", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"error: {path}: hyper_parameters.optim.lr='fast'")
