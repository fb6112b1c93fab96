#!/usr/bin/env bash
# One-shot GPU check of artstyle (run from the repository root on a CUDA machine, no internet needed):
#   0. setup: wheels carried in $WHEELS_DIR (default .whl: datasets, evaluate, kornia, kornia_rs, dill, multiprocess
#      for Python 3.12, see benchmarks/README.md) are installed to a private folder when the modules are missing;
#   1. CUDA smoke test of pretraining: a few bf16 steps of run_pretrain.py (tiny config, built-in demo data);
#   2. bench_data.py: tiny preset, 64 px, batch 128, bf16: CPU-augmentation path vs GPU-augmentation path, alone and
#      in a training loop (steps/s, fraction of time waiting for data);
#   3. bench_pretrain_step.py at paper scale: ViT-B/16, 224 px, bf16, batch 64, eager AND torch.compile, FLOPs of the
#      floor against the device's peak ($PEAK_TFLOPS, default 989 = H100/H200 dense bf16);
#   4. bench_inference.py on CUDA (ViT-B/16): model forward, pipeline (bf16, 8 workers) and artstyle-predict on a
#      folder of 2,000 images.
# Writes ONE summary, $LOG_DIR/gpu_check.json (device, tiny_steps_per_s, tiny_data_wait_fraction, floor_ratio,
# full_ratio, compile_speedup, floor_peak_fraction, pipeline_images_per_s, predict_images_per_s, + details), beside
# the logs in $OUT (if set) or a fresh temporary folder. floor_ratio/full_ratio are the COMPILED mode's (chosen
# before measuring: it is the mode a GPU run uses); the eager ones are floor_ratio_eager/full_ratio_eager.
# Budget: under 8 minutes. Usage: bash benchmarks/gpu_check.sh   (PYTHON=/path/to/python to pick an interpreter)
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

# --- environment: carried wheels for missing modules, torch, then the package (no dependencies, only when missing)
WHEELS_DIR="${WHEELS_DIR:-.whl}"
if ! "$PY" -c "import datasets, evaluate, kornia" >/dev/null 2>&1 && ls "$WHEELS_DIR"/*.whl >/dev/null 2>&1; then
  echo "installing carried wheels from $WHEELS_DIR into /tmp/artstyle_site" | tee "$LOG_DIR/setup.log"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/artstyle_site \
    "$WHEELS_DIR"/*.whl 2>&1 | tail -n 3 | tee -a "$LOG_DIR/setup.log"
  export PYTHONPATH="/tmp/artstyle_site${PYTHONPATH:+:$PYTHONPATH}"
fi
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
for name in ("torch", "torchvision", "timm", "transformers", "accelerate", "datasets", "evaluate", "kornia",
             "huggingface_hub", "artstyle"):
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
step pretrain_smoke 60 "$PY" run_pretrain.py --config_preset tiny --dataset_name demo \
  --dataset_options '{"num_images": 256}' --per_device_train_batch_size 32 --max_train_steps 6 \
  --mixed_precision bf16 --dataloader_num_workers 4 --report_to none --logging_steps 1 \
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

# --- 2. data path: tiny preset, 64 px, batch 128 (GPU augmentation vs CPU augmentation in 8 workers)
step bench_data 120 "$PY" benchmarks/bench_data.py --config_preset tiny --device cuda --precision bf16 \
  --batch_size 128 --num_workers 8 --num_images 2048 --source_image_size 160 --batches 30 --train_steps 60 \
  --warmup 5 --paths gpu,cpu --json "$LOG_DIR/bench_data.json"

# --- 3. pretraining step at paper scale (floor / MoCo v3 baseline / full method), eager and compiled
step bench_pretrain_step 270 "$PY" benchmarks/bench_pretrain_step.py --config_preset vit_base --image_size 224 \
  --device cuda --precision bf16 --batch_size 64 --steps 15 --warmup 3 --compile \
  --peak_tflops "${PEAK_TFLOPS:-989}" --json "$LOG_DIR/bench_pretrain_step.json"

# --- 4. inference: classifier vs bare timm ViT, pipeline and artstyle-predict throughput
step bench_inference 110 "$PY" benchmarks/bench_inference.py --config_preset vit_base --device cuda \
  --precision bf16 --batch_size 64 --steps 20 --warmup 5 --pipeline_images 2048 --pipeline_batch_size 128 \
  --pipeline_batches 2 --pipeline_workers 8 --pipeline_dtype bf16 --predict_images 2000 \
  --json "$LOG_DIR/bench_inference.json"

# --- summary: ONE JSON (missing parts stay null and are named under "missing")
"$PY" benchmarks/gpu_check_summary.py "$LOG_DIR" 2>&1 | tee -a "$LOG_DIR/summary.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "=== done in $SECONDS s, status=$status; summary $LOG_DIR/gpu_check.json; logs in $LOG_DIR" | tee -a "$LOG_DIR/summary.txt"
exit "$status"
