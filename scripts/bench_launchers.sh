#!/usr/bin/env bash
# The same small sweep twice: serially (Hydra's basic launcher, one process, torch's default
# intra-op threads: one per core) and with hydra/launcher=joblib, 2 jobs x 1 intra-op thread.
# Prints both wall times, the ratio serial / joblib and its verdict against the target.
#   bash scripts/bench_launchers.sh [more train.py overrides, e.g. trainer.max_epochs=4]
# The sweep is one of the experiments' kind: four ResNet-20 runs of 125 steps on Fashion-MNIST
# and their test passes (with runs of a few seconds, joblib's worker start-up -- torch,
# Lightning and the zoo imported again -- outweighs the parallelism). Needs the cluster extra (pip install -e ".[cluster]") and the
# dataset (apt-get install dataset-fashion-mnist). Run it on a quiet machine: other jobs on the
# cores change both times. Logs and run directories: $OUT (default /tmp/bench_launchers).
# With RESULTS=docs/results/launchers the numbers are also written there (result.json and the
# summary.md that docs/BENCHMARKS.md shows).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/bench_launchers}
TARGET=${TARGET:-1.5}  # 2 jobs on 2 cores: 2.0x at best; the serial run has 2 threads too
rm -rf "$OUT" && mkdir -p "$OUT"
SWEEP=(model=resnet20 data=fashion_mnist data.train_subset=4000 data.batch_size=64
       data.num_workers=0 seed=1,2,3,4 trainer.max_epochs=2 trainer.accelerator=cpu trainer.devices=1 logger=csv
       callbacks.progress_bar=none "$@")
export WANDB_MODE=offline WANDB_SILENT=true

time_sweep() {  # name, intra-op threads per process, launcher overrides...; prints seconds
  local name=$1 threads=$2; shift 2
  local start end
  start=$(date +%s.%N)
  OMP_NUM_THREADS=$threads python3 train.py -m "${SWEEP[@]}" "hydra.sweep.dir=$OUT/$name" "$@" >"$OUT/$name.log" 2>&1 \
    || { echo "error: the $name sweep failed, see $OUT/$name.log" >&2; exit 1; }
  end=$(date +%s.%N)
  python3 -c "print(f'{$end - $start:.1f}')"
}

cores=$(python3 -c "import os; print(len(os.sched_getaffinity(0)))")
serial=$(time_sweep serial "$cores")
parallel=$(time_sweep joblib 1 hydra/launcher=joblib hydra.launcher.n_jobs=2)
runs=$(find "$OUT" -name run.json | wc -l)
python3 - "$serial" "$parallel" "$TARGET" "$cores" "$runs" "${SWEEP[@]}" <<'PY'
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from zoo.training.precision import cpu_model

serial, parallel, target, cores, runs = (float(a) for a in sys.argv[1:6])
ratio = serial / parallel
verdict = "meets" if ratio >= target else "misses"
print(f"{cpu_model()}, {cores:.0f} cores, torch {torch.__version__}; "
      f"{runs:.0f} of 8 run.json written")
print(f"serial (basic launcher, {cores:.0f} threads): {serial:.1f} s")
print(f"joblib (2 jobs x 1 thread):        {parallel:.1f} s")
print(f"ratio serial/joblib: {ratio:.2f}x, target >= {target:.2f}x: {verdict} the target")
if os.environ.get("RESULTS"):
    out = Path(os.environ["RESULTS"])
    out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    record = {"date": datetime.date.today().isoformat(), "commit": commit,
              "machine": f"{cpu_model()}, {cores:.0f} cores", "torch": torch.__version__,
              "command": "RESULTS=docs/results/launchers bash scripts/bench_launchers.sh",
              "sweep": sys.argv[6:], "serial_s": round(serial, 1), "joblib_s": round(parallel, 1),
              "ratio": round(ratio, 2), "target": target}
    (out / "result.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "summary.md").write_text(
        f"| launcher | wall time of the 4-run sweep |\n|---|---|\n"
        f"| basic (serial, {cores:.0f} intra-op threads) | {record['serial_s']:.1f} s |\n"
        f"| joblib (2 jobs x 1 thread) | {record['joblib_s']:.1f} s |\n"
        f"| **ratio serial / joblib** | **{record['ratio']:.2f}x** (target {target:.1f}x) |\n\n"
        f"{record['machine']}, torch {record['torch']}, {record['date']}, commit {commit}: "
        f"`{record['command']}`\n")
PY
