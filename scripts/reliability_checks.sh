#!/usr/bin/env bash
# Issue 15 "check and record": DDP with 3 CPU processes on 2 cores, resume from its checkpoint,
# resume from a sweep job's checkpoint. Digits, resnet8: seconds of compute each.
cd "$(dirname "$0")/.."
export WANDB_MODE=offline PYTHONUNBUFFERED=1
common="data=digits model=resnet8 logger=csv callbacks.progress_bar=none"
rm -rf ${OUT:-/tmp/reliability_checks}; mkdir -p ${OUT:-/tmp/reliability_checks}
echo "=== ddp3 $(date -u +%T)"
/usr/bin/time -f "wall %e s" nice -n 19 python train.py $common trainer=cpu trainer.strategy=ddp trainer.devices=3 trainer.max_epochs=2 hydra.run.dir=${OUT:-/tmp/reliability_checks}/ddp3 > ${OUT:-/tmp/reliability_checks}/ddp3.log 2>&1; echo "rc=$?"
tail -12 ${OUT:-/tmp/reliability_checks}/ddp3.log
echo "=== resume ddp3 checkpoint in one process $(date -u +%T)"
/usr/bin/time -f "wall %e s" nice -n 19 python train.py $common trainer=cpu trainer.max_epochs=4 ckpt_path=${OUT:-/tmp/reliability_checks}/ddp3/checkpoints/last.ckpt > ${OUT:-/tmp/reliability_checks}/resume_ddp.log 2>&1; echo "rc=$?"
tail -12 ${OUT:-/tmp/reliability_checks}/resume_ddp.log
echo "=== sweep $(date -u +%T)"
nice -n 19 python train.py -m $common trainer.max_epochs=2 seed=1,2 hydra.sweep.dir=${OUT:-/tmp/reliability_checks}/sweep > ${OUT:-/tmp/reliability_checks}/sweep.log 2>&1; echo "rc=$?"
ls ${OUT:-/tmp/reliability_checks}/sweep
ck=$(ls ${OUT:-/tmp/reliability_checks}/sweep/0-*/checkpoints/last.ckpt)
echo "=== resume sweep job $ck $(date -u +%T)"
/usr/bin/time -f "wall %e s" nice -n 19 python train.py $common trainer.max_epochs=4 seed=1 ckpt_path=$ck > ${OUT:-/tmp/reliability_checks}/resume_sweep.log 2>&1; echo "rc=$?"
tail -12 ${OUT:-/tmp/reliability_checks}/resume_sweep.log
echo "=== end $(date -u +%T)"
