#!/usr/bin/env bash
# One-call GPU ablation (issue 10): several (setting, seed) runs of benchmarks/ablation.py share ONE GPU at once
# (a tiny ViT does not fill an H100/H200), each pretraining + linear probe + kNN + fine-tune, resumable per
# (setting, seed), and the table comes back in one file:
#   $RESULTS_DIR/ablation_gpu.json  (a list: setting, seed, steps, batch, image_size, linear_probe_acc, knn_acc,
#                                    finetune_acc; accuracies as fractions)
#   $RESULTS_DIR/ablation_gpu.md    (mean ± std per setting, the paired full − moco_v3 per seed, mean and s.e.)
# and, when $OUT is set (the device tool's return folder), copies of both plus the PNG, the per-run result JSONs and
# logs (the runs themselves, with their weights, stay in $OUT_DIR = outputs/ablation_gpu, git-ignored).
#
# Sized to fit 8 minutes of one H100/H200 including setup with the defaults (2 settings x 3 seeds = 6 runs at once,
# 1200 steps of batch 128 at 64 px each; an earlier H200 measurement ran 2 such runs side by side at ~3.5 min, loader-bound
# with 7 workers each; here 2 workers x 6 runs on 16 cores). Every run is killed after TIME_LIMIT seconds so the
# call returns in time; a killed run leaves no result file and is redone by the next call (finished ones are
# skipped). DEADLINE_EPOCH (`date +%s`, set by gpu_session.sh) caps every run's limit so that the runs AND the report
# end by then: a run gets min(TIME_LIMIT, DEADLINE_EPOCH - now - REPORT_MARGIN_S) and is not started below MIN_RUN_S.
# AUGMENT_ON (default gpu on CUDA, else auto = cpu) is passed to run_pretrain.py --augment_on (GPU two-view
# augmentation: the workers only decode to uint8), PRETRAIN_ARGS are further run_pretrain.py arguments.
# The environment comes from benchmarks/_gpu_setup.sh (carried wheels, once). Every size is an environment variable,
# so a CPU dry run is:
#   DATA_DIR=../shared/data/realart-dev STEPS=3 BATCH=8 SEEDS=0 PARALLEL=2 FINETUNE_EPOCHS=1 \
#   EXTRA_ARGS="--max_train_images 60 --max_test_images 30" bash benchmarks/gpu_ablation.sh
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=benchmarks/_gpu_setup.sh
source "$REPO/benchmarks/_gpu_setup.sh"
PYTHON="$(artstyle_pick_python)"
if [[ -z "${DATA_DIR:-}" ]]; then
  for candidate in ../shared/data/realart-dev ./shared/data/realart-dev; do
    if [[ -d "$candidate" ]]; then DATA_DIR="$candidate"; break; fi
  done
fi
if [[ -z "${DATA_DIR:-}" || ! -d "$DATA_DIR" ]]; then
  echo "gpu_ablation.sh: DATA_DIR not set and realart-dev not found at ../shared/data or ./shared/data" >&2
  exit 2
