#!/usr/bin/env bash
# The GPU check (issue 22, item 9): on a CUDA machine, in one go,
#   1. the golden tests (tests/test_ssah_golden.py, tests/test_acmr_golden.py);
#   2. benchmarks/ssah_step_speed.py in float32 / mixed_bfloat16 / mixed_float16, then the same
#      with XLA (--jit), both trunks (MIRFLICKR-scale features; CNN-F on 224 x 224 images);
#   3. with two or more GPUs, a two-replica mirrored SSAH training run (train.py --strategy
#      mirrored on the first two GPUs) beside a one-device run at the same global batch;
# and writes ONE results file (default benchmarks/results/gpu_check.json) naming the card.
#
#     bash benchmarks/gpu_check.sh [OUT.json]
#     GPU_CHECK_ALLOW_CPU=1 bash benchmarks/gpu_check.sh /tmp/cpu_check.json   # its CPU-safe parts, short
#
# Without a GPU it stops unless GPU_CHECK_ALLOW_CPU=1; then it runs the same parts with short
# benchmark settings (a check that the script works, not a figure). GPU_CHECK_REPEATS sets the
# timed updates per step (default 10; 1 on CPU).
set -u
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu_check.json}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

GPUS=$( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || true) | grep -c . )
if [ "$GPUS" -eq 0 ] && [ "${GPU_CHECK_ALLOW_CPU:-0}" != "1" ]; then
  echo "error: no NVIDIA GPU found (nvidia-smi lists none); run this on a CUDA machine, or set GPU_CHECK_ALLOW_CPU=1 to try its CPU-safe parts" >&2
  exit 2
fi
if [ "$GPUS" -gt 0 ]; then
  REPEATS=${GPU_CHECK_REPEATS:-10}; SPEED_ARGS=(--threads 0 --matmul-size 8192 --trunk features,cnnf)
  PRECISIONS=float32,mixed_bfloat16,mixed_float16
else  # CPU: a short run that shows the parts work (float16 and CNN-F under XLA are slow on CPUs)
  REPEATS=${GPU_CHECK_REPEATS:-1}; SPEED_ARGS=(--items 1000 --matmul-size 1024 --warmup 1 --trunk features)
  PRECISIONS=float32,mixed_bfloat16
fi
echo "gpu_check: $GPUS GPU(s); parts written to $WORK; results to $OUT"

status() {  # NAME COMMAND...: runs it, keeps its output and exit status under $WORK/NAME.*
  local name=$1; shift
  echo "== $name: $*"
  local start=$SECONDS
  "$@" >"$WORK/$name.log" 2>&1
  echo $? >"$WORK/$name.rc"
  echo $((SECONDS - start)) >"$WORK/$name.seconds"
  tail -n 3 "$WORK/$name.log"
}

status golden python -m pytest -q tests/test_ssah_golden.py tests/test_acmr_golden.py
status speed python benchmarks/ssah_step_speed.py --precision "$PRECISIONS" --repeats "$REPEATS" \
  "${SPEED_ARGS[@]}" --out "$WORK/speed.json"
status speed_xla python benchmarks/ssah_step_speed.py --jit --precision float32,mixed_bfloat16 --repeats "$REPEATS" \
  "${SPEED_ARGS[@]}" --out "$WORK/speed_xla.json"
if [ "$GPUS" -ge 2 ]; then
  # same seed and global batch: the two-replica run's summed gradient is the one-device one's
  TRAIN=(python train.py --method ssah --dataset synthetic --schedule short --epochs 2 --batch-size 64
         --runs-dir "$WORK/runs")
  status one_device env CUDA_VISIBLE_DEVICES=0 "${TRAIN[@]}" --run-name one_device --strategy none
  status mirrored env CUDA_VISIBLE_DEVICES=0,1 "${TRAIN[@]}" --run-name mirrored --strategy mirrored
fi

python - "$WORK" "$OUT" "$GPUS" <<'EOF'
import json, os, sys
work, out, gpus = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, os.getcwd())
from benchmarks import results_io

def read(name, default=None):
    try:
        with open(os.path.join(work, name)) as f:
            return f.read()
    except OSError:
        return default

parts = {}
for name in ("golden", "speed", "speed_xla", "one_device", "mirrored"):
    if read(f"{name}.rc") is None:
        continue
    log = read(f"{name}.log", "")
    part = {"exit_status": int(read(f"{name}.rc")), "seconds": int(read(f"{name}.seconds")),
            "log_tail": log.splitlines()[-5:]}
    figures = read(f"{name}.json") if name.startswith("speed") else read(f"runs/{name}/results.json")
    if figures:
        part["results"] = json.loads(figures)
    parts[name] = part
results = {"gpus": results_io.gpu_names(), "gpu_count": gpus, "cpu_only_check": gpus == 0, "parts": parts,
           "all_passed": all(part["exit_status"] == 0 for part in parts.values())}
results_io.write_results(out, results)
print("gpu_check:", "every part exited 0" if results["all_passed"] else
      "FAILED parts: " + ", ".join(name for name, part in parts.items() if part["exit_status"]))
sys.exit(0 if results["all_passed"] else 1)
EOF
