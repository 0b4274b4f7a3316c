#!/usr/bin/env bash
# The experiments of docs/RESULTS.md at paper-like size, for a session lent one H100/H200.
# NOT YET RUN: no session so far was lent a GPU; the sizes below are estimates meant to fit about
# 12 minutes each on one H200 (bf16 via trainer.precision=auto, channels-last, device-resident
# data). Run one at a time with a timeout and commit what comes back:
#
#   bash scripts/gpu_experiments.sh degradation        # results under $OUT (default gpu-results/)
#
# Carry the wheels the device machine lacks and Fashion-MNIST as /work/.library/device/README.md
# shows (the data in .device_data/fashion-mnist).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true
export ZOO_DATA="${ZOO_DATA:-$PWD/.device_data}"
gpu=(trainer=gpu data.root="$ZOO_DATA/fashion-mnist")

degradation() {  # 10 nets x 3 seeds, full width, 55k images, 15 epochs
  timeout 900 python train.py -m experiment=degradation "${gpu[@]}" hydra.sweep.dir="$out/degradation"
  python -m zoo.results collect "$out/degradation" --out "$out/results/degradation_gpu"
}

explosion() {  # full 55k images, 5 epochs, default guard bounds
  for case in "model=plain56 model.norm=none model.init_gain=1.0,1.2" \
              "model=resnet56 model.norm=none model.zero_init_residual=false,true" "model=resnet56"; do
    # shellcheck disable=SC2086 # the case is a list of overrides
    timeout 300 python train.py -m experiment=explosion_cpu $case seed=0,1,2 data.train_subset=null \
      trainer.max_epochs=5 "${gpu[@]}" hydra.sweep.dir="$out/explosion/${case%% *}-$RANDOM"
  done
  python -m zoo.results collect "$out/explosion" --out "$out/results/explosion_gpu"
}

add_vs_concat() {  # ResNet-56/110 against DenseNet-BC-100-12, 30 epochs, 3 seeds
  timeout 900 python train.py -m experiment=add_vs_concat "${gpu[@]}" seed=0,1,2 \
    hydra.sweep.dir="$out/add_vs_concat"
  python -m zoo.results collect "$out/add_vs_concat" --out "$out/results/add_vs_concat_gpu"
}

depth_1000() {  # full-width ResNet-1202, pre-act ResNet-1001, plain-1202, 1 seed, 5 epochs
  timeout 900 python train.py -m experiment=depth_1000 "${gpu[@]}" trainer.max_epochs=5 \
    hydra.sweep.dir="$out/depth_1000"
  python -m zoo.results collect "$out/depth_1000" --out "$out/results/depth_1000_gpu"
}

weights() {  # the shipped weights' eight nets with their CPU recipe (experiment=lesion_cpu), 1 seed;
  # exported beside the results, not into the package: compare with docs/WEIGHTS.md, then ship
  # with: python -m zoo.weights export RUN_DIR ... --replace. EPOCHS=30 for nets that level off.
  timeout 900 python train.py -m experiment=lesion_cpu seed=0 group=weights_fashion_mnist \
    trainer.max_epochs="${EPOCHS:-3}" \
    model=plain20,plain56,resnet20,resnet56,resnet110,preact_resnet110,densenet40_12,densenet_bc_100_12 \
    "${gpu[@]}" hydra.sweep.dir="$out/weights"
  python -m zoo.weights export "$out"/weights/*-s0 --out "$out/weights_export" \
    --machine "$(tail -1 "$out/device.txt"), torch $(python -c 'import torch; print(torch.__version__)')"
}

memory() {
  timeout 300 python -m zoo.experiments memory --device cuda --batch-size 128 --out "$out/results/memory_gpu"
}

nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/device.txt"
"${1:?name an experiment: degradation, explosion, add_vs_concat, depth_1000, weights, memory}"
