"""Writing a shipped weight from a finished run, and measuring it *as shipped*.

``export(run_dir)`` takes the run's ``last.ckpt``, keeps the network's state dict in bf16
(BatchNorm statistics in fp32: they are few and a variance needs the range), stores the model
options and data facts beside it, names the file ``NAME-SHA8.pt`` like torchvision's, then loads
that file back through ``zoo.create(name, pretrained=file)`` and measures what the table shows:
test accuracy through :func:`zoo.weights.predict.predict` from the raw uint8 test images, and the
eval-mode training error over the run's training split (He et al.'s "training error").
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from zoo.weights import HERE, ShippedWeightsError, manifest, sha256_of

# Model options that describe the run, not the network's shape.
NOT_OPTIONS = ("name", "pretrained", "compile", "memory_efficient")
FP32_BUFFERS = ("running_mean", "running_var")


def compact(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """bf16 for floating weights, fp32 for BatchNorm statistics, integers as they are."""
    return {key: value.to(torch.bfloat16)
            if value.is_floating_point() and not key.endswith(FP32_BUFFERS) else value.clone()
            for key, value in state_dict.items()}


def flops_of(net: torch.nn.Module, in_channels: int, image_size: int) -> int:
    """FLOPs of one image at the weights' own input size (a multiply-add counts 2)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net.eval()(torch.zeros(1, in_channels, image_size, image_size))
    return int(counter.get_total_flops())


def test_accuracy(net: torch.nn.Module, data_cfg: dict[str, Any], batch: int = 1000,
                  max_images: int | None = None) -> float:
    """Accuracy on the dataset's official test set (its first ``max_images``), from raw uint8
    images through predict()."""
    from zoo.data.sources import load_in_memory
    from zoo.weights.predict import predict

    test = load_in_memory(data_cfg["name"], data_cfg.get("root"), data_cfg["val_size"]).test
    count = len(test.labels) if max_images is None else min(max_images, len(test.labels))
    correct = 0
    for start in range(0, count, batch):
        stop = min(start + batch, count)
        result = predict(net, test.images[start:stop])  # uint8 (N, C, H, W), as in the files
        correct += int((result.indices == test.labels[start:stop]).sum())
    return correct / count


def training_error(net: torch.nn.Module, data_cfg: dict[str, Any]) -> float:
    """Eval-mode error over the run's whole training split, without augmentation."""
    from zoo.data import build_datamodule
    from zoo.experiments.lesion import accuracy

    data_cfg = {**data_cfg, "num_workers": 0, "loader": "torch", "augment": False}
    datamodule = build_datamodule(data_cfg)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    return 1.0 - accuracy(net, [(x, y) for x, y in loader])


def finished_run(run_dir: Path):
    """The run of ``run_dir``, if it ended well: only a finished run's weights are shipped."""
    from zoo.runs.reader import read_run

    run = read_run(run_dir)
    if run.record.get("status") != "done":
        raise ValueError(f"{run_dir}: the run is not done (status {run.record.get('status')!r}); "
                         "export a run that finished")
    return run


def training_commit(run_dir: Path, record: dict[str, Any], commit: str | None) -> str:
    """The commit of the code that trained: the run's record holds it (runs since it does); for
    an older run, ``commit`` says it (resolved to its full hash in the checkout that holds the
    run, so a typo stops here), else that checkout's HEAD."""
    from zoo.experiments.tidy import git_commit

    recorded = record.get("git_commit")
    if recorded and recorded != "unknown":
        if commit and not recorded.startswith(commit):
            raise ValueError(f"{run_dir}: the run records commit {recorded[:10]}, not {commit}; "
                             "leave out --commit")
        return recorded
    if commit is None:
        return git_commit(Path(run_dir))
    result = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
                            cwd=run_dir, capture_output=True, text=True, timeout=10, check=False)
    if result.returncode != 0:
        raise ValueError(f"--commit {commit}: no such commit in the checkout that holds {run_dir}")
    return result.stdout.strip()


