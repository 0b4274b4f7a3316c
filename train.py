"""Train and test any network of the zoo on any dataset.

    python train.py model=resnet56 data=fashion_mnist trainer.max_epochs=30
    python train.py -m model=plain20,plain56,resnet20,resnet56 data=fashion_mnist
    python train.py experiment=degradation

Everything happens in zoo.run.train; this file only composes the config and reports errors.
Exit codes: 0 done, 1 a failure (traceback), 2 bad input (one line), 3 the run diverged,
74 no space left on a device, 130 stopped by Ctrl-C, 143 stopped by SIGTERM (in any phase).
"""

from __future__ import annotations

import errno
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from zoo.compat import DDP_PEER_DIED, ddp_peer_death_in_one_line, quiet_library_noise
from zoo.config import one_line_config_errors, register_configs
from zoo.resume import register_resume_resolver
from zoo.rundir import DISK_FULL_EXIT_CODE, disk_full_line, register_resolvers
from zoo.runs import DIVERGED_EXIT_CODE  # the run itself failed, not its input

# Errors caused by the user's input get one clear line, not a traceback (ZOO_DEBUG=1 shows it).
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, NotADirectoryError,
               MisconfigurationException)

# Runs of this sweep that diverged. A diverged job is one of a sweep's results (plain1202 in
# experiment=depth_1000, say): the sweep goes on, and the process exits 3 once it is done.
diverged_runs: list[str] = []

register_resolvers()  # ${launch_id:} in hydra.run.dir, resolved when Hydra composes
register_resume_resolver()  # ${resume_dir:...}: a resumed run writes into its checkpoint's run
register_configs()  # model=<any valid depth>, and the config schemas (zoo/config.py)
quiet_library_noise()  # library start-up lines a user cannot act on (zoo/compat.py)
ddp_peer_death_in_one_line()  # a dead DDP peer: one line, exit 1 (zoo/compat.py)


def stop(line: str, exit_code: int) -> None:
    from zoo.runlog import print_and_log

    print_and_log(line, error=True)  # the terminal and the run's train.log
    sys.exit(exit_code)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """One run; returns its ``objective`` (zoo/objective.py), the value Hydra's sweepers see."""
    from zoo.checkpoint import Preempted, stop_signals

    quiet_library_noise()  # again: joblib's and submitit's workers never ran this file's top
    with stop_signals:  # SIGTERM and Ctrl-C in every phase, not only while Lightning trains
        try:
            value = run_one(cfg)
        except Preempted as stopped:
            stop(str(stopped), stopped.exit_code)
        except (KeyboardInterrupt, SystemExit) as signalled:
            # a signal outside fit and test (set-up); Lightning's SystemExit only with a signal
            preempted = stop_signals.preempted(signalled)
            if preempted is None:
                raise
            stop(str(preempted), preempted.exit_code)
        if stop_signals.received:  # arrived while finishing: the run completed, but say so
            stop(stop_signals.stop_message(), 143 if stop_signals.received == "SIGTERM" else 130)
    return value


def run_one(cfg: DictConfig) -> float | None:
    from zoo.callbacks import TrainingDivergedError
    from zoo.objective import check_objective, objective_value
    from zoo.run import train

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        check_objective(cfg)
        train(cfg, run_dir=run_dir)
        return objective_value(run_dir, cfg)
    except TrainingDivergedError as diverged:
        print(f"error: {diverged}", file=sys.stderr, flush=True)
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(DIVERGED_EXIT_CODE)
        diverged_runs.append(f"{cfg.run_name} ({HydraConfig.get().runtime.output_dir})")
    except RuntimeError as error:
        # gloo/NCCL report a dead peer as a RuntimeError deep in a collective, worded per transport
        dead_peer = ("by peer", "remote worker crashing", "Broken pipe")
        if not any(words in str(error) for words in dead_peer) and \
                type(error).__name__ not in ("DistBackendError", "DistNetworkError"):
            raise
        stop(DDP_PEER_DIED, 1)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):  # before USER_ERRORS: not the input's fault
            if os.environ.get("ZOO_DEBUG"):
                raise
            if type(error).__name__ == "DiskFullError":  # its message names the checkpoint
                stop(f"error: {error.strerror}", DISK_FULL_EXIT_CODE)
            path = error.filename or HydraConfig.get().runtime.output_dir
            stop(disk_full_line(path, f"writing it: {error.strerror}"), DISK_FULL_EXIT_CODE)
        if not isinstance(error, USER_ERRORS):
            raise
        user_error(error)
    except USER_ERRORS as error:
        user_error(error)


def user_error(error: BaseException) -> None:
    if os.environ.get("ZOO_DEBUG"):
        raise error
    stop(f"error: {error}", 2)


if __name__ == "__main__":
    with one_line_config_errors():  # a config that does not compose: one line, exit 2
        main()
    if diverged_runs:
        stop(f"error: {len(diverged_runs)} run(s) of the sweep diverged: "
             f"{', '.join(diverged_runs)}",
             DIVERGED_EXIT_CODE)
