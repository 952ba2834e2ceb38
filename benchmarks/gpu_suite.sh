#!/usr/bin/env bash
# Run the speed benchmarks in one go and write their JSON to one folder (issue 13).
#
#   benchmarks/gpu_suite.sh [--device cpu|cuda] [--out DIR] [--quick]
#
# --device  cuda (default) or cpu.
# --out     folder for the JSON, the logs and suite.json (default: results/suite-DEVICE in the
#           repository; a relative DIR is taken from the current folder).
# --quick   small sizes, to check the script end to end in a few minutes on a CPU; its numbers
#           are not representative (batches of 32-64 are dominated by per-call overhead).
#
# Cases: skipping.py (ResNet-38/110, float32; batch 1024 on cuda), the same under bf16 autocast
# with folded batch norm (skipping-bf16.json), env_throughput.py (native env up to N = 4096 on
# cuda, synthetic images so no data is needed), hrl_step.py (bf16; before/after, folded and
# unfolded batch norm in one run, synthetic images) and data.py (channels_last; only where
# CIFAR-10 is found, as the package finds it: $SKIPNET_DATA, else the per-user data folder;
# otherwise suite.json records it as skipped). On cuda the full suite is meant to finish in under 10
# minutes on one GPU (not run on one yet); skipping, HRL and data run channels_last, the env
# its device default (NCHW on cuda), the bf16 cases under autocast (no torch.compile or CUDA
# graphs: the skipping path's shapes change with every batch's routes). CPU runs use
# OMP_NUM_THREADS (default 1) threads, CPU-time clocks (--clock cpu: steadier on a shared
# machine) and CPU sizes (fewer rounds, batch 256, N <= 256): 734 s on the shared 2-core
# machine; --quick 79 s.
# suite.json lists each benchmark's command, exit status and wall time; a failing benchmark
# is recorded and the suite goes on.
set -u -o pipefail

device=cuda
out=""
quick=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --quick) quick=1; shift ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "gpu_suite.sh: unknown argument '$1' (use --device cpu|cuda, --out DIR, --quick)" >&2
           exit 2 ;;
    esac
done
if [[ "$device" != "cpu" && "$device" != "cuda" ]]; then
    echo "gpu_suite.sh: --device must be cpu or cuda, got '$device'" >&2
    exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
[[ -z "$out" || "$out" == /* ]] || out="$PWD/$out"  # relative to where the user stands
cd "$root"
out="${out:-results/suite-$device}"
mkdir -p "$out"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
threads=()
clock=()
if [[ "$device" == "cpu" ]]; then
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    threads=(--threads "$OMP_NUM_THREADS")
    clock=(--clock cpu)
fi
py="${PYTHON:-python}"

if [[ $quick == 1 ]]; then
    skipping=(--depths 38 --batch-size 64 --repeats 3 --fractions 1.0 0.75 0.5 0.25)
    env=(--native-envs 16 64 --sync-envs 8 --limit-batch 64 --repeats 2 --min-steps 256)
    hrl=(--batch-size 32 --repeats 2)
    data=(--repeats 2 --loader-batches 5 --train-steps 1 --warmup 1)
elif [[ "$device" == "cuda" ]]; then
    skipping=(--depths 38 110 --batch-size 1024 --repeats 11)
    env=(--native-envs 256 1024 4096 --sync-envs 64 --limit-batch 4096 --repeats 5
         --min-steps 65536)
    hrl=(--batch-size 128 --repeats 11)
    data=(--channels-last)
else
    skipping=(--depths 38 110 --batch-size 256 --repeats 5)
    env=(--native-envs 64 256 --sync-envs 64 --limit-batch 256 --repeats 3)
    hrl=(--batch-size 128 --repeats 5)
    data=(--channels-last)
fi
amp=(--amp bf16)

manifest="$out/suite.json.tmp"
echo "[" > "$manifest"
first=1
run() {  # run NAME CMD...: log to $out/NAME.log, record status and wall time
    local name="$1"; shift
    local start end status
    echo "== $name: $*"
    start=$(date +%s.%N)
    "$@" > "$out/$name.log" 2>&1
    status=$?
    end=$(date +%s.%N)
    cat "$out/$name.log"
    [[ $first == 1 ]] || echo "," >> "$manifest"
    first=0
    "$py" -c 'import json, sys; print(json.dumps({"name": sys.argv[1], "exit_status": int(sys.argv[2]), "wall_s": round(float(sys.argv[3]), 1), "command": sys.argv[4:]}))' \
        "$name" "$status" "$(echo "$end - $start" | bc)" "$@" >> "$manifest"
    [[ $status == 0 ]] || echo "!! $name failed with status $status (see $out/$name.log)"
}

suite_start=$(date +%s)
run skipping "$py" benchmarks/skipping.py --device "$device" "${threads[@]}" "${clock[@]}" \
    "${skipping[@]}" --json "$out/skipping.json"
run skipping-bf16 "$py" benchmarks/skipping.py --device "$device" "${threads[@]}" "${clock[@]}" \
    "${skipping[@]}" "${amp[@]}" --fold-bn --json "$out/skipping-bf16.json"
run env_throughput "$py" benchmarks/env_throughput.py --device "$device" "${threads[@]}" \
    "${clock[@]}" --synthetic "${env[@]}" --json "$out/env_throughput.json"
run hrl_step "$py" benchmarks/hrl_step.py --device "$device" "${threads[@]}" "${clock[@]}" \
    --synthetic "${amp[@]}" --baseline-impl "${hrl[@]}" --json "$out/hrl_step.json"
# found as load_cifar10 finds it; prints the data root, exits 1 when CIFAR-10 is not there
data_root=$("$py" -c '
import sys
from skipenv.data.sources import DataError, locate, resolve_data_root
root = resolve_data_root(None)
print(root)
try:
    locate(root, "train", "auto", download=False)
except DataError:
    sys.exit(1)')
if [[ $? == 0 ]]; then
    run data "$py" benchmarks/data.py --device "$device" "${data[@]}" --json "$out/data.json"
else
    why="no CIFAR-10 under $data_root (set SKIPNET_DATA, or python -m skipenv.data --download)"
    echo "== data: skipped ($why)"
    [[ $first == 1 ]] || echo "," >> "$manifest"
    "$py" -c 'import json, sys; print(json.dumps({"name": "data", "skipped": sys.argv[1]}))' \
        "$why" >> "$manifest"
fi
echo "]" >> "$manifest"
mv "$manifest" "$out/suite.json"
"$py" - "$out/suite.json" <<'PY'
import json
import sys

for r in json.load(open(sys.argv[1])):
    if "skipped" in r:
        print(f"{r['name']:15s} skipped: {r['skipped']}")
    else:
        print(f"{r['name']:15s} status {r['exit_status']}  {r['wall_s']:7.1f} s")
PY
echo "suite: $(( $(date +%s) - suite_start )) s, JSON in $out"
