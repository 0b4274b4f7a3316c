"""Training error as the papers mean it: an eval-mode pass over the whole training set.

The running ``train/acc`` of a fit is the average over augmented batches seen in train mode while
the weights change, so it lags and is biased by augmentation and BatchNorm's batch statistics.
He et al. 2015 (Figure 6) and every degradation plot since read the *training error of the
network*: the trained weights, eval mode, no augmentation, every training image. This callback
measures that at the end of fit and, if asked, every N epochs, and logs ``train_eval/err``,
``train_eval/acc`` and ``train_eval/loss`` to every logger (CSV, W&B, TensorBoard).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

PREFIX = "train_eval"


class TrainEvalPass(pl.Callback):
    """``every_n_epochs``: also after every N-th epoch (None: only at the end of fit)."""

    def __init__(self, every_n_epochs: int | None = None, at_end: bool = True) -> None:
        if every_n_epochs is not None and (not isinstance(every_n_epochs, int)
                                           or every_n_epochs < 1):
            raise ValueError(f"train_eval.every_n_epochs must be a whole number >= 1 or null, "
                             f"got {every_n_epochs!r}")
        self.every_n_epochs = every_n_epochs
        self.at_end = at_end
        self.last: dict[str, float] = {}
        self._measured_at_step: int | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._measure_and_log(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_end and self._measured_at_step != trainer.global_step:
            self._measure_and_log(trainer, pl_module)

    def _measure_and_log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = getattr(trainer.datamodule, "train_eval_dataloader", lambda: None)()
        if loader is None:
            return
        metrics = evaluate(pl_module, loader, trainer.precision_plugin.forward_context)
        metrics = {k: float(trainer.strategy.reduce(torch.tensor(v, device=pl_module.device),
                                                    reduce_op="sum")) for k, v in metrics.items()}
        count = max(1.0, metrics.pop("count"))
        wrong, loss = metrics["wrong"], metrics["loss_sum"]
        self.last = {f"{PREFIX}/err": wrong / count, f"{PREFIX}/acc": 1.0 - wrong / count,
                     f"{PREFIX}/loss": loss / count}
        self._measured_at_step = trainer.global_step
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(self.last, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"last": dict(self.last)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last = dict(state_dict.get("last", {}))


def evaluate(pl_module: pl.LightningModule, loader: Any, forward_context: Any) -> dict[str, float]:
    """Summed loss, wrong predictions and image count of ``pl_module`` over ``loader``."""
    was_training = pl_module.training
    pl_module.eval()
    # Sums stay on the device until the end: no host synchronisation per batch.
    totals = torch.zeros(3, dtype=torch.float64, device=pl_module.device)
    try:
        with torch.inference_mode(), forward_context():
            for images, labels in loader:
                images = images.to(pl_module.device, non_blocking=True)
                labels = labels.to(pl_module.device, non_blocking=True)
                logits = pl_module(images).float()
                totals[0] += F.cross_entropy(logits, labels, reduction="sum")
                totals[1] += (logits.argmax(1) != labels).sum()
                totals[2] += labels.numel()
    finally:
        pl_module.train(was_training)
    loss_sum, wrong, count = totals.tolist()
    return {"wrong": wrong, "loss_sum": loss_sum, "count": count}
