#!/usr/bin/env bash
# The recipe of the shipped ResNet-38 / SkipNet-38 weights (skipenv/weights/MODEL_CARD.md),
# stage by stage: plain network, SP, then two HRL operating points, each an alpha curriculum
# (a high alpha to start skipping, then a lower one with a cosine learning-rate decay so the
# network adapts to its routes), then weights-only exports and their val evaluations.
#
#   SKIPNET_DATA=/path/to/data bash scripts/train_pretrained38.sh [RUNS_DIR]
#
# A stage whose final.pt exists is skipped and an interrupted one resumes from its last.pt,
# so the script can be rerun after a stop. The two HRL branches are independent: on a machine
# with cores to spare, run them side by side (the shipped ones were, one thread each).
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs/pretrained38}
PY=${PYTHON:-python}

stage() {  # stage OUT SCRIPT ARGS...: run train/SCRIPT into OUT unless OUT/final.pt exists
    local out=$1 script=$2
    shift 2
    if [[ -f $out/final.pt ]]; then
        echo "== $out: done"
        return
    fi
    local resume=()
    [[ -f $out/last.pt ]] && resume=(--resume)
    echo "== $out: $PY train/$script --out $out $* ${resume[*]}"
    "$PY" "train/$script" --out "$out" "$@" "${resume[@]}"
}

stage "$R/base" base.py --depth 38 --epochs 80 --amp bf16
stage "$R/sp" supervised.py --init "$R/base/final.pt" --depth 38 --epochs 4 --amp bf16

# operating point 1 (the env's default): alpha 2.5, then 0.75 with cosine decay
stage "$R/hrl-a2.5" hybrid.py --sp "$R/sp/final.pt" --alpha 2.5 --epochs 2 --amp bf16
stage "$R/hrl" hybrid.py --sp "$R/hrl-a2.5/final.pt" --alpha 0.75 --epochs 4 \
    --schedule cosine --amp bf16
# operating point 2 (fewer FLOPs): alpha 3, then 1 with cosine decay
stage "$R/hrl-a3" hybrid.py --sp "$R/sp/final.pt" --alpha 3 --epochs 2 --amp bf16
stage "$R/hrl-lean" hybrid.py --sp "$R/hrl-a3/final.pt" --alpha 1 --epochs 4 \
    --schedule cosine --amp bf16

W=${WEIGHTS_DIR:-$R/weights}
for pair in base:resnet38 sp:skipnet38-sp hrl:skipnet38-hrl hrl-lean:skipnet38-hrl-lean; do
    run=${pair%%:*} name=${pair#*:}
    "$PY" -m skipenv.pretrained export "$R/$run/final.pt" "$W/$name.pt" --name "$name"
    "$PY" train/evaluate.py --checkpoint "$W/$name.pt" --split val --json "$W/$name.val.json"
done
