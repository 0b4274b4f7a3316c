#!/usr/bin/env bash
# Every experiment of docs/RESULTS.md at CPU size, exactly as it was run for that page (2-core
# CPU, bf16 autocast through trainer.precision=auto). Each writes its runs under multirun/ and
# its tidy results under docs/results/<experiment>/; `python -m zoo.results redraw` then draws
# every figure and table from docs/results/ alone.
#
#   bash scripts/cpu_experiments.sh degradation      # one experiment (~40 min)
#   bash scripts/cpu_experiments.sh all              # all of them, one after the other
#
# GPU-size versions: scripts/gpu_experiments.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1
runs="${RUNS:-multirun}"
results="${RESULTS:-docs/results}"

degradation() {  # plain/residual x depth 8..110 x 3 seeds, Fashion-MNIST 8k x 5 epochs
  python train.py -m experiment=degradation_cpu hydra.sweep.dir="$runs/degradation_cpu"
  python -m zoo.results collect "$runs/degradation_cpu" --out "$results/degradation"
}

lr_sweep() {  # plain-56's failure is not a learning-rate artefact: 4 more rates x 3 seeds,
  # and plain-20 at the two highest, so that each plain net is compared at its best rate
  python train.py -m experiment=degradation_cpu model=plain56 optim.lr=0.025,0.05,0.2 \
    seed=0,1,2 hydra.sweep.dir="$runs/degradation_lr"
  lr_sweep_high
}

lr_sweep_high() {  # run after lr_sweep showed plain-56 improving up to the highest rate tried
  python train.py -m experiment=degradation_cpu model=plain20,plain56 optim.lr=0.2,0.4 \
    seed=0,1,2 hydra.sweep.dir="$runs/degradation_lr_high"
  python -m zoo.results collect "$runs/degradation_lr" "$runs/degradation_lr_high" \
    "$runs/degradation_cpu"/*-plain20-* "$runs/degradation_cpu"/*-plain56-* \
    "$runs/degradation_cpu"/*-resnet56-* --out "$results/degradation_lr"
}

lesion_long() {  # Veit et al.'s standard: the paper's widths, 55k images, 2,577 steps, 3 seeds;
  # ResNet-56 and the plain nets as two one-thread jobs side by side
  OMP_NUM_THREADS=1 python train.py -m experiment=lesion_cpu model=resnet56 seed=0,1,2 \
    hydra.sweep.dir="$runs/lesion_cpu/resnet56" &
  OMP_NUM_THREADS=1 python train.py -m experiment=lesion_cpu model=plain20 seed=0,1,2 \
    hydra.sweep.dir="$runs/lesion_cpu/plain20"
  OMP_NUM_THREADS=1 python train.py -m experiment=lesion_cpu model=plain56 seed=0,1,2 \
    hydra.sweep.dir="$runs/lesion_cpu/plain56"
  wait
  local common=(--seed 0 --split test --max-images 0 --draws 20 --random-max-images 1000
                --calibration-images 2000 --gain-images 1000 --bf16 --append
                --out "$results/lesion_long")
  for run in "$runs"/lesion_cpu/resnet56/*-s[0-9]; do  # one run at a time, rows appended
    python -m zoo.experiments lesion "$run" --max-deleted 8 "${common[@]}"
  done
  for run in "$runs"/lesion_cpu/plain*/*-s[0-9]; do  # at chance from k = 1: k up to 4 is enough
    python -m zoo.experiments lesion "$run" --max-deleted 4 "${common[@]}"
  done
}

weights() {  # the shipped Fashion-MNIST weights (zoo/weights, docs/WEIGHTS.md): seed 0 of the
  # lesion runs (plain-20, plain-56, ResNet-56), and the other nets with the same recipe
  for model in resnet20 resnet110 preact_resnet110 densenet40_12 densenet_bc_100_12; do
    OMP_NUM_THREADS=1 python train.py -m experiment=lesion_cpu model=$model seed=0 \
      group=weights_fashion_mnist hydra.sweep.dir="$runs/weights_cpu/$model"
  done
  # --replace: this step exists to remake the shipped files (export refuses to replace by default)
  python -m zoo.weights export "$runs"/lesion_cpu/*/*-s0 "$runs"/weights_cpu/*/*-s0 --replace \
    --machine "2-core AMD EPYC (avx512_bf16), torch 2.14.1, bf16 autocast"
  python -m zoo.weights table --write docs/WEIGHTS.md
}

