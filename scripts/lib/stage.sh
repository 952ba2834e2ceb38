# Shared by the recipe scripts (scripts/train_*.sh): run one training stage, resumably.
#
#   stage OUT SCRIPT ARGS...   run train/SCRIPT --out OUT ARGS unless OUT/final.pt exists;
#                              an interrupted stage (OUT/last.pt, no final.pt) resumes.
# Needs PY (the python to run) set by the caller.

stage() {
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