fi
STEPS="${STEPS:-1200}"
BATCH="${BATCH:-128}"
SEEDS="${SEEDS:-0,1,2}"
SETTINGS="${SETTINGS:-moco_v3,full}"
PARALLEL="${PARALLEL:-6}"
NUM_WORKERS="${NUM_WORKERS:-2}"
PRESET="${PRESET:-tiny}"
CONFIG_OVERRIDES="${CONFIG_OVERRIDES:-}"
AUGMENTATION="${AUGMENTATION:-style_preserving}"
MIXED_PRECISION="${MIXED_PRECISION:-}"
EVAL_SPLIT="${EVAL_SPLIT:-test}"
FINETUNE_EPOCHS="${FINETUNE_EPOCHS:-10}"
TIME_LIMIT="${TIME_LIMIT:-420}"
DEADLINE_EPOCH="${DEADLINE_EPOCH:-}"
REPORT_MARGIN_S="${REPORT_MARGIN_S:-20}"
MIN_RUN_S="${MIN_RUN_S:-60}"
AUGMENT_ON="${AUGMENT_ON:-}"
PRETRAIN_ARGS="${PRETRAIN_ARGS:-}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
# ablation.py --readouts (empty: none): each run is also evaluated through these poolers, with no extra pretraining,
# so full (cls_gram_diag) and moco_v3 (cls) are also compared with the pooler held fixed, both ways. They run after
# the run's own result file is written: a run killed at its time limit during them keeps that result.
READOUTS="${READOUTS-cls,cls_gram_diag}"
OUT_DIR="${OUT_DIR:-$REPO/outputs/ablation_gpu}"  # git-ignored; kept between calls on a warm machine
RESULTS_DIR="${RESULTS_DIR:-$REPO/benchmarks/results}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"  # many processes share the CPU cores

start=$(date +%s)
mkdir -p "$OUT_DIR/results" "$OUT_DIR/logs" "$RESULTS_DIR"
artstyle_gpu_setup "$PYTHON" "$OUT_DIR/logs/setup.log"
if [[ -z "$AUGMENT_ON" ]]; then
  AUGMENT_ON=$("$PYTHON" -c "import torch; print('gpu' if torch.cuda.is_available() else 'auto')")
fi
# ONE Python process (a Python start cost 15-20 s on a fresh H200 machine): the imports the runs need, the dataset
# cache (built once, before the parallel runs race to build it) and, for the GPU-augmentation path, the decoded uint8
# cache of the training images (run_pretrain --decoded_cache auto finds it; without it the first run builds it while
# the others wait on its lock; best effort: with --max_train_images in EXTRA_ARGS the runs' split differs and the
# first run builds its own)
"$PYTHON" - "$DATA_DIR" "$PRESET" "$CONFIG_OVERRIDES" "$AUGMENT_ON" <<'PY'
import importlib, json, sys, time
import torch
for name in ("timm", "transformers", "datasets", "accelerate", "sklearn", "matplotlib"):
    importlib.import_module(name)
print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else " (CPU dry run)"), flush=True)
from artstyle import ArtStyleConfig
from artstyle.data import load_style_dataset
from artstyle.fast_data import DecodedImages, build_decoded_cache, default_decode_size
data_dir, preset, overrides, augment_on = sys.argv[1], sys.argv[2], json.loads(sys.argv[3] or "{}"), sys.argv[4]
split = load_style_dataset("imagefolder", data_dir=data_dir, test_size=0.2, seed=0)["train"]
if augment_on == "gpu":
    start = time.perf_counter()
    try:
        size = default_decode_size(ArtStyleConfig.from_preset(preset, **overrides).image_size)
        path = build_decoded_cache(DecodedImages(split, size), num_workers=8)
        print(f"decoded cache {path} ({len(split)} images at {size} px) in {time.perf_counter() - start:.1f} s",
              flush=True)
    except Exception as error:  # best effort: each run builds it then
        print(f"decoded cache not pre-built (each run builds it): {error!r}", flush=True)
PY
echo "setup done after $(( $(date +%s) - start )) s; data $DATA_DIR; steps $STEPS, batch $BATCH, seeds $SEEDS, settings $SETTINGS, $PARALLEL at once, augment_on $AUGMENT_ON${DEADLINE_EPOCH:+, deadline in $(( DEADLINE_EPOCH - $(date +%s) )) s}"

common=(--data_dir "$DATA_DIR" --output_dir "$OUT_DIR" --max_steps "$STEPS" --batch_size "$BATCH"
        --config_preset "$PRESET" --num_workers "$NUM_WORKERS" --augmentation "$AUGMENTATION"
        --eval_split "$EVAL_SPLIT" --finetune_epochs "$FINETUNE_EPOCHS"
        "--pretrain_args=--augment_on $AUGMENT_ON $PRETRAIN_ARGS")
