"""Train and test any network of the zoo on any dataset.

    python train.py model=resnet56 data=fashion_mnist trainer.max_epochs=30
    python train.py -m model=plain20,plain56,resnet20,resnet56 data=fashion_mnist
    python train.py experiment=degradation

Everything happens in zoo.runs.train.train; this file only composes the config and reports errors.
Exit codes (zoo.runs.exits.ExitCode): 0 done, 1 a failure (traceback, or one line for out of
memory, a run directory removed or made read-only mid-run), 2 bad input (one line), 3 the run
diverged, 74 no space left on a device, 129 SIGHUP, 130 Ctrl-C, 138 SIGUSR1, 143 SIGTERM (in any
phase: saved, one line).
A sweep (-m) runs every job it can, prints one line per job and exits with the first failed
job's code.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from zoo.config.source import one_line_config_errors, register_configs
from zoo.runs import sweep
from zoo.runs.directory import register_resolvers
from zoo.runs.exits import ExitCode
from zoo.runs.resume import register_resume_resolver
from zoo.training.compat import ddp_peer_death_in_one_line, quiet_library_noise

register_resolvers()  # ${launch_id:} in hydra.run.dir, resolved when Hydra composes
register_resume_resolver()  # ${resume_dir:...}: a resumed run writes into its checkpoint's run
register_configs()  # model=<any valid depth>, and the config schemas (zoo/config/source.py)
quiet_library_noise()  # library start-up lines a user cannot act on (zoo/training/compat.py)
ddp_peer_death_in_one_line()  # a dead DDP peer: one line, exit 1 (zoo/training/compat.py)


def stop(line: str, exit_code: ExitCode) -> None:
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
    from zoo.runs.exits import SIGNAL_EXIT_CODES
    from zoo.runs.signals import Preempted, requeue_slurm_job, stop_signals

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
    from zoo.runs.exits import ending_of
    from zoo.runs.objective import check_objective, objective_value
    from zoo.runs.train import train

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        check_objective(cfg)
        train(cfg, run_dir=run_dir)
        return objective_value(run_dir, cfg)
    except Exception as error:  # each known way a run ends: one line and its exit code
        ending = ending_of(error, run_dir, cfg.data.batch_size)
        if ending is None:
            raise
        stop(*ending)


if __name__ == "__main__":
    with sweep.summary_at_exit():  # a sweep: one line per job, and the first failure's code
        with one_line_config_errors():  # a config that does not compose: one line, exit 2
            main()
