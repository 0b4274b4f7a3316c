#!/usr/bin/env bash
# The GPU checks of issues 5 and 7, in one run (about 10 minutes on one H100/H200).
# On a lent device machine with torch/Lightning preinstalled and the other wheels carried in
# .whl/ (see /work/.library/device/README.md), and Fashion-MNIST copied to .device_data/:
#   bash scripts/gpu_checks.sh            # results land in $OUT (or ./gpu-results)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline ZOO_DATA="${ZOO_DATA:-$PWD/.device_data}"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/device.txt"
python -m pytest -m gpu -q tests/test_bench.py 2>&1 | tee "$out/pytest-gpu.txt"
timeout 120 python -m zoo.bench loop --device cuda --repeats 3 --out "$out/bench.jsonl"
timeout 120 python -m zoo.bench data --device cuda --repeats 3 --out "$out/bench.jsonl"
timeout 240 python -m zoo.bench models --device cuda --models resnet50,densenet121 --out "$out/bench.jsonl"
timeout 180 python train.py experiment=fmnist_speed data.root="$ZOO_DATA/fashion-mnist" \
  hydra.run.dir="$out/fmnist_speed" 2>&1 | tail -5 | tee "$out/fmnist_speed.txt"
