"""A sweep (``train.py -m``) runs every job it can and ends with one line per job.

Hydra's basic launcher runs the jobs one after the other in this process; a job that ended with
``sys.exit`` (one ``error:`` line and exit code 2 for a bad value, 3 for a diverged run) used to
end the whole sweep at that job, and nothing listed what had run. :func:`run_job` records each
job's outcome instead and lets the sweep go on; a signal (Ctrl-C, SIGTERM, SIGUSR1, SIGHUP) still
stops the sweep, since that is what it asks for. :func:`summary_at_exit` prints the summary (job,
status, exit code, run directory) and exits with the first failed job's code (0 when all ran).

Launchers that run jobs in other processes (joblib, submitit) report each job's exit there; the
summary lists the jobs of this process.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.runs.exits import ExitCode, status_of

# signals: the user (or the cluster) stops everything
STOPS_THE_SWEEP = tuple(code for code in ExitCode if code.is_signal)
LIST_AT_MOST = 20  # jobs listed one per line; beyond that only those that did not finish


@dataclass(frozen=True)
class JobOutcome:
    number: int
    overrides: tuple[str, ...]
    exit_code: int
    run_dir: str

    @property
    def status(self) -> str:
        return status_of(self.exit_code)


jobs: list[JobOutcome] = []


def run_job(run: Callable[[], Any], hydra_config: Any) -> Any:
    """Run one job of a sweep and record how it ended; only a signal ends the sweep. Returns
    what ``run`` returns (the objective Hydra's sweepers read), None when the job failed."""
    number, overrides = int(hydra_config.job.num), tuple(hydra_config.overrides.task)
    run_dir = str(hydra_config.runtime.output_dir)
    try:
        value = run()
    except SystemExit as ended:  # the job's one line is printed already
        code = ended.code if isinstance(ended.code, int) else 1
        jobs.append(JobOutcome(number, overrides, code, run_dir))
        if code in STOPS_THE_SWEEP or code == 0:
            raise
        return
    except Exception:  # noqa: BLE001 - a bug in one job: show it, run the next
        traceback.print_exc()
        jobs.append(JobOutcome(number, overrides, 1, run_dir))
        return
    jobs.append(JobOutcome(number, overrides, 0, run_dir))
    return value


def summary_lines(outcomes: list[JobOutcome]) -> list[str]:
    """One line per job (the first :data:`LIST_AT_MOST`, then only those that did not finish):
    its number, status, exit code, run directory and the overrides that set it apart."""
    failed = [job for job in outcomes if job.exit_code != 0]
    shown = outcomes if len(outcomes) <= LIST_AT_MOST else failed
    common = set.intersection(*(set(job.overrides) for job in outcomes))
    folders = {str(Path(job.run_dir).parent) for job in outcomes}
    in_one = len(folders) == 1
    lines = [f"sweep: {len(outcomes) - len(failed)} of {len(outcomes)} jobs done"
             + (f" in {folders.pop()}/" if in_one else "")
             + ("" if shown is outcomes else f" (listed: the {len(failed)} that were not)"),
             f"  {'job':>4}  {'status':<10} {'exit':>4}  run directory  overrides of its own"]
    for job in shown:
        where = Path(job.run_dir).name if in_one else job.run_dir
        own = " ".join(o for o in job.overrides if o not in common)
        lines.append(f"  {job.number:>4}  {job.status:<10} {job.exit_code:>4}  {where}  {own}")
    return lines


@contextmanager
def summary_at_exit() -> Iterator[None]:
    """Around ``main()``: after a sweep, the summary and the first failed job's exit code."""
    try:
        yield
    finally:
        if jobs:
            outcomes = list(jobs)
            jobs.clear()
            print("\n".join(summary_lines(outcomes)), flush=True)
            failed = [job for job in outcomes if job.exit_code != 0]
            if failed and sys.exc_info()[0] is None:
                counts: dict[str, int] = {}
                for job in failed:
                    counts[job.status] = counts.get(job.status, 0) + 1
                print(f"error: {len(failed)} of {len(outcomes)} jobs of the sweep did not finish ("
                      + ", ".join(f"{n} {status}" for status, n in counts.items())
                      + f"): see the lines above; the exit code is job {failed[0].number}'s",
                      file=sys.stderr, flush=True)
                sys.exit(failed[0].exit_code)