[[ -n "$CONFIG_OVERRIDES" ]] && common+=(--config_overrides "$CONFIG_OVERRIDES")
[[ -n "$MIXED_PRECISION" ]] && common+=(--mixed_precision "$MIXED_PRECISION")
[[ -n "$READOUTS" ]] && common+=(--readouts "$READOUTS")
read -r -a extra <<< "$EXTRA_ARGS"

pids=()
not_started=0
IFS=, read -r -a seed_list <<< "$SEEDS"
IFS=, read -r -a setting_list <<< "$SETTINGS"
for seed in "${seed_list[@]}"; do           # seed-major: a cut-short call still has complete pairs
  for setting in "${setting_list[@]}"; do
    if [[ -f "$OUT_DIR/results/${setting}__seed${seed}.json" ]]; then
      echo "skip $setting seed $seed: result exists"
      continue
    fi
    while (( $(jobs -rp | wc -l) >= PARALLEL )); do sleep 1; done
    limit="$TIME_LIMIT"
    if [[ -n "$DEADLINE_EPOCH" ]]; then
      left=$(( DEADLINE_EPOCH - $(date +%s) - REPORT_MARGIN_S ))
      (( left < limit )) && limit="$left"
      if (( limit < MIN_RUN_S )); then
        echo "not started $setting seed $seed: only $limit s left before the deadline (MIN_RUN_S=$MIN_RUN_S)"
        not_started=$((not_started + 1))
        continue
      fi
    fi
    echo "start $setting seed $seed (limit $limit s)"
    # timeout signals the run's whole process group (run_pretrain.py and the DataLoader workers too); the last line
    # of the run's log says how it ended
    (
      log="$OUT_DIR/logs/${setting}__seed${seed}.log"
      rc=0  # (set -e holds in this subshell too: the failure is caught, not fatal)
      timeout --signal=TERM --kill-after=10 "$limit" "$PYTHON" benchmarks/ablation.py "${common[@]}" \
        --settings "$setting" --seeds "$seed" "${extra[@]}" > "$log" 2>&1 || rc=$?
      case "$rc" in
        0) echo "gpu_ablation.sh: $setting seed $seed finished" >> "$log" ;;
        124|137) echo "gpu_ablation.sh: $setting seed $seed KILLED at its time limit of $limit s (exit $rc)" >> "$log" ;;
        *) echo "gpu_ablation.sh: $setting seed $seed FAILED (exit $rc)" >> "$log" ;;
      esac
      exit "$rc"
    ) &
    pids+=($!)
  done
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
(( failed )) && echo "$failed run(s) failed or hit their time limit (rerun to resume); logs in $OUT_DIR/logs"
(( not_started )) && echo "$not_started run(s) not started: too little time left before DEADLINE_EPOCH"
failed=$((failed + not_started))

"$PYTHON" benchmarks/ablation.py --data_dir "$DATA_DIR" --output_dir "$OUT_DIR" --report_only > /dev/null
if [[ -f "$OUT_DIR/ablation.md" ]]; then
  cp "$OUT_DIR/ablation_records.json" "$RESULTS_DIR/ablation_gpu.json"
  cp "$OUT_DIR/ablation.md" "$RESULTS_DIR/ablation_gpu.md"
  cp "$OUT_DIR/ablation.png" "$RESULTS_DIR/ablation_gpu.png"
  cat "$RESULTS_DIR/ablation_gpu.md"
  if [[ -n "${OUT:-}" && "$OUT" != "$RESULTS_DIR" ]]; then
    cp "$RESULTS_DIR"/ablation_gpu.{json,md,png} "$OUT/"
    cp -r "$OUT_DIR/logs" "$OUT_DIR/results" "$OUT/" 2>/dev/null || true
  fi
fi
echo "gpu_ablation.sh: $(( $(date +%s) - start )) s in all"
exit $(( failed > 0 ))
