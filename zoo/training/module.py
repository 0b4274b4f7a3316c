"""One LightningModule for every network of the zoo.

The network is built by registry name from the saved hyperparameters (names and numbers only,
never a pickled module), so ``ZooModule.load_from_checkpoint(path)`` needs no other argument.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

import zoo
from zoo.config.schemas import (
    OPTIMIZERS,
    SCHEDULERS,
    OptimConfig,
    SchedulerConfig,
    schema_defaults,
)
from zoo.models import count_parameters
from zoo.training.compat import reset_train_dataloader

log = logging.getLogger("zoo")

# Keys of the model config that are for this module, not for zoo.create.
MODULE_ONLY_MODEL_KEYS = ("name", "compile", "pretrained")


def load_trained(path: str | os.PathLike[str], map_location: Any = "cpu") -> ZooModule:
    """``zoo.load``: a trained zoo checkpoint (path or http(s) URL), in eval mode, ready for
    ``model.predict(images)``; read as data only (weights-only, hyper-parameters checked)."""
    return ZooModule.load_from_checkpoint(path, map_location=map_location).eval()


def create_arguments(model: dict[str, Any]) -> dict[str, Any]:
    """The ``zoo.create`` options in a model config (everything but the module's own keys)."""
    return {k: v for k, v in model.items() if k not in MODULE_ONLY_MODEL_KEYS}


class ZooModule(pl.LightningModule):
    def __init__(
        self,
        model: dict[str, Any],
        optim: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        batch_size: int | None = None,
        dataset: dict[str, Any] | None = None,
    ) -> None:
        """``dataset``: the data facts that preprocess raw images for :meth:`predict` (name,
        mean, std, image size, channels, class names; ``zoo.weights.predict.data_facts``)."""
        super().__init__()
        model = dict(model)
        # Keys not given take the schemas' defaults, train.yaml's too: built in Python, the module
        # trains as train.py does (warm-up included).
        optim = {**schema_defaults(OptimConfig), **(optim or {})}
        scheduler = {**schema_defaults(SchedulerConfig), **(scheduler or {})}
        if optim.get("name") not in OPTIMIZERS:
            raise ValueError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, "
                             f"got {optim.get('name')!r}")
        if scheduler.get("name") not in SCHEDULERS:
            raise ValueError(
                f"scheduler.name must be one of {', '.join(SCHEDULERS)}, "
                f"got {scheduler.get('name')!r}"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.save_hyperparameters({
            "model": model, "optim": optim, "scheduler": scheduler,
            "label_smoothing": label_smoothing, "channels_last": channels_last,
            "batch_size": batch_size, "dataset": dataset,
        })
        self.net = zoo.create(model["name"], **create_arguments(model))
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # The compiled graph is kept outside the module tree so that the state dict, the
        # callbacks and the checkpoints see the plain network and its parameter names.
        self.__dict__["_forward_net"] = (torch.compile(self.net) if model.get("compile")
                                         else self.net)
        num_classes = model.get("num_classes") or zoo.describe(model["name"])["default_num_classes"]
        self.num_classes = num_classes
        top_k = min(5, num_classes)
        # validate_args=False: the argument check calls torch.unique on the targets, a host sync
        # in every training step on a GPU.
        accuracy = {"average": "micro", "validate_args": False}
        self.train_acc = MulticlassAccuracy(num_classes, **accuracy)
        self.val_acc = MulticlassAccuracy(num_classes, **accuracy)
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top_k, **accuracy)
        self.test_acc = MulticlassAccuracy(num_classes, **accuracy)
        self.test_acc5 = MulticlassAccuracy(num_classes, top_k=top_k, **accuracy)
        self.num_parameters = count_parameters(self.net)
        if dataset and dataset.get("image_size"):  # the summary then shows shapes and FLOPs
            size, channels = int(dataset["image_size"]), int(dataset.get("in_channels") or 3)
            self.example_input_array = torch.zeros(1, channels, size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._forward_net(x)

    # ------------------------------------------------------------------ steps

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor],
                      batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        self.train_acc.update(logits.detach(), y)
        # Tensors are handed to the loggers every log_every_n_steps; nothing here waits for the
        # device (no .item(), not on the progress bar every step).
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, batch_size=x.shape[0])
        # The metric object, epoch only: Lightning computes it (synced across devices) as the
        # epoch ends, before the progress bar draws the epoch's last line, so the bar shows this
        # epoch's accuracy beside this epoch's val/acc; and resets it for the next epoch.
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        top1, top5 = ((self.val_acc, self.val_acc5) if stage == "val"
                      else (self.test_acc, self.test_acc5))
        top1.update(logits, y)
        top5.update(logits, y)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=x.shape[0])
        self.log(f"{stage}/acc", top1, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        self.log(f"{stage}/acc5", top5, on_epoch=True, batch_size=x.shape[0])

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    # ------------------------------------------------------------------ loading

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None,
                             hparams_file: Any = None, strict: bool | None = None,
                             weights_only: bool | None = None, **kwargs: Any) -> Any:
        """Lightning's loader, data only: paths and http(s) URLs are read with
        ``weights_only=True`` (Lightning unpickles URLs with ``weights_only=False``, which runs
        code from the file), and the hyper-parameters are checked before the net is built."""
        from zoo.weights.hparams import check_hyper_parameters
        from zoo.weights.pretrained import local_copy, safe_load

        if weights_only is False or hparams_file is not None:
            raise ValueError("a zoo checkpoint is loaded as data, with the hyper-parameters it "
                             "holds: weights_only=False and hparams_file are not accepted")
        if not isinstance(checkpoint_path, (str, os.PathLike)):
            raise TypeError(f"checkpoint_path must be a path or an http(s) URL, got "
                            f"{type(checkpoint_path).__name__}")
        with local_copy(checkpoint_path) as path:  # a URL is downloaded once, then read as data
            check_hyper_parameters(safe_load(path), path, required=True)
            return super().load_from_checkpoint(path, map_location=map_location, strict=strict,
                                                weights_only=True, **kwargs)

    # ------------------------------------------------------------------ prediction

    def transforms(self) -> Any:
        """The preprocessing this network was trained with (``zoo.weights.predict.Preprocess``)."""
        from zoo.weights.predict import Preprocess

        return Preprocess.from_facts(self.hparams.get("dataset"))

    def predict(self, images: Any, batch_size: int = 256) -> Any:
        """Class indices, probabilities and names for raw images (the layouts
        :mod:`zoo.weights.predict` lists; never modified): ``zoo.weights.predict.predict`` with this
        checkpoint's preprocessing."""
        from zoo.weights.predict import predict

        return predict(self, images, batch_size=batch_size)

    # ------------------------------------------------------------------ optimisation

    def learning_rate(self) -> tuple[float, int | None]:
        """The rate the optimizer uses and the global batch it was scaled for.

        ``optim.lr`` is the rate for ``optim.reference_batch_size`` (128) images per step, as in
        He et al. 2015; it is scaled linearly with the global batch (per-device batch x devices
        x gradient accumulation), the rule of Goyal et al. 2017. Without a known batch size
        (a module built by hand) the rate is used as given.
        """
        optim = self.hparams.optim
        lr = float(optim["lr"])
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"optim.lr must be a positive finite number, got {lr}")
        batch_size = self.hparams.get("batch_size")
        reference = optim["reference_batch_size"]
        if not batch_size or not reference:
            return lr, None
        trainer = self._trainer
        world = trainer.world_size * trainer.accumulate_grad_batches if trainer is not None else 1
        global_batch = int(batch_size) * int(world)
        return lr * global_batch / float(reference), global_batch

    def on_train_start(self) -> None:
        # A resumed run's optimizer and schedule are the checkpoint's (restored after
        # configure_optimizers): print the rate it continues with, not this command's optim.lr.
        if not getattr(self.trainer, "ckpt_path", None) or not self.trainer.is_global_zero:
            return
        group = self.trainer.optimizers[0].param_groups[0]
        schedulers = self.trainer.lr_scheduler_configs
        peak = group.get("max_lr") or (schedulers[0].scheduler.base_lrs[0] if schedulers
                                        else group["lr"])  # max_lr: OneCycleLR's peak
        log.info(f"learning rate: {peak:.4g}, continued from the checkpoint (now {group['lr']:.4g}"
                 f" at step {self.trainer.global_step})")

    def configure_optimizers(self) -> Any:
        optim = self.hparams.optim
        lr, global_batch = self.learning_rate()
        resuming = bool(getattr(self.trainer, "ckpt_path", None))  # the rate comes from it: below
        if global_batch is not None and self.trainer.is_global_zero and self.trainer.max_epochs \
                and not resuming:
            reference = optim["reference_batch_size"]
            log.info(f"learning rate: {lr:.4g} (optim.lr={float(optim['lr']):g} per {reference} "
                     f"images, scaled to a global batch of {global_batch})")
        self.effective_lr = lr
        weight_decay = float(optim["weight_decay"])
        if optim["name"] == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(
                self.net.parameters(), lr=lr, momentum=float(optim["momentum"]),
                nesterov=bool(optim["nesterov"]), weight_decay=weight_decay,
            )
        else:
            optimizer = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=weight_decay)

        schedule = self.hparams.scheduler
        if schedule["name"] == "none":
            return optimizer
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        # estimated_stepping_batches builds the train loader before a resumed run's loop state
        # is restored, so the loader's saved position (mid-epoch resume) would never reach it.
        # Dropping it makes the fit loop build it again after the restore.
        reset_train_dataloader(self.trainer)
        if schedule["name"] == "onecycle":
            scheduler: Any = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=lr, total_steps=total_steps,
                pct_start=float(schedule["pct_start"]),
            )
        else:
            # One LambdaLR of warm-up x shape rather than SequentialLR(LinearLR, ...): its state
            # is a step count, so a resumed run continues the schedule exactly.
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                          lr_factor(schedule, total_steps))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lr_factor(schedule: dict[str, Any], total_steps: int) -> Any:
    """Step -> multiple of the base rate: a linear warm-up, then cosine or step decay; keys not
    in ``schedule`` take the schema's defaults."""
    schedule = {**schema_defaults(SchedulerConfig), **schedule}
    warmup_steps = int(total_steps * float(schedule["warmup_fraction"]))
    if schedule["name"] == "cosine":
        def shape(step: int) -> float:
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    else:
        # He et al. 2015: divide by 10 at 32k and 48k of 64k iterations, i.e. at 50% and 75% of
        # training; milestones are fractions of the total steps.
        milestones = [int(f * total_steps) for f in schedule["milestones"]]
        gamma = float(schedule["gamma"])

        def shape(step: int) -> float:
            return gamma ** sum(step >= m for m in milestones)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return shape(step)

    return factor
