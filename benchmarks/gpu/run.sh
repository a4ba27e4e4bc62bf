#!/usr/bin/env bash
# The prepared GPU check: one command, started from the repository root on the GPU machine.
#
#   bash benchmarks/gpu/run.sh [OUT] [--dry-run]        (OUT defaults to $GPU_CHECK_OUT, then
#                                                        $OUT, then gpu-check-out)
#
# Steps, each under its own time limit (and all within BUDGET seconds), so one failure does
# not eat the rest: install the carried wheels (.whl/, filled here by
# benchmarks/gpu/prepare_wheels.sh), build gsplat's CUDA extension for the H200 only
# (TORCH_CUDA_ARCH_LIST=9.0, every core), the `gpu` tests, then each step of
# benchmarks/gpu/measure.py. Writes OUT/log.txt (everything printed), OUT/<step>.json and
# OUT/figures.json (every step's status, seconds and figures). Prints each step's time.
#
# --dry-run: no wheels, no build, CPU, toy sizes: every step's code runs (CI does this).
set -u
cd "$(dirname "$0")/../.."

dry=0
out="${GPU_CHECK_OUT:-${OUT:-gpu-check-out}}"
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry=1 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        -*) echo "run.sh: unknown option $arg" >&2; exit 2 ;;
        *) out="$arg" ;;
    esac
done
mkdir -p "$out" || exit 1
out=$(cd "$out" && pwd)
log="$out/log.txt"
: > "$log"
status="$out/status.tsv"
: > "$status"

PYTHON=${PYTHON:-python3}
BUDGET=${BUDGET:-470}          # seconds for the whole run (the issue's 8 minutes, less margin)
start_all=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-/tmp/fit3d-torch-extensions}"

say() { echo "$*" | tee -a "$log"; }

# step NAME LIMIT COMMAND...: run with min(LIMIT, what is left of BUDGET) seconds
step() {
    local name=$1 limit=$2
    shift 2
    local left=$(( BUDGET - ($(date +%s) - start_all) ))
    (( left < limit )) && limit=$left
    if (( limit < 5 )); then
        say "== $name: skipped (budget spent)"
        printf '%s\t%s\t%s\n' "$name" skipped 0 >> "$status"
        return
    fi
    say "== $name (limit ${limit}s): $*"
    local t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
    local rc=$?
    local secs
    secs=$(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $t0}")
    local what=ok
    (( rc == 124 || rc == 137 )) && what=timeout
    (( rc != 0 && rc != 124 && rc != 137 )) && what="failed(rc=$rc)"
    say "== $name: $what in ${secs}s"
    printf '%s\t%s\t%s\n' "$name" "$what" "$secs" >> "$status"
}

if (( dry )); then
    say "dry run: CPU, toy sizes, no wheels, no build"
    flag=--dry-run
else
    flag=
    if compgen -G ".whl/*.whl" > /dev/null; then
        site=/tmp/fit3d-site
        step install 90 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
            --no-cache-dir --upgrade --target "$site" .whl/*.whl
        export PYTHONPATH="$PYTHONPATH:$site"
    else
        say "== install: no .whl/ folder (run benchmarks/gpu/prepare_wheels.sh here first)"
    fi
    say "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"
    export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS="$(nproc)"
    step build 240 "$PYTHON" -c "from gsplat.cuda._backend import _C; assert _C is not None, \
'gsplat built no extension'; print('gsplat CUDA extension:', _C.__file__)"
fi

# only the files that hold `gpu` tests: collecting the whole suite costs more than they run
mapfile -t gpu_files < <(grep -l "mark.gpu" tests/*.py)
step gpu-tests 90 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider "${gpu_files[@]}"
measures=(parity rasterizer stage1 stage2 equivariance gmae feedforward inference)
for name in "${measures[@]}"; do
    limit=60
    [[ $name == stage1 || $name == stage2 ]] && limit=90   # a 1M-point scene is made first
    [[ $name == inference ]] && limit=120   # two torch.compile builds
    if (( dry )); then
        # toy sizes: two steps at a time (each is mostly Python start-up); the GPU run keeps
        # them one at a time so that their timings do not share the machine
        step "$name" "$limit" "$PYTHON" benchmarks/gpu/measure.py "$name" --out "$out" $flag &
        (( $(jobs -rp | wc -l) >= 2 )) && wait -n
    else
        step "$name" "$limit" "$PYTHON" benchmarks/gpu/measure.py "$name" --out "$out" $flag
    fi
done
wait

"$PYTHON" - "$out" "${measures[@]}" <<'EOF'
import json, sys
from pathlib import Path

out, measures = Path(sys.argv[1]), sys.argv[2:]
found = {}
for line in (out / "status.tsv").read_text().splitlines():
    name, status, seconds = line.split("\t")
    found[name] = {"status": status, "seconds": float(seconds)}
# the set-up steps as they ran, then the measurements in their fixed order (the dry run
# finishes them two at a time, in any order)
order = [n for n in found if n not in measures] + [n for n in measures if n in found]
steps = {}
for name in order:
    record = found[name]
    figures = out / f"{name}.json"
    if figures.is_file():
        record["figures"] = json.loads(figures.read_text())
    steps[name] = record
(out / "figures.json").write_text(json.dumps(steps, indent=1) + "\n")
EOF
say "total $(( $(date +%s) - start_all ))s; figures in $out/figures.json, log in $log"
failed=$(awk -F'\t' '$2 != "ok"' "$status" | wc -l)
say "steps not ok: $failed"
(( failed == 0 ))
