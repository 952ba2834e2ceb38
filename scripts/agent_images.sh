#!/usr/bin/env bash
# Issue 14, item 6: which images agents learn on. The same PPO agent (train/sb3.py, the YAML's
# hyperparameters) on the default backbone, trained on (a) train, (b) train with augmentation,
# (c) val-agent (3,000 val images no shipped backbone saw), each for STEPS env steps per seed,
# all scored on val-eval (the stratified 2,000 val images the leaderboard uses); then the table.
#   SKIPNET_DATA=... STEPS=300000 SEEDS="0 1" bash scripts/agent_images.sh
# A finished run (its val.json) is kept; an interrupted one is resumed.
set -euo pipefail
STEPS=${STEPS:-300000}
SEEDS=${SEEDS:-"0 1"}
ALPHA=${ALPHA:-2}
CHECKPOINT=${CHECKPOINT:-skipnet38-hrl-a0.6}
RUNS=${RUNS:-runs/agent-images}
OUT=${OUT:-results/agent-images}
THREADS=${THREADS:-1}
DEVICE=${DEVICE:-cpu}
export OMP_NUM_THREADS=$THREADS PYTHONPATH=${PYTHONPATH:-$PWD}
folders=()
for seed in $SEEDS; do
  for cond in train train-augment val-agent; do
    case $cond in
      train) images=(--split train) ;;
      train-augment) images=(--split train --augment) ;;
      val-agent) images=(--split val-agent) ;;
    esac
    run=$RUNS/$cond-s$seed
    folders+=("$run")
    [ -f "$run/val.json" ] && continue
    resume=()
    [ -f "$run/last.zip" ] && resume=(--resume)
    python train/sb3.py --algo ppo --checkpoint "$CHECKPOINT" --alpha "$ALPHA" \
      --total-steps "$STEPS" --num-envs 64 --seed "$seed" "${images[@]}" --eval-split val-eval \
      --device "$DEVICE" --threads "$THREADS" --out "$run" --no-progress "${resume[@]}"
  done
done
python scripts/agent_images.py --runs "${folders[@]}" --out "$OUT" --device "$DEVICE" \
  --threads "$THREADS" --no-progress
