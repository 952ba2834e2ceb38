#!/usr/bin/env bash
# The agents leaderboard of issue 14 from scratch: every agent trained on the same frozen
# backbone at each operating point, then compared on the same val images.
#
#   SKIPNET_DATA=/path/to/data bash scripts/leaderboard.sh
#   STEPS=100000 ALPHAS="0.1 0.5 2" LIMIT=2000 bash scripts/leaderboard.sh   # a small one
#
# Settings (environment variables): BACKBONE (default skipnet38-hrl-a0.6), ALPHAS (the paper
# reward's alpha of each operating point), STEPS (env steps per agent and point; the issue
# asks for 1M), ALGOS (SB3 algorithms), RUNS (run folders), OUT (the leaderboard), LIMIT (val
# images compared; default all 5,000), EVAL_LIMIT (val images of each run's own val.json),
# THREADS (torch threads per run), DEVICE, PYTHON, GATE_RL_ARGS (more train/hybrid.py options
# for the RL-only gate), K (decisions per image of BACKBONE, default 17 for ResNet-38: the
# RL-only gate trains STEPS / (K x 45,000) epochs, the same env steps as the other agents).
#
# A run whose final file exists is skipped and an interrupted one resumes, so the script can
# be rerun after a stop. The table and plot alone, from the saved agents:
#
#   python scripts/compare_agents.py --manifest $RUNS/agents.yml --out $OUT --static-routes
set -euo pipefail
cd "$(dirname "$0")/.."
BACKBONE=${BACKBONE:-skipnet38-hrl-a0.6}
ALPHAS=${ALPHAS:-"0.1 0.5 2"}
STEPS=${STEPS:-1000000}
ALGOS=${ALGOS:-"ppo a2c dqn recurrentppo maskableppo"}
RUNS=${RUNS:-runs/leaderboard}
OUT=${OUT:-results/leaderboard}
THREADS=${THREADS:-1}
DEVICE=${DEVICE:-auto}
PY=${PYTHON:-python}
export PYTHONPATH=${PYTHONPATH:-$PWD}
common=(--checkpoint "$BACKBONE" --total-steps "$STEPS" --threads "$THREADS" --device "$DEVICE")
[[ -n ${EVAL_LIMIT:-} ]] && common+=(--eval-limit "$EVAL_LIMIT")  # each run's own val.json

run() {  # run OUT FINAL SCRIPT ARGS...: train/SCRIPT into OUT unless OUT/FINAL exists
    local out=$1 final=$2 script=$3
    shift 3
    if [[ -f $out/$final ]]; then
        echo "== $out: done"
        return
    fi
    local resume=()
    [[ -f $out/last.zip || -f $out/last.pt ]] && resume=(--resume)
    echo "== $out: $PY train/$script --out $out $* ${resume[*]}"
    "$PY" "train/$script" --out "$out" "$@" "${resume[@]}"
}

gate_epochs=$("$PY" -c "print($STEPS / (${K:-17} * 45000))")  # env steps -> passes over train
mkdir -p "$RUNS"
manifest=$RUNS/agents.yml
echo "backbone: $BACKBONE" > "$manifest.tmp"
echo "agents:" >> "$manifest.tmp"
for alpha in $ALPHAS; do
    for algo in $ALGOS; do
        run "$RUNS/$algo-a$alpha" final.zip sb3.py --algo "$algo" --alpha "$alpha" "${common[@]}"
        echo "  - {family: $algo, point: alpha=$alpha, kind: sb3, algo: $algo, path: $RUNS/$algo-a$alpha/final.zip}" >> "$manifest.tmp"
    done
    run "$RUNS/openloop-a$alpha" final.pt open_loop.py --alpha "$alpha" "${common[@]}"
    echo "  - {family: OpenLoop, point: alpha=$alpha, kind: openloop, path: $RUNS/openloop-a$alpha/final.pt}" >> "$manifest.tmp"
    # the paper's recurrent gate trained by REINFORCE alone: a fresh gate on the frozen backbone
    # (train/hybrid.py; its checkpoint's gate routes the env's backbone, kind gate)
    # shellcheck disable=SC2086
    run "$RUNS/gate-rl-a$alpha" final.pt hybrid.py --sp "$BACKBONE" --fresh-gate --freeze-backbone \
        --reward paper --alpha "$alpha" --epochs "$gate_epochs" --threads "$THREADS" \
        --device "$DEVICE" ${GATE_RL_ARGS:-}
    echo "  - {family: RNNGate RL, point: alpha=$alpha, kind: gate, path: $RUNS/gate-rl-a$alpha/final.pt}" >> "$manifest.tmp"
done
# the hybrid stage (backbone trained too): the shipped HRL points, each with its own backbone
for a in 0.25 0.5 0.6 0.75 1; do
    echo "  - {family: HRL hybrid (shipped), point: alpha=$a, kind: skipnet, path: skipnet38-hrl-a$a}" >> "$manifest.tmp"
done
mv "$manifest.tmp" "$manifest"

limit=()
[[ -n ${LIMIT:-} ]] && limit=(--limit "$LIMIT")
"$PY" scripts/compare_agents.py --manifest "$manifest" --out "$OUT" --static-routes \
    --device "$DEVICE" "${limit[@]}"
