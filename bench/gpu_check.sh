#!/usr/bin/env bash
# Every GPU figure in one prepared call (issue 23): run on a fresh GPU machine from the repository root,
#
#   OUT=<dir> bash bench/gpu_check.sh              # on a lent GPU: the whole plan, at most TOTAL s (540)
#   OUT=<dir> bash bench/gpu_check.sh --cpu-smoke  # on a CPU: every step's code path at tiny sizes (< 2 min)
#   OUT=<dir> bash bench/gpu_check.sh --only e     # one step (a is always run first): here the mini rows
#
# Steps, in priority order, each with its own cap (seconds; a step gets min(cap, time left before the
# deadline), so a slow step cannot starve the ones after it and the whole run ends by TOTAL):
#   a   60  install the carried wheels (.whl/, ../shared/tools/gpu-wheels.sh), print versions and the GPU
#   b1  60  the test suite's training and GPU tests on CUDA (tests/test_train.py, -m gpu)
#   b2 100  one exp6 smoke sweep, two trials packed per GPU (--gpus-per-trial 0.5): MLflow runs checked,
#           Table I rebuilt from them (analysis.table)
#   c  250  training speed, full-width VGG13, synthetic CIFAR-shaped data, 40k train + 20k eval images per
#           epoch: bs 32 with the hand-written DataLoader loop beside it (60), bs 256 and 1024 (40), bf16 at
#           32/256/1024 (50), ghost BN fp32 (50), ghost BN bf16 (50)
#   d   70  packing: 1, 2, 4 trials per GPU at bs 128 (total images/s, peak memory)
#   e  rest the mini headline cells at full width on Fashion-MNIST (bigbatch.train alone, one seed) while
#           time remains; skipped without the data (it cannot travel with .whl/ in one 64 MiB carry)
# 60 + 60 + 100 + 250 + 70 = 540 = TOTAL: e runs only on what the others left.
#
# Writes one JSON per step under $OUT, $OUT/steps.jsonl (step, status, seconds, why) and $OUT/summary.md,
# and prints one line per step: "step X: done (...)", "skipped (why)" or "failed (why)". Exit 0 when no
# step failed, else 1. Env: OUT (required), TOTAL (540), PYTHON (python3), BIGBATCH_DATA_DIR (for e).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) MODE=cpu ;;
    --only) ONLY="$2"; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see bench/gpu_check.sh --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "${OUT:-}" ]; then echo "error: set OUT to the folder for the figures (the device tool's \$OUT)" >&2; exit 2; fi
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
TOTAL=${TOTAL:-540}
START=$(date +%s)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
: >"$OUT/steps.jsonl"
FAILED=0

if [ "$MODE" = gpu ]; then
  DEV=cuda
  if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "error: no CUDA GPU visible here (nvidia-smi); on a CPU run bench/gpu_check.sh --cpu-smoke" >&2; exit 2
  fi
else
  DEV=cpu
fi

# record STEP STATUS SECONDS WHY: one line on stdout and one JSON line in steps.jsonl
record() {
  echo "step $1: $2 ($4; $3 s)"
  "$PY" -c 'import json,sys; print(json.dumps({"step": sys.argv[1], "status": sys.argv[2], "seconds": int(sys.argv[3]), "why": sys.argv[4]}))' \
    "$1" "$2" "$3" "$4" >>"$OUT/steps.jsonl"
  [ "$2" = failed ] && FAILED=1
  return 0
}

# wanted STEP: whether --only lets this step run (a always does)
wanted() { [ -z "$ONLY" ] || [ "$1" = a ] || [ "${1:0:1}" = "$ONLY" ] || [ "$1" = "$ONLY" ]; }

# run STEP CAP WHAT CMD...: CMD under `timeout min(CAP, time left)`, its output in $OUT/STEP.log
run() {
  local step=$1 cap=$2 what=$3; shift 3
  wanted "$step" || return 0
  local left=$(( TOTAL - ($(date +%s) - START) ))
  [ "$cap" = rest ] && cap=$left
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -lt 5 ]; then record "$step" skipped 0 "no time left of the ${TOTAL} s plan"; return 0; fi
  local t0; t0=$(date +%s)
  timeout --kill-after=5 "$cap" "$@" >"$OUT/$step.log" 2>&1
  local code=$? dt=$(( $(date +%s) - t0 ))
  if [ $code -eq 0 ]; then record "$step" done "$dt" "$what"
  elif [ $code -eq 124 ] || [ $code -eq 137 ]; then record "$step" failed "$dt" "$what: hit its ${cap} s cap; see $step.log"
  elif [ $code -eq 75 ]; then record "$step" skipped "$dt" "$(tail -n 1 "$OUT/$step.log")"
  else record "$step" failed "$dt" "$what: exit $code: $(grep -v '^\s*$' "$OUT/$step.log" | tail -n 1 | cut -c1-200)"
  fi
}

