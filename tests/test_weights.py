"""The zoo's own trained weights (zoo/weights): every shipped file loads by name in a fresh
process with its SHA-256 checked, reproduces the table's test accuracy from raw uint8 images
through the documented prediction call, and an altered or unknown file gets one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import zoo
from zoo import weights
from zoo.weights.__main__ import page
from zoo.weights.predict import KNOWN_CLASS_NAMES
from zoo.weights.pretrained import CheckpointError

REPO = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_dir(), reason="dataset-fashion-mnist absent "
                                  "(scripts/test.sh installs it where it can)")
SHIPPED = weights.manifest()
# Measured in a fresh process: load by name, predict the first N raw uint8 test images.
FRESH_PROCESS = """
import json, sys
import zoo
from zoo.data.sources import load_in_memory
from zoo.weights.predict import predict
name, count = sys.argv[1], int(sys.argv[2])
net = zoo.create(name, pretrained="fashion_mnist")
test = load_in_memory("fashion_mnist", None, 5000).test
correct = 0
for start in range(0, count, 1000):
    stop = min(start + 1000, count)
    result = predict(net, test.images[start:stop])
    correct += int((result.indices == test.labels[start:stop]).sum())
print(json.dumps({"accuracy": correct / count, "names": result.names[:2]}))
"""


def measure_in_a_fresh_process(name: str, images: int) -> dict:
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, name, str(images)], cwd=REPO,
                            capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_zoo_ships_weights_for_the_nets_of_the_experiments():
    names = {e["name"] for e in SHIPPED if e["dataset"] == "fashion_mnist"}
    assert {"plain20", "plain56", "resnet20", "resnet56", "resnet110", "preact_resnet110",
            "densenet40_12", "densenet_bc_100_12"} <= names  # the eight
    assert sum(e["bytes"] for e in SHIPPED) < 20e6  # small enough for a wheel


@pytest.mark.parametrize("entry", SHIPPED, ids=lambda e: f"{e['name']}-{e['dataset']}")
def test_each_file_is_the_manifests_and_small(entry):
    path = weights.weights_file(entry["name"], entry["dataset"])  # checks the SHA-256
    assert path.stat().st_size == entry["bytes"]
    assert path.name == f"{entry['name']}-{entry['sha256'][:8]}.pt"  # named like torchvision's
    assert 0.5 < entry["test_acc"] <= 1 and 0 <= entry["train_err"] < 0.5


def test_docs_weights_page_is_the_manifest():
    assert (REPO / "docs" / "WEIGHTS.md").read_text() == page(), \
        "run: python -m zoo.weights table --write docs/WEIGHTS.md"


@needs_fmnist
@pytest.mark.parametrize("entry", SHIPPED, ids=lambda e: f"{e['name']}-{e['dataset']}")
def test_a_fresh_process_reproduces_the_first_1000_test_images_accuracy(entry):
    measured = measure_in_a_fresh_process(entry["name"], 1000)
    assert measured["accuracy"] == pytest.approx(entry["test_acc_first_1000"], abs=0.002)
    assert set(measured["names"]) <= set(KNOWN_CLASS_NAMES["fashion_mnist"])  # names travel


@pytest.mark.slow
@needs_fmnist
@pytest.mark.parametrize("entry", SHIPPED, ids=lambda e: f"{e['name']}-{e['dataset']}")
def test_a_fresh_process_reproduces_the_tables_full_test_accuracy(entry):
    measured = measure_in_a_fresh_process(entry["name"], 10000)
    assert measured["accuracy"] == pytest.approx(entry["test_acc"], abs=0.002)


def test_an_altered_or_missing_file_and_an_unknown_name_get_one_line(tmp_path, monkeypatch):
    entry = SHIPPED[0]
    copy = tmp_path / "weights"
    shutil.copytree(weights.HERE, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setattr(weights, "MANIFEST", copy / "manifest.json")
    altered = copy / entry["file"]
    data = bytearray(altered.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte in the middle (a zip's last bytes may already be 0)
    altered.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"SHA-256 .* is not the manifest's") as error:
        zoo.create(entry["name"], pretrained="fashion_mnist")
    assert "\n" not in str(error.value)
    altered.unlink()
    with pytest.raises(CheckpointError, match="shipped weights missing; reinstall"):
        zoo.create(entry["name"], pretrained="fashion_mnist")
    with pytest.raises(CheckpointError, match="no shipped fashion_mnist weights for resnet1202"):
        zoo.create("resnet1202", pretrained="fashion_mnist")


def test_export_ships_a_finished_run_and_replaces_a_shipped_name_only_when_asked(
        digits_run, tmp_path, capsys):
    from zoo.weights.__main__ import main

    run_dir = digits_run[1]
    record = json.loads((run_dir / "run.json").read_text())  # as now: other tests resume it
    out = tmp_path / "weights"
    assert main(["export", str(run_dir), "--out", str(out), "--machine", "the test's"]) == 0
    (entry,) = weights.manifest(out / "manifest.json")
    path = out / entry["file"]
    assert path.name == f"resnet8-{weights.sha256_of(path)[:8]}.pt"
    assert entry["bytes"] == path.stat().st_size and entry["machine"] == "the test's"
    assert entry["command"] == "python train.py " + " ".join(record["overrides"])
    assert entry["commit"] == record["git_commit"]  # the code that trained, not the exporter's
    # the shipped bf16 file predicts like the run's fp32 checkpoint on the 360 test images
    assert entry["test_acc"] == pytest.approx(record["test"]["test/acc"], abs=6 / 360)
    # and loads by path, through the documented prediction call, to the table's accuracy
    from zoo.data.sources import load_in_memory
    from zoo.weights.predict import predict

    test = load_in_memory("digits", None, record["data"]["val_size"]).test
    net = zoo.create("resnet8", pretrained=path, **entry["model_options"])
    measured = float((predict(net, test.images).indices == test.labels).float().mean())
    assert measured == pytest.approx(entry["test_acc"])

    # a second export of the same name is refused, the shipped file and entry kept
    capsys.readouterr()
    assert main(["export", str(run_dir), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "resnet8 is already shipped for digits" in error and "--replace" in error
    assert weights.manifest(out / "manifest.json") == [entry] and path.is_file()
    # a run that did not finish is refused before any file is written
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished, ignore=shutil.ignore_patterns("wandb"))
    run_json = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**run_json, "status": "running"}))
    assert main(["export", str(unfinished), "--out", str(out), "--replace"]) == 2
    assert "the run is not done" in capsys.readouterr().err
    if record["git_commit"] != "unknown":  # a --commit that contradicts the record is refused
        assert main(["export", str(run_dir), "--out", str(out), "--replace",
                     "--commit", "0000000"]) == 2
        assert f"records commit {record['git_commit'][:10]}" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "digits").iterdir()) == [path.name]


def test_every_weights_file_in_the_package_is_in_the_manifest():
    files = {p.relative_to(weights.HERE).as_posix() for p in weights.HERE.rglob("*.pt")}
    assert files == {e["file"] for e in SHIPPED}  # no orphan from an interrupted export
    assert not list(weights.HERE.rglob("*.partial"))


def test_an_older_runs_commit_is_given_resolved_and_checked(tmp_path):
    from zoo.weights.export import training_commit

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=False).stdout.strip()
    if not head:
        pytest.skip("not a git checkout")
    assert training_commit(REPO, {}, head[:8]) == head  # a short hash, resolved
    with pytest.raises(ValueError, match="--commit 0000000: no such commit"):
        training_commit(REPO, {}, "0000000")
    assert training_commit(REPO, {"git_commit": head}, None) == head  # the record's wins


def test_a_pretrained_name_that_is_no_weights_name_gets_the_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file of these names here
    with pytest.raises(CheckpointError, match=r"pretrained='fashion-mnist' is neither a checkpoint "
                       r"file nor a weights name; did you mean 'fashion_mnist'\? names: "):
        zoo.create("resnet56", pretrained="fashion-mnist")
    with pytest.raises(CheckpointError, match="imagenet") as error:
        zoo.create("resnet56", pretrained="svhn")
    assert "did you mean" not in str(error.value) and "fashion_mnist" in str(error.value)
    with pytest.raises(CheckpointError, match="checkpoint file not found: runs/last.ckpt"):
        zoo.create("resnet56", pretrained="runs/last.ckpt")  # a path stays a path


def test_the_weights_table_is_printed_by_the_models_command():
    result = subprocess.run([sys.executable, "-m", "zoo.models", "--weights"], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == weights.markdown_table()
    assert all(f"`{e['name']}`" in result.stdout for e in SHIPPED)


INSTALLED_USE = """
import sys, torch, zoo
from zoo.weights.predict import predict
assert "site-packages" in zoo.__file__, zoo.__file__  # the wheel's copy, not the checkout
for name in sys.argv[1:]:
    result = predict(zoo.create(name, pretrained="fashion_mnist"),
                     torch.zeros(2, 28, 28, dtype=torch.uint8))
    print(name, result.names[0])
"""


@pytest.mark.slow
def test_an_installed_wheel_loads_every_shipped_weight_without_the_checkout(tmp_path):
    # `pip install .` as a user would, into a fresh venv (torch and the other requirements from
    # this machine's site-packages: no network), then zoo.create from a folder outside the repo.
    # --force-reinstall: the venv sees the system's (editable) zoo, which pip would call installed
    outside = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")], check=True,
                   timeout=600, env=outside)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(tmp_path / "venv")],
                   check=True, timeout=300, env=outside)
    python = tmp_path / "venv" / "bin" / "python"
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--force-reinstall", str(wheel)], check=True, timeout=600, env=outside)
    names = [entry["name"] for entry in SHIPPED]
    used = subprocess.run([str(python), "-c", INSTALLED_USE, *names], cwd=tmp_path, env=outside,
                          capture_output=True, text=True, timeout=600, check=False)
    assert used.returncode == 0, used.stderr[-3000:]
    assert [line.split()[0] for line in used.stdout.splitlines()] == names
