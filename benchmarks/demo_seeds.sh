#!/usr/bin/env bash
# The README's demo comparison over seeds (issue 10, "the demo tells a true story"): for each seed, pretrain each
# setting with run_pretrain.py's defaults (built-in demo, tiny preset, 4 epochs of batch 32) and evaluate it with
# run_finetune.py's defaults (LP-FT: linear probe, then 5 epochs of fine-tuning) plus a kNN and a linear probe of the
# frozen encoder; and fine-tune a randomly initialised encoder with the same recipe and seed ("scratch").
#   OUT_DIR=/tmp/demo_seeds SEEDS="0 1 2" bash benchmarks/demo_seeds.sh      # ≈ 13 min per seed on 2 idle cores
# Writes $OUT_DIR/results.jsonl (one line per run: setting, seed, mode, eval/test accuracy) and prints the mean ± std
# table of validation and test accuracy built from it. Settings (SETTINGS, space-separated):
#   full          the package's default config (all four components)
#   full_gram_mse the default config with the paper's Gram MSE (gram_loss="mse")
#   moco_v3       --moco_v3_baseline
# EXTRA_PRETRAIN / EXTRA_FINETUNE: more arguments for every run, split on spaces (JSON without spaces). CPU dry run
# (≈ 70 s; full_gram_mse left out because it passes its own --config_overrides):
#   OUT_DIR=/tmp/ds_dry SEEDS=0 SETTINGS="full moco_v3" \
#   EXTRA_PRETRAIN='--max_train_steps 2 --dataset_options {"num_images":48,"image_size":32}
#                   --config_overrides {"image_size":32,"backbone_depth":2}' \
#   EXTRA_FINETUNE='--max_train_steps 1 --probe_epochs 2 --dataset_options {"num_images":48,"image_size":32}' \
#   bash benchmarks/demo_seeds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
OUT_DIR="${OUT_DIR:-outputs/demo_seeds}"
SEEDS="${SEEDS-0 1 2}"  # empty: no runs, only the table from results.jsonl
SETTINGS="${SETTINGS:-full moco_v3 full_gram_mse}"
read -r -a extra_pretrain <<< "${EXTRA_PRETRAIN:-}"
read -r -a extra_finetune <<< "${EXTRA_FINETUNE:-}"
export HF_HUB_OFFLINE=1
mkdir -p "$OUT_DIR"
results="$OUT_DIR/results.jsonl"

record() {  # record SETTING SEED MODE FOLDER
  "$PY" - "$@" >> "$results" <<'PY'
import json, sys
setting, seed, mode, folder = sys.argv[1:]
r = json.load(open(f"{folder}/all_results.json"))
print(json.dumps({"setting": setting, "seed": int(seed), "mode": mode, "eval_accuracy": r["eval_accuracy"],
                  "test_accuracy": r.get("test_accuracy")}))
PY
}

for seed in $SEEDS; do
  for setting in $SETTINGS; do
    case "$setting" in
      full) args=() ;;
      full_gram_mse) args=(--config_overrides '{"gram_loss": "mse"}') ;;
      moco_v3) args=(--moco_v3_baseline) ;;
      *) echo "unknown setting $setting" >&2; exit 2 ;;
    esac
    run="$OUT_DIR/${setting}_s$seed"
    "$PY" run_pretrain.py --output_dir "$run/pretrain" --report_to none --overwrite_output_dir --seed "$seed" \
      "${args[@]}" "${extra_pretrain[@]}" > "$run.pretrain.log" 2>&1
    for mode in knn linear_probe finetune; do
      flag=(); [[ "$mode" != finetune ]] && flag=(--"$mode")
      "$PY" run_finetune.py --model_name_or_path "$run/pretrain" --output_dir "$run/$mode" --save_plots false \
        --seed "$seed" "${flag[@]}" "${extra_finetune[@]}" > "$run.$mode.log" 2>&1
      record "$setting" "$seed" "$mode" "$run/$mode"
    done
  done
  run="$OUT_DIR/scratch_s$seed"
  "$PY" run_finetune.py --model_name_or_path none --output_dir "$run/finetune" --save_plots false --seed "$seed" \
    "${extra_finetune[@]}" > "$run.finetune.log" 2>&1
  record scratch "$seed" finetune "$run/finetune"
done

"$PY" - "$results" <<'PY'
import collections, json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
groups = collections.defaultdict(list)
for row in rows:
    groups[(row["setting"], row["mode"])].append(row)
def stat(values):
    values = [100 * v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"
print("| setting | evaluation | seeds | validation acc (%) | test acc (%) |\n|---|---|---|---|---|")
for (setting, mode), group in sorted(groups.items()):
    print(f"| {setting} | {mode} | {len(group)} | {stat([r['eval_accuracy'] for r in group])} | "
          f"{stat([r['test_accuracy'] for r in group])} |")
PY