# ---------------------------------------------------------------------------------------------- a
step_a() {
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl || return 1
    export PYTHONPATH="$WORK/site:$PYTHONPATH"
  fi
  "$PY" - "$OUT/a_env.json" <<'PY' || return 1
import json, sys, torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
for name in ("torchvision", "ray", "mlflow", "optuna", "pandas"):
    try:
        info[name] = __import__(name).__version__
    except Exception as e:  # reported, and the steps that need it fail with their own line
        info[name] = f"missing ({type(e).__name__})"
print(json.dumps(info))
json.dump(info, open(sys.argv[1], "w"), indent=1)
PY
}
t0=$(date +%s)
if step_a >"$OUT/a.log" 2>&1; then record a done $(( $(date +%s) - t0 )) "$(tail -n 1 "$OUT/a.log")"
else record a failed $(( $(date +%s) - t0 )) "install or imports: $(tail -n 1 "$OUT/a.log")"; fi
ls .whl/*.whl >/dev/null 2>&1 && export PYTHONPATH="$WORK/site:$PYTHONPATH"

# ---------------------------------------------------------------------------------------------- b
if [ "$MODE" = gpu ]; then
  run b1 60 "training and GPU tests on CUDA" "$PY" -m pytest -q -p no:cacheprovider --junitxml "$OUT/b1_pytest.xml" \
      tests/test_train.py tests/test_determinism.py -m "gpu or not slow"
else  # the GPU tests skip here; the step's own code path is what runs
  run b1 60 "the GPU test (skips without CUDA)" "$PY" -m pytest -q -p no:cacheprovider --junitxml "$OUT/b1_pytest.xml" \
      tests/test_determinism.py -m gpu
fi

b2() {  # exp6 smoke sweep, 2 trials per GPU, then the MLflow check and Table I from the runs
  local gpus=0.5 sizes=""
  [ "$MODE" = cpu ] && gpus=0 sizes="--batch-sizes 32 64"
  "$PY" -m sweeps.exp6 --smoke-test --gpus-per-trial $gpus $sizes --name gpu-check --quiet \
      --storage-path "$WORK/ray_results" --tracking-uri "sqlite:///$WORK/mlflow.db" || return 1
  "$PY" -m analysis.table --tracking-uri "sqlite:///$WORK/mlflow.db" --paper --format markdown >"$OUT/b2_table.md" || return 1
  "$PY" - "sqlite:///$WORK/mlflow.db" "$OUT/b2_smoke.json" "$DEV" <<'PY'
import json, sys
from analysis.runs import load_runs
from bigbatch.schema import FINISHED
runs = load_runs(sys.argv[1])
trials = runs[runs["role"] != "sweep"] if "role" in runs else runs
devices = sorted(str(d) for d in trials.get("device_used", trials.get("device", [])).dropna().unique())
out = {"trials": int(len(trials)), "finished": int(trials["status"].isin(FINISHED).sum()),
       "statuses": trials["status"].value_counts().to_dict(), "devices": devices}
json.dump(out, open(sys.argv[2], "w"), indent=1)
print(json.dumps(out))
if not out["trials"] or out["finished"] != out["trials"]:
    sys.exit(f"not every trial finished: {out['statuses']}")
if not any(d.startswith(sys.argv[3]) for d in devices):
    sys.exit(f"no trial ran on {sys.argv[3]}: devices {devices}")
PY
}
export MODE DEV WORK OUT PY
export -f b2
run b2 100 "exp6 smoke sweep, 2 trials per device, runs checked, Table I rebuilt" bash -c b2

# ---------------------------------------------------------------------------------------------- c
if [ "$MODE" = gpu ]; then
  C=(--device cuda)                       # throughput.py's GPU defaults: width 1, 40k + 20k images, 20 warm-up steps
  C_BIG=(--batch-sizes 256 1024) C_ALL=(--batch-sizes 32 256 1024) C_ONE=(--repeats 1)
else
  C=(--device cpu --width-mult 0.0625 --images 64 --eval-images 64 --warmup-steps 1 --workers 0 --threads 1)
  C_BIG=(--batch-sizes 64) C_ALL=(--batch-sizes 32 64) C_ONE=(--repeats 1)
fi
run c1 60 "VGG13 none fp32 bs 32, with the DataLoader loop" "$PY" bench/throughput.py "${C[@]}" "${C_ONE[@]}" --batch-sizes 32 --json "$OUT/c1_none_fp32_bs32.json"
run c2 40 "none fp32 larger batches" "$PY" bench/throughput.py "${C[@]}" "${C_ONE[@]}" "${C_BIG[@]}" --skip-baseline --json "$OUT/c2_none_fp32.json"
run c3 50 "none bf16" "$PY" bench/throughput.py "${C[@]}" "${C_ONE[@]}" "${C_ALL[@]}" --precision bf16 --skip-baseline --json "$OUT/c3_none_bf16.json"
run c4 50 "ghost BN fp32" "$PY" bench/throughput.py "${C[@]}" "${C_ONE[@]}" "${C_ALL[@]}" --norm ghost --skip-baseline --json "$OUT/c4_ghost_fp32.json"
run c5 50 "ghost BN bf16" "$PY" bench/throughput.py "${C[@]}" "${C_ONE[@]}" "${C_ALL[@]}" --norm ghost --precision bf16 --skip-baseline --json "$OUT/c5_ghost_bf16.json"

# ---------------------------------------------------------------------------------------------- d
if [ "$MODE" = gpu ]; then
  run d 70 "packing 1/2/4 trials per GPU at bs 128" "$PY" bench/packing.py --batch-sizes 128 --k 1 2 4 --seconds 10 --json "$OUT/d_packing.json"
else
  run d 70 "packing orchestration on CPU" "$PY" bench/packing.py --allow-cpu --batch-sizes 32 --k 1 2 --seconds 0.1 --images 64 \
      --warmup-steps 1 --width-mult 0.0625 --json "$OUT/d_packing.json"
fi

# ---------------------------------------------------------------------------------------------- e
run e rest "mini headline cells at full width" "$PY" bench/gpu_mini.py --mode "$MODE" --out "$OUT/e_mini.json" --deadline $(( START + TOTAL - 10 ))

# ---------------------------------------------------------------------------------------------- summary
"$PY" bench/gpu_summary.py "$OUT" >"$OUT/summary.md" || { echo "step summary: failed (see $OUT/summary.md)"; FAILED=1; }
echo "summary: $OUT/summary.md; whole run $(( $(date +%s) - START )) s of the ${TOTAL} s plan"
exit $FAILED
