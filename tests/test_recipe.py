"""The training recipe: precision and layout chosen for the hardware, the learning rate scaled
with the global batch, the warm-up, and the eval-mode training-error pass."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_train

from zoo.training.module import ZooModule, lr_factor
from zoo.training.precision import (
    check_accelerator,
    choose_channels_last,
    choose_precision,
    cpu_bf16_flags,
)

AVX512_BF16 = frozenset({"fpu", "avx512f", "avx512_bf16"})
AMX = frozenset({"fpu", "amx_bf16", "amx_tile"})
OLD_CPU = frozenset({"fpu", "sse4_2", "avx2"})


# ------------------------------------------------------------------ precision=auto


@pytest.mark.parametrize("flags", [AVX512_BF16, AMX])
def test_auto_picks_bf16_on_a_cpu_with_bf16_matrix_instructions(flags):
    precision, why = choose_precision("auto", "cpu", 28, flags=flags)
    assert precision == "bf16-mixed"
    assert any(flag in why for flag in ("avx512_bf16", "amx_bf16"))


def test_auto_keeps_fp32_on_a_cpu_without_them():
    precision, why = choose_precision("auto", "cpu", 28, flags=OLD_CPU)
    assert precision == "32-true"
    assert "no bf16" in why


def test_auto_keeps_fp32_for_tiny_images_where_bf16_measured_no_faster():
    assert choose_precision("auto", "cpu", 8, flags=AVX512_BF16)[0] == "32-true"


def test_an_explicit_precision_is_kept_whatever_the_hardware():
    assert choose_precision("32-true", "cpu", 28, flags=AVX512_BF16)[0] == "32-true"
    assert choose_precision("bf16-mixed", "cpu", 28, flags=OLD_CPU)[0] == "bf16-mixed"


def test_auto_on_cuda_follows_bf16_support():
    assert choose_precision("auto", "gpu", 224, cuda_bf16=True)[0] == "bf16-mixed"
    assert choose_precision("auto", "cuda", 224, cuda_bf16=False)[0] == "32-true"


def test_cpu_flag_reader_finds_only_bf16_matrix_flags():
    assert cpu_bf16_flags(AVX512_BF16 | AMX) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16_flags(OLD_CPU) == []


def test_channels_last_auto_on_cpu_and_kept_when_explicit():
    assert choose_channels_last("auto", "cpu", "32-true") is True
    assert choose_channels_last("auto", "cuda", "32-true") is False
    assert choose_channels_last("auto", "cuda", "bf16-mixed") is True
    assert choose_channels_last(False, "cpu", "bf16-mixed") is False


# ------------------------------------------------------------------ learning rate


def module_with(batch_size, world_size=1, accumulate=1, lr=0.1, reference=128):
    module = ZooModule({"name": "resnet8", "num_classes": 10, "in_channels": 1},
                       optim={"name": "sgd", "lr": lr, "reference_batch_size": reference},
                       batch_size=batch_size)
    module._trainer = SimpleNamespace(world_size=world_size, accumulate_grad_batches=accumulate)
    return module


@pytest.mark.parametrize("batch, world, accumulate, expected", [
    (128, 1, 1, 0.1), (32, 1, 1, 0.025), (32, 2, 1, 0.05), (64, 4, 2, 0.4),
])
def test_lr_scales_linearly_with_the_global_batch(batch, world, accumulate, expected):
    lr, global_batch = module_with(batch, world, accumulate).learning_rate()
    assert global_batch == batch * world * accumulate
    assert lr == pytest.approx(expected)


@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan"), float("inf")])
def test_a_learning_rate_that_is_not_positive_and_finite_is_refused(lr):
    with pytest.raises(ValueError, match="optim.lr"):
        module_with(128, lr=lr).learning_rate()


def test_warmup_rises_linearly_then_cosine_falls_to_zero():
    factor = lr_factor({"name": "cosine", "warmup_fraction": 0.1}, total_steps=100)
    assert [factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5)
    assert factor(100) == pytest.approx(0.0, abs=1e-12)
    step = lr_factor({"name": "step", "warmup_fraction": 0.0, "milestones": [0.5, 0.75]}, 100)
    assert [step(0), step(50), step(75)] == pytest.approx([1.0, 0.1, 0.01])


def test_the_run_prints_the_rate_it_uses(tmp_path):
    result = run_train(tmp_path / "run", "model=resnet8", "trainer.max_epochs=1",
                       "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                       "logger=csv")
    log = result.stdout + result.stderr
    # digits at data.batch_size=32 on one device: 0.1 x 32 / 128
    assert ("learning rate: 0.025 (optim.lr=0.1 per 128 images, scaled to a global batch of 32)"
            in log)
    assert "precision: 32-true" in log  # 8x8 digits: fp32 whatever the CPU

    # Resumed, the optimizer and schedule are the checkpoint's: the printed rate is theirs
    # (another optim.lr is refused on resume: test_reliability_faults.py).
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    resumed = run_train(tmp_path / "resumed", "model=resnet8", "trainer.max_epochs=2",
                        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                        "logger=csv", f"ckpt_path={last}")
    log = resumed.stdout + resumed.stderr
    assert "learning rate: 0.025, continued from the checkpoint (now " in log
    assert "at step 2)" in log and "scaled to a global batch" not in log


# ------------------------------------------------------------------ train-eval pass


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as file:
        return list(csv.DictReader(file))


def test_train_eval_error_is_the_eval_mode_error_of_the_final_weights(tmp_path):
    from omegaconf import OmegaConf

    from zoo.data import build_datamodule

    run_dir = tmp_path / "run"
    run_train(run_dir, "model=resnet8", "trainer.max_epochs=2", "logger=csv")
    logged = [r for r in csv_rows(run_dir) if r.get("train_eval/err")]
    assert len(logged) == 1  # at the end of fit only, by default
    err = float(logged[0]["train_eval/err"])

    module = ZooModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt",
                                            map_location="cpu").eval()
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    data = build_datamodule(cfg.data)
    data.setup("fit")
    wrong = total = 0
    with torch.inference_mode():
        for images, labels in data.train_eval_dataloader():
            wrong += int((module(images).argmax(1) != labels).sum())
            total += len(labels)
    assert total == len(data.splits.train)  # every training image, no drop_last
    assert err == pytest.approx(wrong / total, abs=1e-9)
    # and not the running train-mode accuracy of augmented batches
    train_acc = [float(r["train/acc"]) for r in csv_rows(run_dir) if r.get("train/acc")][-1]
    assert not math.isclose(1 - train_acc, err, abs_tol=1e-9)


def test_train_eval_every_epoch_logs_one_point_per_epoch(tmp_path):
    run_dir = tmp_path / "run"
    run_train(run_dir, "model=resnet8", "trainer.max_epochs=3", "logger=csv",
              "trainer.limit_train_batches=3", "callbacks.train_eval.every_n_epochs=1")
    assert len([r for r in csv_rows(run_dir) if r.get("train_eval/err")]) == 3


# ------------------------------------------------------------------ bf16 on the CPU


def test_a_bf16_cpu_run_lowers_the_loss_and_writes_the_same_files_as_fp32(tmp_path):
    files = {}
    for precision in ("32-true", "bf16-mixed"):
        run_dir = tmp_path / precision
        run_train(run_dir, "model=resnet8", "trainer.max_epochs=3", "logger=csv",
                  f"trainer.precision={precision}")
        losses = [float(r["train/loss_epoch"]) for r in csv_rows(run_dir)
                  if r.get("train/loss_epoch")]
        assert losses[-1] < losses[0], (precision, losses)
        files[precision] = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                                  if p.is_file() and "checkpoints" not in p.parts)
    assert files["32-true"] == files["bf16-mixed"]


def test_a_gpu_asked_for_without_one_is_one_line_naming_the_cpu_settings():
    with pytest.raises(ValueError, match=r"trainer.accelerator=gpu but this machine has no CUDA GPU"
                       r".*trainer=cpu trainer.strategy=ddp trainer.devices=N"):
        check_accelerator("gpu", cuda_available=False)
    check_accelerator("gpu", cuda_available=True)  # a GPU machine: nothing to say
    check_accelerator("cpu", cuda_available=False)
    check_accelerator("auto", cuda_available=False)
