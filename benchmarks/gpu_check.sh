#!/usr/bin/env bash
# One-shot GPU check of artstyle (run from the repository root on a CUDA machine, no internet needed):
#   1. CUDA smoke test of pretraining: a few bf16 steps of run_pretrain.py (tiny config, built-in demo data,
#      single process, so the SyncBatchNorm path stays off);
#   2. bench_pretrain_step.py at paper scale: ViT-B/16, 224 px, bf16, batch 64 (with the per-component breakdown);
#   3. bench_inference.py on CUDA (ViT-B/16, bf16 model forward, fp32 pipeline).
# Logs go to $OUT (if set) or to a fresh temporary folder; the script prints where. Budget: under 8 minutes.
# Usage: bash benchmarks/gpu_check.sh            (PYTHON=/path/to/python to pick an interpreter)
set -uo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
LOG_DIR="${OUT:-$(mktemp -d -t artstyle_gpu_check.XXXXXX)}"
mkdir -p "$LOG_DIR"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export ARTSTYLE_CACHE="${ARTSTYLE_CACHE:-$LOG_DIR/datasets_cache}"
echo "logs: $LOG_DIR"
SECONDS=0
status=0

step() {  # step <name> <timeout_s> <command...>: run with a time limit, tee its log, remember failures
  local name="$1" limit="$2"
  shift 2
  echo "=== [$SECONDS s] $name: $*" | tee -a "$LOG_DIR/summary.txt"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOG_DIR/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== [$SECONDS s] $name exit=$rc | last line: $(tail -n 1 "$LOG_DIR/$name.log")" | tee -a "$LOG_DIR/summary.txt"
  [ "$rc" -eq 0 ] || status=1
}

# --- environment: torch first, then the package (installed without dependencies only when missing)
"$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available())" 2>&1 | tee "$LOG_DIR/env.log"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "torch is not installed for $PY: nothing can run here (no internet to install it)" | tee -a "$LOG_DIR/env.log"
  exit 1
fi
if ! "$PY" -c "import artstyle" >/dev/null 2>&1; then
  echo "artstyle not importable: pip install -e . --no-deps --no-build-isolation" | tee -a "$LOG_DIR/env.log"
  "$PY" -m pip install -e . --no-deps --no-build-isolation 2>&1 | tail -n 3 | tee -a "$LOG_DIR/env.log"
  if ! "$PY" -c "import artstyle" >/dev/null 2>&1; then
    echo "still not importable: falling back to PYTHONPATH=$PWD" | tee -a "$LOG_DIR/env.log"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG_DIR/env.log"
import importlib
for name in ("torch", "timm", "transformers", "accelerate", "datasets", "evaluate", "huggingface_hub", "artstyle"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as error:  # report every missing dependency, not only the first
        print(f"{name} MISSING: {error!r}")
import torch
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(), "bf16:", torch.cuda.is_bf16_supported())
EOF
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "CUDA is not available: stopping (this script is for a GPU machine)" | tee -a "$LOG_DIR/summary.txt"
  exit 1
fi

# --- 1. CUDA smoke test of pretraining (single process: no SyncBatchNorm)
step pretrain_smoke 120 "$PY" run_pretrain.py --config_preset tiny --dataset demo \
  --dataset_options '{"num_images": 256}' --per_device_train_batch_size 32 --max_train_steps 6 \
  --mixed_precision bf16 --num_workers 4 --report_to none --logging_steps 1 \
  --output_dir "$LOG_DIR/pretrain_smoke" --overwrite_output_dir
"$PY" - "$LOG_DIR/pretrain_smoke/all_results.json" <<'EOF' 2>&1 | tee -a "$LOG_DIR/pretrain_smoke.log"
import json, math, sys
try:
    results = json.load(open(sys.argv[1]))
except OSError as error:
    sys.exit(f"pretrain_smoke: no all_results.json ({error})")
losses = {k: v for k, v in results.items() if k.startswith("train_loss")}
print("pretrain_smoke steps:", results.get("train_steps"), "losses:", losses)
sys.exit(0 if results.get("train_steps") == 6 and all(math.isfinite(v) for v in losses.values()) else 1)
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# --- 2. pretraining step at paper scale (floor / MoCo v3 baseline / full method, + one component at a time)
step bench_pretrain_step 240 "$PY" benchmarks/bench_pretrain_step.py --config_preset vit_base --image_size 224 \
  --device cuda --precision bf16 --batch_size 64 --steps 20 --warmup 5 --breakdown \
  --json "$LOG_DIR/bench_pretrain_step.json"

# --- 3. inference: classifier vs bare timm ViT, and pipeline throughput
step bench_inference 90 "$PY" benchmarks/bench_inference.py --config_preset vit_base --device cuda \
  --precision bf16 --batch_size 64 --steps 30 --warmup 5 --pipeline_batches 5 \
  --json "$LOG_DIR/bench_inference.json"

echo "=== done in $SECONDS s, status=$status; logs in $LOG_DIR" | tee -a "$LOG_DIR/summary.txt"
exit "$status"
