#!/usr/bin/env bash
# Issue 12's line of models from the skip-tolerant ResNet-38, stage by stage: a plain network
# trained with random block dropping (LayerDrop, 200 epochs), SP from it, HRL at a high alpha
# until it skips, operating points at lower alphas (cosine decay), static routes fine-tuned at
# each point's FLOPs (the comparison at matched compute), then weights-only exports, val
# evaluations with routing diagnostics, skip tolerance and the per-image headroom.
#
#   SKIPNET_DATA=/path/to/data bash scripts/train_skiptolerant38.sh [RUNS_DIR]
#
# A stage whose final.pt exists is skipped and an interrupted one resumes from its last.pt,
# so the script can be rerun after a stop (the 200-epoch base is about 5 hours on a 2-core
# CPU with --amp bf16; it ships as resnet38-ld: to start from it, copy
# skipenv/models/weights/resnet38-ld.pt to RUNS_DIR/base/final.pt).
# THREADS (default: all cores) sets --threads of every stage.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs/skiptolerant38}
PY=${PYTHON:-python}
T=()
[[ -n ${THREADS:-} ]] && T=(--threads "$THREADS")

# shellcheck source=scripts/lib/stage.sh
source scripts/lib/stage.sh

stage "$R/base" base.py --depth 38 --epochs 200 --amp bf16 --drop-max 0.6 \
    --checkpoint-minutes 4 "${T[@]}"
W=${WEIGHTS_DIR:-$R/weights}
mkdir -p "$W"
export_eval() {  # export_eval RUN NAME: weights-only export, then val evaluation with routing
    local run=$1 name=$2
    [[ -f $W/$name.pt ]] ||
        "$PY" -m skipenv.models.pretrained export "$R/$run/final.pt" "$W/$name.pt" --name "$name"
    [[ -f $W/$name.val.json ]] ||
        "$PY" train/evaluate.py --checkpoint "$W/$name.pt" --split val --json "$W/$name.val.json" \
            "${T[@]}"
}
# the base is shipped and measured before the slower stages start (issue 12 item 3: full-route
# accuracy and random routes at 50% / 75% of the blocks)
export_eval base resnet38-ld
[[ -f $W/skip_tolerance-resnet38-ld.json ]] ||
    "$PY" scripts/skip_tolerance.py --checkpoint "$W/resnet38-ld.pt" --split val --amp bf16 \
        --json "$W/skip_tolerance-resnet38-ld.json" "${T[@]}"
stage "$R/sp" supervised.py --init "$R/base/final.pt" --depth 38 --epochs 4 --amp bf16 "${T[@]}"
# as for the shipped models (scripts/train_pretrained38.sh): start skipping at a high alpha,
# then the operating points at lower alphas with a cosine decay
stage "$R/hrl-a3" hybrid.py --sp "$R/sp/final.pt" --alpha 3 --epochs 2 --amp bf16 \
    --eval-every 117 "${T[@]}"
ALPHAS=${ALPHAS:-0.5 0.75 1}
for A in $ALPHAS; do
    stage "$R/hrl-a$A" hybrid.py --sp "$R/hrl-a3/final.pt" --alpha "$A" --epochs 4 \
        --schedule cosine --amp bf16 --eval-every 117 "${T[@]}"
done

export_eval sp skipnet38-ld-sp
for A in $ALPHAS; do
    export_eval "hrl-a$A" "skipnet38-ld-hrl-a$A"
    # the static route of equal backbone FLOPs on the same backbone, fine-tuned as long as the
    # HRL stage (4 epochs): the paper's static-compression comparison (issue 12, item 2)
    budget=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['flops_fraction'])" \
        "$W/skipnet38-ld-hrl-a$A.val.json")
    stage "$R/static-a$A" static.py --checkpoint "$W/skipnet38-ld-hrl-a$A.pt" \
        --budget "$budget" --epochs 4 --amp bf16 "${T[@]}"
    export_eval "static-a$A" "static38-ld-a$A"
    [[ -f $W/headroom-a$A.json ]] ||
        "$PY" scripts/route_headroom.py --checkpoint "$W/skipnet38-ld-hrl-a$A.pt" --alpha "$A" \
            --split val --amp bf16 --json "$W/headroom-a$A.json" "${T[@]}"
done
