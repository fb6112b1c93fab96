#!/usr/bin/env bash
# One-shot GPU check of artstyle (run from the repository root on a CUDA machine, no internet needed):
#   0. setup (benchmarks/_gpu_setup.sh): wheels carried in $WHEELS_DIR (default .whl: datasets, evaluate, dill,
#      multiprocess for Python 3.12, see benchmarks/README.md) are installed to a private folder when
#      the modules are missing;
#   1. pretrain_smoke: CUDA smoke test of pretraining: a few bf16 steps of run_pretrain.py (tiny config, demo data);
#      skipped with SKIP_SMOKE=1 (gpu_session.sh sets it when the ablation's run_pretrain.py runs passed on CUDA);
#   2. bench_data: bench_data.py, tiny preset, 64 px, batch 128, bf16: CPU-augmentation path vs GPU-augmentation path
#      (from the decoded cache, run_pretrain.py's default for a collection this size),
#      alone and in a training loop (steps/s, fraction of time waiting for data);
#   3. pstep_compile: bench_pretrain_step.py at paper scale (ViT-B/16, 224 px, bf16, batch 64), eager AND
#      torch.compile interleaved, FLOPs of the floor against the device's peak ($PEAK_TFLOPS, default 989 = H100/H200
#      dense bf16);
#   4. pstep_eager: the same, eager only, when step 3 did not finish (a fallback: step 3 measures the eager mode too);
#   5. bench_inference: bench_inference.py on CUDA (ViT-B/16): model forward, pipeline (bf16, 8 workers) and
#      artstyle-predict on a folder of 2,000 images;
#   6. bench_data_compiled (optional, when time is left): the tiny GPU-path loop of step 2 compiled: the model with
#      reduce-overhead (CUDA graphs), the augmentation's device part in the default mode (as run_pretrain.py
#      --torch_compile), the decoded cache on the device (--cache_on auto).
# Writes ONE summary, $LOG_DIR/gpu_check.json (device, tiny_steps_per_s, tiny_data_wait_fraction, floor_ratio,
# full_ratio, compile_speedup, floor_peak_fraction, pipeline_images_per_s, predict_images_per_s, + details), beside the
# logs in $GPU_CHECK_DIR, else $OUT (if set), else a fresh temporary folder. floor_ratio/full_ratio are the COMPILED
# mode's (chosen before measuring: it is the mode a GPU run uses); the eager ones are floor_ratio_eager/full_ratio_eager.
#
# Time budget: everything (setup included) ends within CHECK_BUDGET_S seconds (default 540) of the start, or by the
# absolute time CHECK_DEADLINE_EPOCH (`date +%s`) when that is set (gpu_session.sh). The steps run in the order above;
# each gets its full size when the time left (minus what the later cheap steps need at their smallest: data, eager,
# inference are protected, the compile run is not) allows it, else a smaller "lite" size, else it is skipped with a
# line "skipped <step>: ..." in $LOG_DIR/summary.txt. The compile run takes whatever is left (it is the costly one).
# ALLOW_CPU=1 on a machine without CUDA: a dry run of the whole flow with tiny sizes on the CPU (no compile).
# Usage: bash benchmarks/gpu_check.sh   (PYTHON=/path/to/python to pick an interpreter)
set -uo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/_gpu_setup.sh
source benchmarks/_gpu_setup.sh
PY="$(artstyle_pick_python)"
START=$(date +%s)
LOG_DIR="${GPU_CHECK_DIR:-${OUT:-$(mktemp -d -t artstyle_gpu_check.XXXXXX)}}"
mkdir -p "$LOG_DIR"
DEADLINE="${CHECK_DEADLINE_EPOCH:-$((START + ${CHECK_BUDGET_S:-540}))}"
SUMMARY_MARGIN_S="${SUMMARY_MARGIN_S:-15}"  # kept for gpu_check_summary.py at the end
export ARTSTYLE_CACHE="${ARTSTYLE_CACHE:-$LOG_DIR/datasets_cache}"
echo "logs: $LOG_DIR; budget: $((DEADLINE - START)) s"
status=0

if ! artstyle_gpu_setup "$PY" "$LOG_DIR/env.log"; then
  echo "setup failed (see env.log): stopping" | tee -a "$LOG_DIR/summary.txt"
  exit 1
