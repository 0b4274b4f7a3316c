"""Benchmarks of the zoo against its baselines, each measured in the same process run (issue 7).

    python -m zoo.bench loop   [--device cpu|cuda] [--size small|full] [--repeats N] [--out FILE]
                               [--precision 32-true bf16-mixed] [--input 1x28x28] [--batch-size N]
    python -m zoo.bench data   [...]
    python -m zoo.bench models [...] [--models resnet20,resnet50] [--compile | --no-compile]
    python -m zoo.bench all    [...]

* ``loop`` (:mod:`zoo.bench.loop`): Lightning + :class:`zoo.training.module.ZooModule` (Lightning's
  default logger and progress bar) with and without the measurement callbacks, against a
  hand-written PyTorch loop with the same network, batch, precision and optimizer, on the same
  synthetic batches already on the device. Target: zoo >= 0.97x, with the gradient-flow callback
  at its default frequency >= 0.95x. Given two precisions, also bf16 against fp32 (target 1.6x
  for ResNet-20 at batch 128 on a CPU with bf16 matrix units, issue 13).
* ``data`` (:mod:`zoo.bench.data`): the device-resident loader against torchvision's
  ``DataLoader`` + transforms at its best worker count. Target: >= 5x on GPU, faster on CPU.
* ``models`` (:mod:`zoo.bench.models`): training img/s and peak memory of a network of every
  family at its native resolution, eager and compiled, memory-efficient off and on. Target:
  memory-efficient DenseNet <= 0.55x memory, <= 1.5x step time.

``--precision`` takes ``32-true``, ``bf16-mixed`` or both (default ``auto``: what
``trainer.precision=auto`` picks on this machine); bf16 on the CPU is
``torch.autocast("cpu", dtype=torch.bfloat16)``, as Lightning's ``bf16-mixed``. Every step of
every baseline is :class:`zoo.bench.common.TrainStep`.

Every result is one JSON line on stdout (and appended to ``--out``) with absolute figures, the
baseline measured in the same run, ``ratio = zoo_img_per_s / baseline_img_per_s`` (above 1: the
zoo is faster), the device, the CPU model and whether it has ``avx512_bf16`` / ``amx_bf16``,
core count and torch version; a table of the same results follows at the end, each ratio
with its target and the verdict (meets / MISSES the target). Figures are
medians over ``--repeats`` timed repeats taken after warm-up, contestants alternating so that
drift in machine load hits all alike; ``ratio_paired_median`` is the median of the per-repeat
ratios. Timing: CUDA work is asynchronous, so every timed window starts and ends with
``torch.cuda.synchronize()``; nothing synchronises inside a window. Peak memory:
:func:`zoo.measure.memory.peak_step_memory`.
"""

from zoo.bench.cli import BENCHMARKS, SIZES, main, parse_args
from zoo.bench.common import environment
from zoo.bench.loop import LOOP_SIZES, LOOP_VARIANTS
from zoo.bench.models import MODEL_SIZES, native_input

__all__ = ["BENCHMARKS", "LOOP_SIZES", "LOOP_VARIANTS", "MODEL_SIZES", "SIZES", "environment",
           "main", "native_input", "parse_args"]
