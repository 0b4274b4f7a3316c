"""Train and test any network of the zoo on any dataset.

    python train.py model=resnet56 data=fashion_mnist trainer.max_epochs=30
    python train.py -m model=plain20,plain56,resnet20,resnet56 data=fashion_mnist
    python train.py experiment=degradation

Everything happens in zoo.run.train; this file only composes the config and reports errors.
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from zoo.runs import DIVERGED_EXIT_CODE  # the run itself failed, not its input

# Errors caused by the user's input get one clear line, not a traceback (ZOO_DEBUG=1 shows it).
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, NotADirectoryError, MisconfigurationException)

# Runs of this sweep that diverged. A diverged job is one of a sweep's results (plain1202 in
# experiment=depth_1000, say): the sweep goes on, and the process exits 3 once it is done.
diverged_runs: list[str] = []


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from zoo.callbacks import TrainingDivergedError
    from zoo.checkpoint import Preempted
    from zoo.run import train

    try:
        train(cfg, run_dir=HydraConfig.get().runtime.output_dir)
    except Preempted as stop:
        print(str(stop), file=sys.stderr, flush=True)
        sys.exit(143)  # 128 + SIGTERM: schedulers read it as "terminated", not "done"
    except TrainingDivergedError as stop:
        print(f"error: {stop}", file=sys.stderr, flush=True)
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(DIVERGED_EXIT_CODE)
        diverged_runs.append(f"{cfg.run_name} ({HydraConfig.get().runtime.output_dir})")
    except RuntimeError as error:
        # gloo/NCCL report a dead peer as a RuntimeError deep in a collective, worded per transport
        dead_peer = ("by peer", "remote worker crashing", "Broken pipe")
        if not any(words in str(error) for words in dead_peer) and \
                type(error).__name__ not in ("DistBackendError", "DistNetworkError"):
            raise
        print("error: another DDP process of this run died (its output says why); this one stops too. "
              "Resume with ckpt_path=<run dir>/checkpoints/last.ckpt", file=sys.stderr, flush=True)
        sys.exit(1)
    except USER_ERRORS as error:
        if os.environ.get("ZOO_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
    if diverged_runs:
        print(f"error: {len(diverged_runs)} run(s) of the sweep diverged: {', '.join(diverged_runs)}",
              file=sys.stderr, flush=True)
        sys.exit(DIVERGED_EXIT_CODE)
