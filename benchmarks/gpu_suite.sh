#!/usr/bin/env bash
# Every speed benchmark in one call, for a lent GPU machine (goal: under 5 minutes), one JSON.
#
#   bash benchmarks/gpu_suite.sh --out_dir=DIR          # on a CUDA machine (e.g. DIR=$OUT)
#   bash benchmarks/gpu_suite.sh --quick --out_dir=DIR  # smoke run on a CPU, seconds of work
#
# Runs, each in its own process with its own time limit (a failure or a timeout is recorded
# and the suite goes on):
#   bench_lfdn        LFDN train step and scoring, dlsr_jax vs PyTorch (paper and cpu sizes);
#   bench_classifier  ResNet-20 / ResNet-18 train step (what loop.fit runs), ODIN scoring and
#                     the Outlier Exposure step (128 ID + 256 outlier images);
#   bench_backbone    backbone features (Lite0, B4) vs the PyTorch packages, the LFDN step, and
#                     end-to-end B4 DLSR scoring (backbone + LFDN, k = 3): goal 10,000 img/s.
# Each writes DIR/<name>.json and DIR/<name>.log; `benchmarks/suite_merge.py` merges them
# (with each run's exit status and wall time, the machine and the goals) into DIR/suite.json.
# Nothing under benchmarks/ is written. PYTHON (default: python) is the interpreter;
# SUITE_TIMEOUT_S scales the per-benchmark limits (default 1.0).
set -u

QUICK=0
OUT_DIR="${TMPDIR:-/tmp}/dlsr_gpu_suite"
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --out_dir=*) OUT_DIR="${arg#--out_dir=}" ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu_suite.sh: unknown argument '$arg' (use --quick, --out_dir=DIR)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
SCALE="${SUITE_TIMEOUT_S:-1.0}"
OUT_DIR="$(realpath -m "$OUT_DIR")"
case "$OUT_DIR/" in   # checked before anything is created: committed results stay untouched
  "$(realpath -m "$ROOT/benchmarks")/"*)
    echo "gpu_suite.sh: --out_dir must not be under benchmarks/" >&2; exit 2 ;;
esac
mkdir -p "$OUT_DIR" || exit 2
STATUS="$OUT_DIR/status.tsv"
: > "$STATUS"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # JAX and PyTorch share the GPU's memory
cd "$ROOT" || exit 2

# run NAME LIMIT_S ARGS...: one benchmark, its log, and "name rc seconds" in status.tsv.
run() {
  local name="$1" limit="$2"; shift 2
  limit="$(awk -v a="$limit" -v s="$SCALE" 'BEGIN { printf "%d", a * s }')"
  local t0 t1 rc
  t0="$(date +%s.%N)"
  echo "== $name (limit ${limit} s): $PY -m benchmarks.$name $*"
  timeout --signal=TERM --kill-after=10 "$limit" "$PY" -m "benchmarks.$name" "$@" \
    > "$OUT_DIR/$name.log" 2>&1
  rc=$?
  t1="$(date +%s.%N)"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
    >> "$STATUS"
  echo "   rc=$rc; last lines:"; tail -n 4 "$OUT_DIR/$name.log" | sed 's/^/   | /'
}

if [ "$QUICK" = 1 ]; then
  run bench_lfdn 300 --quick --json_out="$OUT_DIR/bench_lfdn.json"
  run bench_classifier 300 --quick --json_out="$OUT_DIR/bench_classifier.json"
  run bench_backbone 300 --quick --json_out="$OUT_DIR/bench_backbone.json"
else
  run bench_lfdn 110 --device=auto --sizes=paper,cpu --score_batch=4096 --reps=20 \
    --paper_reps=20 --warmup=3 --paper_warmup=3 --torch_compile=none --time_budget_s=80 \
    --json_out="$OUT_DIR/bench_lfdn.json"
  run bench_classifier 110 --device=auto --reps=30 --warmup=5 --torch_channels_last \
    --json_out="$OUT_DIR/bench_classifier.json"
  run bench_backbone 100 --models=efficientnet_lite0,efficientnet_b4 --batch_sizes=64,256 \
    --torch_device=cuda --e2e_batch=1024 --repeats=10 --json_out="$OUT_DIR/bench_backbone.json"
fi

MERGE_ARGS=(--out_dir="$OUT_DIR")
[ "$QUICK" = 1 ] && MERGE_ARGS+=(--quick)
"$PY" -m benchmarks.suite_merge "${MERGE_ARGS[@]}"
