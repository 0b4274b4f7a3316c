"""A trained checkpoint predicts correctly anywhere (issue 16, item 1): the checkpoint of the
shared digits run (tests/digits_run.py), loaded in a fresh process, classifies raw uint8 images
at the run's own test accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(1800)  # the shared train.py run; the 2-core machine is shared


PREDICT_IN_A_FRESH_PROCESS = """
import json, sys
from zoo.data.sources import load_in_memory
from zoo.training.module import ZooModule
module = ZooModule.load_from_checkpoint(sys.argv[1], map_location="cpu")
test = load_in_memory("digits", None, 300).test          # raw uint8 (N, 1, 8, 8)
result = module.predict(test.images[:, 0])                # as (N, H, W) grey images
print(json.dumps({"correct": int((result.indices == test.labels).sum()), "count": len(test),
                  "names": result.names[:3], "rows": float(result.probabilities.sum(1).mean())}))
"""


def test_checkpoint_predicts_raw_uint8_images_at_the_runs_test_accuracy(digits_run):
    _, _, _, record = digits_run
    best = record["checkpoints"]["best"] if "checkpoints" in record else None
    best = best or next(Path(digits_run[1], "checkpoints").glob("best-*.ckpt"))
    answer = subprocess.run([sys.executable, "-c", PREDICT_IN_A_FRESH_PROCESS, str(best)],
                            capture_output=True, text=True, timeout=300, cwd=digits_run[0],
                            check=False)
    assert answer.returncode == 0, answer.stderr[-3000:]
    predicted = json.loads(answer.stdout.strip().splitlines()[-1])
    run_correct = round(record["test"]["test/acc"] * predicted["count"])
    assert predicted["correct"] == run_correct, (predicted, record["test"])
    assert predicted["correct"] > 0.3 * predicted["count"]  # trained: far above chance (0.1)
    assert all(name in [str(d) for d in range(10)] for name in predicted["names"])
    assert predicted["rows"] == pytest.approx(1.0)