def export(run_dir: Path, out_root: Path = HERE, commit: str | None = None) -> dict[str, Any]:
    """Write ``out_root/<dataset>/<name>-<sha8>.pt`` from a finished run; its manifest entry."""
    import zoo
    from zoo.weights.pretrained import _state_dict_of, safe_load

    run = finished_run(run_dir)
    checkpoint = Path(run_dir) / "checkpoints" / "last.ckpt"
    content = safe_load(checkpoint)
    hyper = content["hyper_parameters"]
    model_cfg, facts = dict(hyper["model"]), dict(hyper["dataset"])
    name, dataset = model_cfg["name"], facts["name"]
    options = {k: v for k, v in model_cfg.items() if k not in NOT_OPTIONS}
    buffer = io.BytesIO()
    torch.save({"state_dict": compact(_state_dict_of(content, checkpoint)),
                "hyper_parameters": {"model": {"name": name, **options}, "dataset": facts}},
               buffer)
    data = buffer.getvalue()
    folder = out_root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{name}.pt.partial"
    temporary.write_bytes(data)
    sha = sha256_of(temporary)
    path = folder / f"{name}-{sha[:8]}.pt"
    os.replace(temporary, path)

    net = zoo.create(name, pretrained=path, **options)
    data_cfg = {**run.record["data"], "seed": run.seed}
    return {
        "name": name, "dataset": dataset, "file": path.relative_to(out_root).as_posix(),
        "sha256": sha, "bytes": len(data), "dtype": "bfloat16",
        "model_options": options, "test_acc": test_accuracy(net, data_cfg),
        "test_acc_first_1000": test_accuracy(net, data_cfg, max_images=1000),
        "train_err": training_error(net, data_cfg),
        "parameters": sum(p.numel() for p in net.parameters()),
        "flops": flops_of(net, facts["in_channels"], facts["image_size"]),
        "command": "python train.py " + " ".join(run.record.get("overrides") or []),
        "fit_seconds": run.record.get("fit_seconds"), "steps": run.record.get("global_step"),
        # still falling in the last epoch = not levelled off: the table shows it
        "val_err_by_epoch": [round(1.0 - acc, 4)
                             for _, acc in sorted(run.series("val/acc").items())],
        "run_test_acc": (run.record.get("test") or {}).get("test/acc"),
        "commit": training_commit(run_dir, run.record, commit), "torch": run.record.get("torch"),
        "machine": f"{platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} cores, torch {run.record.get('torch')}",
    }


def ship(run_dirs: list[Path], out_root: Path = HERE, machine: str | None = None,
         replace: bool = False, commit: str | None = None,
         report: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Export each run into ``out_root`` and write its entry into ``out_root/manifest.json``.

    A name already shipped for a dataset is replaced (its entry and its old file) only with
    ``replace=True``: a shipped file is what users' results were measured on, so replacing one
    is asked for, never a side effect of exporting the wrong folder. ``report`` is called with
    each entry once it is written (measuring one takes minutes on a CPU).
    """
    manifest_path = out_root / "manifest.json"
    entries = manifest(manifest_path)
    shipped = {(e["name"], e["dataset"]): e for e in entries}
    asked: dict[tuple, Path] = {}
    for run_dir in run_dirs:  # every run checked before any file is written
        record = finished_run(run_dir).record
        training_commit(run_dir, record, commit)  # a contradicting --commit stops here
        key = ((record.get("model") or {}).get("name"), (record.get("data") or {}).get("name"))
        if key in asked:
            raise ShippedWeightsError(f"{asked[key]} and {run_dir} are both {key[0]} on "
                                      f"{key[1]}: export one of them")
        asked[key] = run_dir
        if key in shipped and not replace:
            raise ShippedWeightsError(
                f"{run_dir}: {key[0]} is already shipped for {key[1]} "
                f"({shipped[key]['file']}); pass --replace to replace it")
    exported = []
    for run_dir in run_dirs:
        entry = export(run_dir, out_root, commit)
        if machine:
            entry["machine"] = machine
        key = (entry["name"], entry["dataset"])
        old = next((e for e in entries if (e["name"], e["dataset"]) == key), None)
        if old is not None and old["file"] != entry["file"]:  # a replaced entry takes its file
            (out_root / old["file"]).unlink(missing_ok=True)
        entries = sorted([e for e in entries if e is not old] + [entry],
                         key=lambda e: (e["dataset"], e["name"]))
        exported.append(entry)
        # written after each run: a failure in the next one keeps what is already exported
        temporary = manifest_path.with_suffix(".json.partial")
        temporary.write_text(json.dumps({"weights": entries}, indent=1) + "\n")
        os.replace(temporary, manifest_path)
        if report:
            report(entry)
    return exported
