"""The training loop's pieces: the one ``LightningModule`` (:mod:`zoo.training.module`), the
eval-mode training error (:mod:`~zoo.training.train_eval`), ``precision=auto``
(:mod:`~zoo.training.precision`) and the private Lightning/W&B attributes the zoo relies on
(:mod:`~zoo.training.compat`). The measurement callbacks are :mod:`zoo.callbacks`."""