fi
MODE=cuda
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  if [[ "${ALLOW_CPU:-0}" == 1 ]]; then
    MODE=cpu
    echo "CUDA is not available: ALLOW_CPU=1, a dry run with tiny sizes on the CPU" | tee -a "$LOG_DIR/summary.txt"
  else
    echo "CUDA is not available: stopping (this script is for a GPU machine; ALLOW_CPU=1 for a CPU dry run)" \
      | tee -a "$LOG_DIR/summary.txt"
    exit 1
  fi
fi

left() { echo $((DEADLINE - $(date +%s) - SUMMARY_MARGIN_S)); }

step() {  # step <name> <timeout_s> <command...>: run with a time limit, tee its log, remember failures
  local name="$1" limit="$2"
  shift 2
  echo "=== [$(($(date +%s) - START)) s] $name (limit $limit s): $*" | tee -a "$LOG_DIR/summary.txt"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOG_DIR/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== [$(($(date +%s) - START)) s] $name exit=$rc | last line: $(tail -n 1 "$LOG_DIR/$name.log")" \
    | tee -a "$LOG_DIR/summary.txt"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

skip() {  # skip <name> <reason>
  echo "=== skipped $1: $2" | tee -a "$LOG_DIR/summary.txt"
}

# fit <name> <full_s> <min_s> <reserve_s>: prints "full <limit>", "lite <limit>" or "skip <reason>" for a step that
# needs full_s at its full size and at least min_s at its lite size, leaving reserve_s for the later steps
fit() {
  local avail=$(($(left) - $4))
  if ((avail >= $2)); then echo "full $2"
  elif ((avail >= $3)); then echo "lite $avail"
  else echo "skip only ${avail} s left for it (after ${4} s kept for later steps), needs >= $3 s"
  fi
}

# sizes: full, lite (GPU) and cpu (ALLOW_CPU dry run); minimum seconds of each step at its lite size
DATA_MIN=45 EAGER_MIN=40 COMPILE_MIN=100 INFER_MIN=45 SMOKE_MIN=40
PEAK="${PEAK_TFLOPS:-989}"
if [[ "$MODE" == cuda ]]; then
  SMOKE_ARGS=(--per_device_train_batch_size 32 --mixed_precision bf16 --dataloader_num_workers 4)
  SMOKE_STEPS=6
  # --cache: the gpu path serves the decoded uint8 cache, as run_pretrain.py does by default (--decoded_cache auto:
  # on up to 4 GB; these 2,048 images take 0.1 GB); decoding in the workers was 15 % data wait in the 11-28 run
  DATA_COMMON=(--config_preset tiny --device cuda --precision bf16 --batch_size 128 --num_workers 8
               --source_image_size 160 --warmup 5 --paths gpu,cpu --cache)
  DATA_FULL=(--num_images 2048 --batches 30 --train_steps 60)
  DATA_LITE=(--num_images 1024 --batches 15 --train_steps 30)
  PSTEP_COMMON=(--config_preset vit_base --image_size 224 --device cuda --precision bf16 --batch_size 64
                --peak_tflops "$PEAK")
  EAGER_ARGS=(--steps 15 --warmup 3)
  COMPILE_ARGS=(--steps 15 --warmup 3 --compile)
  INFER_COMMON=(--config_preset vit_base --device cuda --precision bf16 --batch_size 64 --pipeline_batch_size 128
                --pipeline_workers 8 --pipeline_dtype bf16)
  INFER_FULL=(--steps 20 --warmup 5 --pipeline_images 2048 --pipeline_batches 2 --predict_images 2000)
  INFER_LITE=(--steps 10 --warmup 3 --pipeline_images 1024 --pipeline_batches 2 --predict_images 1000)
else
  TINY='{"backbone_depth": 2}'
  SMOKE_ARGS=(--per_device_train_batch_size 8 --mixed_precision no --dataloader_num_workers 0)
  SMOKE_STEPS=2
  DATA_COMMON=(--config_preset tiny --device cpu --precision fp32 --batch_size 8 --num_workers 0
               --source_image_size 64 --warmup 1 --paths gpu,cpu --config_overrides "$TINY")
  DATA_FULL=(--num_images 16 --batches 2 --train_steps 2)
  DATA_LITE=("${DATA_FULL[@]}")
  PSTEP_COMMON=(--config_preset tiny --device cpu --precision fp32 --batch_size 4 --peak_tflops 1
                --config_overrides "$TINY")
  EAGER_ARGS=(--steps 1 --warmup 1)
  COMPILE_ARGS=()
  INFER_COMMON=(--config_preset tiny --device cpu --precision fp32 --batch_size 4 --pipeline_batch_size 4
                --config_overrides "$TINY")
  INFER_FULL=(--steps 1 --warmup 1 --pipeline_images 8 --pipeline_batches 1 --predict_images 8)
  INFER_LITE=("${INFER_FULL[@]}")
fi

# --- 1. smoke test of pretraining (single process: no SyncBatchNorm)
if [[ "${SKIP_SMOKE:-0}" == 1 ]]; then
  skip pretrain_smoke "SKIP_SMOKE=1 (${SKIP_SMOKE_REASON:-set by the caller})"
else
  read -r tier limit rest <<< "$(fit pretrain_smoke 60 "$SMOKE_MIN" $((DATA_MIN + EAGER_MIN + INFER_MIN)))"
  if [[ "$tier" == skip ]]; then
    skip pretrain_smoke "$limit $rest"
  else
    step pretrain_smoke "$limit" "$PY" run_pretrain.py --config_preset tiny --dataset_name demo \
      --dataset_options '{"num_images": 256}' --max_train_steps "$SMOKE_STEPS" "${SMOKE_ARGS[@]}" \
      --report_to none --logging_steps 1 --output_dir "$LOG_DIR/pretrain_smoke" --overwrite_output_dir
    "$PY" - "$LOG_DIR/pretrain_smoke/all_results.json" "$SMOKE_STEPS" <<'EOF' 2>&1 | tee -a "$LOG_DIR/pretrain_smoke.log"
import json, math, sys
try:
    results = json.load(open(sys.argv[1]))
except OSError as error:
    sys.exit(f"pretrain_smoke: no all_results.json ({error})")
losses = {k: v for k, v in results.items() if k.startswith("train_loss")}
print("pretrain_smoke steps:", results.get("train_steps"), "augment_on:", results.get("augment_on"), "losses:", losses)
sys.exit(0 if results.get("train_steps") == int(sys.argv[2]) and all(math.isfinite(v) for v in losses.values()) else 1)
EOF
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  fi
fi

# --- 2. data path: tiny preset, 64 px, batch 128 (GPU augmentation vs CPU augmentation in 8 workers)
# on CUDA the compiled step's minimum is kept too: when time is short, bench_data runs at its lite size rather than
# leaving no room for the compile measurement
DATA_RESERVE=$((EAGER_MIN + INFER_MIN)); [[ "$MODE" == cuda ]] && DATA_RESERVE=$((DATA_RESERVE + COMPILE_MIN))
read -r tier limit rest <<< "$(fit bench_data 120 "$DATA_MIN" "$DATA_RESERVE")"
if [[ "$tier" == skip ]]; then
  skip bench_data "$limit $rest"
else
  sizes=("${DATA_FULL[@]}"); [[ "$tier" == lite ]] && sizes=("${DATA_LITE[@]}")
  echo "bench_data: $tier size" | tee -a "$LOG_DIR/summary.txt"
  step bench_data "$limit" "$PY" benchmarks/bench_data.py "${DATA_COMMON[@]}" "${sizes[@]}" \
    --json "$LOG_DIR/bench_data.json" --profile "$LOG_DIR/bench_data_profile.txt"
fi

# --- 3. pretraining step at paper scale (floor / MoCo v3 baseline / full method), eager AND compiled, interleaved
#        (compile_speedup, both modes' ratios): first, since it also measures the eager mode; what is left after
#        the eager fallback's and the inference's lite sizes, at most 300 s
compiled_done=0
if [[ "$MODE" == cpu ]]; then
  skip pstep_compile "CPU dry run (an inductor compile takes minutes on a CPU)"
else
  read -r tier limit rest <<< "$(fit pstep_compile 300 "$COMPILE_MIN" $((EAGER_MIN + INFER_MIN)))"
  [[ "$tier" == full ]] || [[ "$tier" == skip ]] || tier=full  # one size: the limit is what is left
  if [[ "$tier" == skip ]]; then
    skip pstep_compile "$limit $rest"
  elif step pstep_compile "$limit" "$PY" benchmarks/bench_pretrain_step.py "${PSTEP_COMMON[@]}" \
      "${COMPILE_ARGS[@]}" --json "$LOG_DIR/bench_pretrain_step_compiled.json"; then
    cp "$LOG_DIR/bench_pretrain_step_compiled.json" "$LOG_DIR/bench_pretrain_step.json"
    compiled_done=1
  fi
fi

# --- 4. the same, eager only: the ratios when the compiled run above did not finish (or on a CPU dry run)
if ((compiled_done)); then
  skip pstep_eager "the compiled run measured the eager mode too"
else
  read -r tier limit rest <<< "$(fit pstep_eager 60 "$EAGER_MIN" "$INFER_MIN")"
  if [[ "$tier" == skip ]]; then
    skip pstep_eager "$limit $rest"
  else
    step pstep_eager "$limit" "$PY" benchmarks/bench_pretrain_step.py "${PSTEP_COMMON[@]}" "${EAGER_ARGS[@]}" \
      --json "$LOG_DIR/bench_pretrain_step.json"
  fi
fi

# --- 5. inference: classifier vs bare timm ViT, pipeline and artstyle-predict throughput
read -r tier limit rest <<< "$(fit bench_inference 110 "$INFER_MIN" 0)"
if [[ "$tier" == skip ]]; then
  skip bench_inference "$limit $rest"
else
  sizes=("${INFER_FULL[@]}"); [[ "$tier" == lite ]] && sizes=("${INFER_LITE[@]}")
  echo "bench_inference: $tier size" | tee -a "$LOG_DIR/summary.txt"
  step bench_inference "$limit" "$PY" benchmarks/bench_inference.py "${INFER_COMMON[@]}" "${sizes[@]}" \
    --json "$LOG_DIR/bench_inference.json"
fi

# --- 6. optional, with what is left: the tiny GPU-path loop of step 2 compiled (CUDA graphs), the launch-bound case
#        compiling is for. Its failure does not fail the check (the required keys come from steps 2-5).
if [[ "$MODE" == cpu ]]; then
  skip bench_data_compiled "CPU dry run (an inductor compile takes minutes on a CPU)"
else
  # 2026-11-28: the model's compile alone took 83 s of a 113 s run; the augmentation's adds one more compile
  read -r tier limit rest <<< "$(fit bench_data_compiled 200 90 0)"
  if [[ "$tier" == skip ]]; then
    skip bench_data_compiled "$limit $rest"
  else
    kept_status=$status
    step bench_data_compiled "$limit" "$PY" benchmarks/bench_data.py "${DATA_COMMON[@]}" "${DATA_LITE[@]}" \
      --paths gpu --compile --compile_mode reduce-overhead --json "$LOG_DIR/bench_data_compiled.json" \
      || echo "bench_data_compiled failed: optional, the check's status is unchanged" | tee -a "$LOG_DIR/summary.txt"
    status=$kept_status
  fi
fi

# --- summary: ONE JSON (missing parts stay null and are named under "missing")
timeout 60 "$PY" benchmarks/gpu_check_summary.py "$LOG_DIR" 2>&1 | tee -a "$LOG_DIR/summary.txt"
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
  # a CPU dry run never compiles: only the compiled keys missing is its expected outcome
  if [[ "$MODE" == cpu ]] && "$PY" -c "import json, sys; missing = set(json.load(open(sys.argv[1]))['missing']); \
      sys.exit(0 if missing <= {'floor_ratio', 'full_ratio', 'compile_speedup'} else 1)" "$LOG_DIR/gpu_check.json" \
      2>/dev/null; then
    echo "CPU dry run: only the compiled keys are missing, as expected" | tee -a "$LOG_DIR/summary.txt"
  else
    status=1
  fi
fi

echo "=== done in $(($(date +%s) - START)) s, status=$status; summary $LOG_DIR/gpu_check.json; logs in $LOG_DIR" \
  | tee -a "$LOG_DIR/summary.txt"
exit "$status"