lesion() {  # on the trained nets of the degradation sweep, full test split
  python -m zoo.experiments lesion "$runs/degradation_cpu"/*-resnet56-* \
    "$runs/degradation_cpu"/*-plain20-* "$runs/degradation_cpu"/*-plain56-* \
    --split test --max-images 0 --max-deleted 8 --draws 3 --bf16 --out "$results/lesion"
}

gradient_at_init() {
  python -m zoo.experiments gradient_at_init --out "$results/gradient_at_init" \
    --depths 8 20 32 44 56 110 218 1202 --seeds 3 --norms batch none
}

memory() {
  python -m zoo.experiments memory --out "$results/memory"
}

explosion() {  # default guard bounds; the first bad step is recorded in each run.json
  local common=(experiment=explosion_cpu seed=0,1,2)
  python train.py -m "${common[@]}" model=plain56 model.norm=none model.init_gain=1.0,1.2 \
    hydra.sweep.dir="$runs/explosion_cpu/plain" || true   # exit 3: some runs diverge, as expected
  python train.py -m "${common[@]}" model=resnet56 model.norm=none \
    model.zero_init_residual=false,true hydra.sweep.dir="$runs/explosion_cpu/resnet_nonorm" || true
  python train.py -m "${common[@]}" model=resnet56 hydra.sweep.dir="$runs/explosion_cpu/resnet_bn"
  python -m zoo.results collect "$runs/explosion_cpu" --out "$results/explosion"
}

explosion_long() {  # explosion at 4x the steps (8 epochs = 624), every setting of the page,
  # 3 seeds; two one-thread queues side by side (2 cores)
  local common=(experiment=explosion_cpu trainer.max_epochs=8 seed=0,1,2)
  export OMP_NUM_THREADS=1
  { python train.py -m "${common[@]}" model=plain56 model.norm=none model.init_gain=1.0,1.2 \
      hydra.sweep.dir="$runs/explosion_long/plain" || true   # exit 3: diverged runs, as expected
    python train.py -m "${common[@]}" model=resnet56 model.norm=none \
      model.zero_init_residual=false,true hydra.sweep.dir="$runs/explosion_long/resnet_nonorm" || true
  } &
  python train.py -m "${common[@]}" model=resnet56 hydra.sweep.dir="$runs/explosion_long/resnet_bn"
  # zero-init of the last layer alone (no Fixup rescaling), at the recipe's rate and at a fifth
  python train.py -m "${common[@]}" model=resnet56 model.norm=none model.zero_init_residual=true \
    model.fixup_rescale=false optim.lr=0.1,0.02 hydra.sweep.dir="$runs/explosion_long/zero_init_only" \
    || true
  wait
  python -m zoo.results collect "$runs/explosion_long" --out "$results/explosion_long"
}

add_vs_concat() {  # addition against concatenation at equal parameters and equal seconds
  python train.py -m experiment=add_vs_concat_cpu hydra.sweep.dir="$runs/add_vs_concat_cpu"
  python -m zoo.results collect "$runs/add_vs_concat_cpu" --out "$results/add_vs_concat"
}

add_vs_concat_lr() {  # ResNet-56's spread above is not a learning-rate artefact: 2 more rates
  python train.py -m experiment=add_vs_concat_cpu model=resnet56 optim.lr=0.05,0.2 seed=0,1,2 \
    hydra.sweep.dir="$runs/add_vs_concat_lr"
  python -m zoo.results collect "$runs/add_vs_concat_lr" "$runs/add_vs_concat_cpu"/*-resnet56-* \
    --out "$results/add_vs_concat_lr"
}

add_vs_concat_time() {  # at equal seconds: ResNet-20/32 given the DenseNets' training time (24 epochs)
  python train.py -m experiment=add_vs_concat_cpu model=resnet20,resnet32 trainer.max_epochs=24 \
    hydra.sweep.dir="$runs/add_vs_concat_time"
  python -m zoo.results collect "$runs/add_vs_concat_time" "$runs/add_vs_concat_cpu"/*-densenet* \
    --out "$results/add_vs_concat_time"
}

add_vs_concat_long() {  # addition against concatenation at 4x the steps (12 epochs = 744):
  # DenseNet-40-12 and DenseNet-BC-100-12 against ResNet-20/32/56/110, 3 seeds, two one-thread
  # queues side by side (DenseNet-BC-100-12: ~25 min a run here, DenseNet-40-12 ~15).
  export OMP_NUM_THREADS=1
  local common=(experiment=add_vs_concat_cpu trainer.max_epochs=12 seed=0,1,2)
  { python train.py -m "${common[@]}" model=densenet40_12 \
      hydra.sweep.dir="$runs/add_vs_concat_long/densenet40_12"
    python train.py -m "${common[@]}" model=densenet_bc_100_12 \
      hydra.sweep.dir="$runs/add_vs_concat_long/densenet_bc_100_12"; } &
  python train.py -m "${common[@]}" model=resnet20,resnet32,resnet56 \
    hydra.sweep.dir="$runs/add_vs_concat_long/resnet20_32_56"
  python train.py -m "${common[@]}" model=resnet110 \
    hydra.sweep.dir="$runs/add_vs_concat_long/resnet110"
  wait
  python -m zoo.results collect "$runs/add_vs_concat_long" --out "$results/add_vs_concat_long"
}

depth_1000() {  # narrow 1202/1001-layer nets against shallow nets of the same width and budget
  python train.py -m experiment=depth_1000_cpu hydra.sweep.dir="$runs/depth_1000_cpu" || true
  python -m zoo.results collect "$runs/depth_1000_cpu" --out "$results/depth_1000"
}

depth_1000_zero_init() {  # the recipe control: every residual branch's last BN starts at zero
  # (Goyal et al. 2017), so a 1202-layer net starts as a shallow one; its logits at init are not
  # inflated by 600 added branches (ResNet-1202's first loss above: ~10, against ln 10 = 2.3).
  python train.py -m experiment=depth_1000_cpu model=resnet20,resnet110,resnet1202 \
    model.zero_init_residual=true hydra.sweep.dir="$runs/depth_1000_zero_init"
  python -m zoo.results collect "$runs/depth_1000_cpu" "$runs/depth_1000_zero_init" \
    --out "$results/depth_1000"
}

depth_1000_preact() {  # pre-activation ResNet-1001 (clean identity path, final BN-ReLU: first
  # loss ~2.3) against pre-activation ResNet-110 and ResNet-110 of the same width, data and budget
  python train.py -m experiment=depth_1000_preact_cpu hydra.sweep.dir="$runs/depth_1000_preact_cpu"
  python -m zoo.results collect "$runs/depth_1000_preact_cpu" --out "$results/depth_1000_preact"
}

depth_1000_preact164() {  # the matched pair for pre-activation ResNet-1001: pre-activation
  # ResNet-164, the same bottleneck blocks and widths, data and 744 steps (He et al. 2016, Table 3)
  OMP_NUM_THREADS=1 python train.py -m experiment=depth_1000_preact_cpu model=preact_resnet164 \
    seed=0,1,2 hydra.sweep.dir="$runs/depth_1000_preact164"
  python -m zoo.results collect "$runs/depth_1000_preact_cpu" "$runs/depth_1000_preact164" \
    --out "$results/depth_1000_preact"
}

depth_1000_long() {  # the original ResNet-1202 at depth_1000_preact's 744 steps, 3 seeds, beside
  # ResNet-110's 744-step runs of depth_1000_preact (run that first). Session 6 ran seed 0 alone
  # (29.5 min), session 7 seeds 1 and 2 side by side at one thread each (OMP_NUM_THREADS=1)
  python train.py -m experiment=depth_1000_cpu model=resnet1202 trainer.max_epochs=8 seed=0,1,2 \
    hydra.sweep.dir="$runs/depth_1000_long"
  python -m zoo.results collect "$runs/depth_1000_long" "$runs"/depth_1000_preact_cpu/*-resnet110-* \
    --out "$results/depth_1000_long"
}

depth_1000_lr() {  # is ResNet-1202's gap to ResNet-110 a learning-rate artefact? both nets at
  # half and twice the rate of depth_1000 (lr 0.1), 3 seeds (ResNet-1202 at lr 0.05: seed 0 in
  # session 5, seeds 1-2 side by side at one thread each in session 7)
  python train.py -m experiment=depth_1000_cpu model=resnet110 optim.lr=0.05,0.2 \
    hydra.sweep.dir="$runs/depth_1000_lr"
  python train.py -m experiment=depth_1000_cpu model=resnet1202 optim.lr=0.2 \
    hydra.sweep.dir="$runs/depth_1000_lr_b"
  python train.py -m experiment=depth_1000_cpu model=resnet1202 optim.lr=0.05 \
    hydra.sweep.dir="$runs/depth_1000_lr_c"
  python -m zoo.results collect "$runs/depth_1000_cpu" "$runs/depth_1000_lr" "$runs/depth_1000_lr_b" \
    "$runs/depth_1000_lr_c" --out "$results/depth_1000_lr"
}

precision_parity() {  # bf16 against fp32 on the CPU: accuracy (docs/BENCHMARKS.md)
  # 20k images x 6 epochs x 3 seeds; the two precisions side by side, one thread each (2 cores)
  for precision in 32-true bf16-mixed; do
    OMP_NUM_THREADS=1 python train.py -m model=resnet20 data=fashion_mnist data.train_subset=20000 \
      trainer.max_epochs=6 trainer.precision=$precision seed=0,1,2 logger=csv \
      callbacks.progress_bar=none hydra.sweep.dir="$runs/precision_parity_$precision" &
  done
  wait
  python -m zoo.results collect "$runs/precision_parity_32-true" "$runs/precision_parity_bf16-mixed" \
    --out "$results/precision_parity"
}

vit_gradients() {  # ViT at init: pre-LN, post-LN, no norm, +/- skips, 2..64 blocks, 2 inits (~5 min)
  python -m zoo.experiments vit_gradients --out "$results/vit_gradients_at_init" \
    --depths 2 4 8 16 32 64 --seeds 3
}

vit_rank() {  # ViT at init: tokens' distance from rank one after each of 64 blocks (~4 min)
  python -m zoo.experiments vit_rank --out "$results/vit_rank_at_init" --depth 64 --seeds 3
}

vit_degradation() {  # pre-LN, post-LN (x warm-up or not) and no-skip ViT-mini, 2/6/12 blocks,
  # 3 seeds, Fashion-MNIST 4k x 3 epochs: 54 runs at one thread each (estimate in RESULTS.md)
  OMP_NUM_THREADS=1 python train.py -m experiment=vit_degradation_cpu \
    hydra.sweep.dir="$runs/vit_degradation_cpu/skip"
  OMP_NUM_THREADS=1 python train.py -m experiment=vit_degradation_cpu \
    model=plain_vit_mini_p7_d2,plain_vit_mini_p7_d6,plain_vit_mini_p7_d12 model.norm=pre \
    hydra.sweep.dir="$runs/vit_degradation_cpu/plain"
  python -m zoo.results collect "$runs/vit_degradation_cpu"/* --out "$results/vit_degradation"
}

vit_long() {  # the budget control: the 12-block nets at 4x the steps (12 epochs = 744 steps),
  # pre-LN with warm-up, its plain twin, post-LN without warm-up (Xiong et al.'s failure case)
  export OMP_NUM_THREADS=1
  local common=(experiment=vit_degradation_cpu seed=0,1,2 trainer.max_epochs=12)
  python train.py -m "${common[@]}" model=vit_mini_p7_d12 model.norm=pre \
    scheduler.warmup_fraction=0.1 hydra.sweep.dir="$runs/vit_long/pre_warmup" &
  python train.py -m "${common[@]}" model=plain_vit_mini_p7_d12 model.norm=pre \
    scheduler.warmup_fraction=0.1 hydra.sweep.dir="$runs/vit_long/plain_warmup"
  wait
  python train.py -m "${common[@]}" model=vit_mini_p7_d12 model.norm=post \
    scheduler.warmup_fraction=0.0 hydra.sweep.dir="$runs/vit_long/post_nowarmup"
  python -m zoo.results collect "$runs/vit_long" --out "$results/vit_long"
}

vit_lesion() {  # on vit_degradation's 12-block nets with warm-up: pre-LN against no skip
  python -m zoo.experiments lesion "$runs/vit_degradation_cpu"/*/*-vit_mini_p7_d12-pre-warmup0.1-* \
    "$runs/vit_degradation_cpu"/*/*-plain_vit_mini_p7_d12-pre-warmup0.1-* \
    --split test --max-images 0 --max-deleted 8 --draws 3 --out "$results/vit_lesion"
}

vit_rank_trained() {  # the same runs' tokens after training, every depth, with warm-up
  python -m zoo.experiments vit_rank_trained "$runs/vit_degradation_cpu"/*/*-warmup0.1-* \
    --max-images 256 --out "$results/vit_rank_trained"
}

vit() {
  vit_gradients; vit_rank; vit_degradation; vit_long; vit_lesion; vit_rank_trained
}

all() {
  gradient_at_init; memory; degradation; lr_sweep; lesion; lesion_long; weights; explosion; explosion_long; add_vs_concat; add_vs_concat_lr; add_vs_concat_time; add_vs_concat_long
  depth_1000; depth_1000_zero_init; depth_1000_preact; depth_1000_preact164; depth_1000_long; depth_1000_lr
  precision_parity
  vit
  python -m zoo.results redraw "$results"
}

"${1:-all}"
