#!/usr/bin/env bash
# The recipe of the first line of ResNet-38 / SkipNet-38 weights (skipenv/models/weights/MODEL_CARD.md:
# resnet38 and skipnet38-hrl-a0.6 ship; the other points are retired to results/pretrained38/retired/),
# stage by stage: plain network, SP, HRL at a high alpha until it skips, then operating
# points from there at lower alphas (with a cosine learning-rate decay, so the network
# adapts to its routes), then weights-only exports and their val evaluations.
#
#   SKIPNET_DATA=/path/to/data bash scripts/train_pretrained38.sh [RUNS_DIR]
#
# A stage whose final.pt exists is skipped and an interrupted one resumes from its last.pt,
# so the script can be rerun after a stop. The four alpha-A HRL runs are independent: on a
# machine with cores to spare, run them side by side (the shipped ones ran two or three at a
# time, one thread each).
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs/pretrained38}
PY=${PYTHON:-python}

# shellcheck source=scripts/lib/stage.sh
source scripts/lib/stage.sh

stage "$R/base" base.py --depth 38 --epochs 80 --amp bf16
stage "$R/sp" supervised.py --init "$R/base/final.pt" --depth 38 --epochs 4 --amp bf16

# HRL starts skipping at alpha 3 (here after about 1.5 epochs; alpha 2.5 had not started
# after 2); from that network a lower alpha and a cosine decay let the backbone adapt to its
# routes and let blocks that pay for themselves come back:
stage "$R/hrl-a3" hybrid.py --sp "$R/sp/final.pt" --alpha 3 --epochs 2 --amp bf16 \
    --eval-every 117
# the operating points (only a0.6 ships now; the others are retired): 4 epochs at alpha A
# from there, learning rates cosine-decayed
for A in 0.25 0.5 0.75 1; do
    stage "$R/hrl-a$A" hybrid.py --sp "$R/hrl-a3/final.pt" --alpha "$A" --epochs 4 \
        --schedule cosine --amp bf16
done
# the env's default: 3 more epochs of the alpha 0.5 point at alpha 0.6
stage "$R/hrl-a0.6" hybrid.py --sp "$R/hrl-a0.5/final.pt" --alpha 0.6 --epochs 3 \
    --schedule cosine --amp bf16

W=${WEIGHTS_DIR:-$R/weights}
for pair in base:resnet38 sp:skipnet38-sp hrl-a0.25:skipnet38-hrl-a0.25 hrl-a0.5:skipnet38-hrl-a0.5 \
    hrl-a0.6:skipnet38-hrl-a0.6 hrl-a0.75:skipnet38-hrl-a0.75 hrl-a1:skipnet38-hrl-a1; do
    run=${pair%%:*} name=${pair#*:}
    "$PY" -m skipenv.models.pretrained export "$R/$run/final.pt" "$W/$name.pt" --name "$name"
    "$PY" train/evaluate.py --checkpoint "$W/$name.pt" --split val --json "$W/$name.val.json"
done
