"""Train and test any network of the zoo on any dataset.

    python train.py model=resnet56 data=fashion_mnist trainer.max_epochs=30
    python train.py -m model=plain20,plain56,resnet20,resnet56 data=fashion_mnist
    python train.py experiment=degradation

Everything happens in zoo.runs.train.train; this file only composes the config and reports errors.
Exit codes: 0 done, 1 a failure (traceback, or one line for out of memory, a run directory
removed or made read-only mid-run), 2 bad input (one line), 3 the run diverged, 74 no space left
on a device, 129 SIGHUP, 130 Ctrl-C, 138 SIGUSR1, 143 SIGTERM (in any phase: saved, one line).
A sweep (-m) runs every job it can, prints one line per job and exits with the first failed
job's code.
"""

from __future__ import annotations

import errno
import os
import shlex
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from zoo.config.source import one_line_config_errors, register_configs
from zoo.runs import sweep
from zoo.runs.directory import DISK_FULL_EXIT_CODE, disk_full_line, register_resolvers
from zoo.runs.reader import DIVERGED_EXIT_CODE  # the run itself failed, not its input
from zoo.runs.resume import register_resume_resolver
from zoo.training.compat import DDP_PEER_DIED, ddp_peer_death_in_one_line, quiet_library_noise

# Errors caused by the user's input get one clear line, not a traceback (ZOO_DEBUG=1 shows it).
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, NotADirectoryError,
               MisconfigurationException)

register_resolvers()  # ${launch_id:} in hydra.run.dir, resolved when Hydra composes
register_resume_resolver()  # ${resume_dir:...}: a resumed run writes into its checkpoint's run
register_configs()  # model=<any valid depth>, and the config schemas (zoo/config/source.py)
quiet_library_noise()  # library start-up lines a user cannot act on (zoo/training/compat.py)
ddp_peer_death_in_one_line()  # a dead DDP peer: one line, exit 1 (zoo/training/compat.py)


def stop(line: str, exit_code: int) -> None:
    from zoo.runs.log import print_and_log

    print_and_log(line, error=True)  # the terminal and the run's train.log
    sys.exit(exit_code)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """One run; returns its ``objective`` (zoo/runs/objective.py), what Hydra's sweepers see."""
    quiet_library_noise()  # again: joblib's and submitit's workers never ran this file's top
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return sweep.run_job(lambda: run_with_signals(cfg), HydraConfig.get())
    return run_with_signals(cfg)


def run_with_signals(cfg: DictConfig) -> float | None:
    from zoo.runs.signals import SIGNAL_EXIT_CODES, Preempted, requeue_slurm_job, stop_signals

    with stop_signals:  # signals in every phase, not only while Lightning trains
        try:
            value = run_one(cfg)
        except Preempted as stopped:
            stop(str(stopped) + requeue_slurm_job(stopped.signal_name), stopped.exit_code)
        except (KeyboardInterrupt, SystemExit) as signalled:
            # a signal outside fit and test (set-up); Lightning's SystemExit only with a signal
            preempted = stop_signals.preempted(signalled)
            if preempted is None:
                raise
            stop(str(preempted) + requeue_slurm_job(preempted.signal_name), preempted.exit_code)
        if stop_signals.received:  # arrived while finishing: the run completed, but say so
            stop(stop_signals.stop_message(), SIGNAL_EXIT_CODES[stop_signals.received])
    return value


def run_one(cfg: DictConfig) -> float | None:
    from zoo.callbacks import TrainingDivergedError
    from zoo.runs.objective import check_objective, objective_value
    from zoo.runs.train import train

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        check_objective(cfg)
        train(cfg, run_dir=run_dir)
        return objective_value(run_dir, cfg)
    except TrainingDivergedError as diverged:
        stop(f"error: {diverged}", DIVERGED_EXIT_CODE)
    except RuntimeError as error:
        # gloo/NCCL report a dead peer as a RuntimeError deep in a collective, worded per transport
        dead_peer = ("by peer", "remote worker crashing", "Broken pipe")
        if is_out_of_memory(error):
            stop(out_of_memory_line(error, cfg), 1)
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
            path = error.filename or run_dir
            stop(disk_full_line(path, f"writing it: {error.strerror}"), DISK_FULL_EXIT_CODE)
        # deleted while the run wrote into it (a checkpoint save may have made it again): not
        # bad input
        if not os.path.isdir(os.path.join(run_dir, ".hydra")):
            stop(f"error: the run directory {run_dir} was removed while the run was writing "
                 f"into it ({error.strerror or error}): nothing more can be saved; run again", 1)
        if isinstance(error, PermissionError) and run_dir_part(error.filename, run_dir):
            stop(f"error: cannot write {error.filename} ({error.strerror}): the run directory "
                 f"became unwritable mid-run; run.json says how far it got. Make it writable "
                 f"and resume with ckpt_path=auto hydra.run.dir={shlex.quote(run_dir)}", 1)
        if not isinstance(error, USER_ERRORS):
            raise
        user_error(error)
    except USER_ERRORS as error:
        user_error(error)


def is_out_of_memory(error: RuntimeError) -> bool:
    """A GPU's out-of-memory error, or the CPU allocator's."""
    import torch

    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


def out_of_memory_line(error: BaseException, cfg: DictConfig) -> str:
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else "out of memory"
    return (f"error: out of memory during training ({first}); run.json records the step. Try a "
            f"smaller data.batch_size (now {cfg.data.batch_size}) or trainer.precision=bf16-mixed"
            ", and resume with ckpt_path=auto and the same hydra.run.dir")


def run_dir_part(path: object, run_dir: str) -> bool:
    """Whether ``path`` (an error's file name) lies in the run directory."""
    if not path:
        return False
    try:
        return os.path.commonpath([os.path.abspath(str(path)), os.path.abspath(run_dir)]) == \
            os.path.abspath(run_dir)
    except ValueError:
        return False


def user_error(error: BaseException) -> None:
    if os.environ.get("ZOO_DEBUG"):
        raise error
    stop(f"error: {error}", 2)


if __name__ == "__main__":
    with sweep.summary_at_exit():  # a sweep: one line per job, and the first failure's code
        with one_line_config_errors():  # a config that does not compose: one line, exit 2
            main()
