#!/usr/bin/env bash
# THE script of a lent GPU session (issues 10 and 11 in one device call of ~10 minutes):
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl", "shared/data/realart-dev"], timeout_s=590)
#
# Phases, under ONE deadline (DEADLINE_S seconds from the start, default 540):
#   setup     benchmarks/_gpu_setup.sh once (carried wheels, artstyle importable, versions), CUDA present?
#   ablation  benchmarks/gpu_ablation.sh (issue 10): moco_v3 and full x seeds 0,1,2 side by side on the GPU, each
#             pretraining with the GPU two-view augmentation (AUGMENT_ON=gpu), then linear probe, kNN, fine-tune;
#             the phase ends within ABLATION_BUDGET_S (default 300) of the start: every run is killed in time
#             (DEADLINE_EPOCH), a killed run leaves no result, finished (setting, seed) pairs are kept and reported.
#   check     benchmarks/gpu_check.sh (issue 11) with the time that is left: bench_data, eager and compiled pretraining
#             step at ViT-B/16, inference; each step at full size, smaller, or skipped (a line says which) in
#             priority order; the pretraining smoke test is skipped when the ablation's runs pretrained on CUDA.
#   package   (always) into $OUT (a temporary folder, printed, when $OUT is unset), at most 8 files:
#             gpu_check.json, ablation_gpu.json, ablation_gpu.md, ablation_gpu.png, session_summary.txt (phase
#             timings and exit codes, what was skipped, the last lines of failing logs) and logs.tar.gz (every log
#             and result JSON of both phases; no weights, no caches).
# A failing phase is recorded and the next one still runs; the exit status is 1 when anything failed.
#
# Measured on the first lent H200 (2026-11-28): a Python start costs 15-20 s there (cold imports), the runs made 5-6
# steps/s each (host-bound), so 600 steps took 100-120 s; a 10-epoch fine-tune does not fit beside them, hence
# FINETUNE_EPOCHS=3 here (the CPU validation's recipe). benchmarks/README.md, "First lent session", has the plan.
# Default ablation size (env STEPS BATCH PARALLEL NUM_WORKERS SEEDS SETTINGS FINETUNE_EPOCHS ...; gpu_ablation.sh
# documents them all): 600 steps of batch 128 (tiny preset, 64 px), 6 runs at once, 2 loader workers each. Arithmetic:
# the last H200 measurement ran ~7.6 steps/s per run, loader-bound (CPU augmentation, 7 workers per run, 2 runs); the
# GPU augmentation's target is >= 40 steps/s for one run. Six runs share one GPU and 16 cores: count on a fifth of the
# target (~8 steps/s) and plan for ~5 steps/s (contention, the GPU augmentation's own kernels): 600 steps take
# 75-120 s; + ~30 s start-up (imports, datasets cache, model) + ~40 s evaluation (features, probe, a 10-epoch fine-tune
# on 3,600 images of 64 px) = 145-190 s per run, all 6 in parallel. The runs get 210-230 s: they start after the
# session's setup (~25 s: wheels, versions) and the phase's own (~20-40 s: imports, dataset cache), and are killed
# 25 s before the phase ends at 300 s (its report: ~10 s). 1,200 steps (issue 10's earlier budget)
# would need >= 8 steps/s per run under contention (1,200 steps in the ~160 s left after start-up and evaluation):
# set STEPS=1200 once a session has measured the rate
# (session_summary.txt prints each run's train_steps_per_second).
#
# Other env: PYTHON, OUT, WORK_DIR (default outputs/gpu_session: this call's logs), ABLATION_OUT_DIR (default
# outputs/ablation_gpu: the runs, resumable on a warm machine), DATA_DIR (default ./shared/data/realart-dev or
# ../shared/data/realart-dev), ALLOW_CPU=1 (no CUDA: dry run of every phase with tiny sizes on the CPU),
# PHASES (default setup,ablation,check; packaging always runs), ABLATION_SCRIPT / CHECK_SCRIPT (the phases' scripts,
# for tests), PACK_MARGIN_S (default 25: kept for the packaging), MIN_PHASE_S (default 30: a phase with less time
# left is not started).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=benchmarks/_gpu_setup.sh
source benchmarks/_gpu_setup.sh
PY="$(artstyle_pick_python)"
export PYTHON="$PY"  # the phases' scripts use the same interpreter
START=$(date +%s)
DEADLINE=$((START + ${DEADLINE_S:-540}))
ABLATION_BUDGET_S="${ABLATION_BUDGET_S:-300}"
PACK_MARGIN_S="${PACK_MARGIN_S:-25}"
MIN_PHASE_S="${MIN_PHASE_S:-30}"  # a phase with less time left is not started
PHASES=",${PHASES:-setup,ablation,check},"
ABLATION_SCRIPT="${ABLATION_SCRIPT:-benchmarks/gpu_ablation.sh}"
CHECK_SCRIPT="${CHECK_SCRIPT:-benchmarks/gpu_check.sh}"
WORK_DIR="${WORK_DIR:-$REPO/outputs/gpu_session}"
ABLATION_OUT_DIR="${ABLATION_OUT_DIR:-$REPO/outputs/ablation_gpu}"
if [[ -n "${OUT:-}" ]]; then
  RETURN_DIR="$OUT"
else
  RETURN_DIR="$(mktemp -d -t artstyle_gpu_session.XXXXXX)"
fi
CHECK_DIR="$WORK_DIR/check"
RESULTS_DIR="$WORK_DIR/ablation_results"
STATE="$WORK_DIR/phases.tsv"  # one line per phase: name, exit code, seconds, note (phases run in a piped subshell)
rm -rf "$CHECK_DIR" "$RESULTS_DIR" "$WORK_DIR/logs_staging" "$STATE" "$WORK_DIR/pythonpath" "$WORK_DIR"/*.log  # this call only
mkdir -p "$WORK_DIR" "$CHECK_DIR" "$RESULTS_DIR" "$ABLATION_OUT_DIR" "$RETURN_DIR"
touch "$WORK_DIR/start_marker"
echo "gpu_session: returning files in $RETURN_DIR; logs in $WORK_DIR; deadline in $((DEADLINE - START)) s"

now() { echo $(($(date +%s) - START)); }
record() {  # record <phase> <exit code> <seconds> <note>
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$STATE"
  echo "=== [$(now) s] phase $1: exit $2 after $3 s${4:+ ($4)}"
}
rc_note() {  # words for an exit code of a phase run under timeout
  case "$1" in
    0) echo "ok" ;;
    124|137) echo "killed at its time limit" ;;
    *) echo "failed" ;;
  esac
}

run_phases() {
  local ok=1 mode=cuda
  # --- setup
  if [[ "$PHASES" == *,setup,* ]]; then
    local t0
    t0=$(date +%s)
    if artstyle_gpu_setup "$PY" "$WORK_DIR/setup.log"; then
      if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        record setup 0 $(($(date +%s) - t0)) "$(grep '^device:' "$WORK_DIR/setup.log" | tail -n 1)"
      elif [[ "${ALLOW_CPU:-0}" == 1 ]]; then
        mode=cpu
        record setup 0 $(($(date +%s) - t0)) "no CUDA: ALLOW_CPU=1 dry run on the CPU"
      else
        record setup 1 $(($(date +%s) - t0)) "no CUDA on this machine (ALLOW_CPU=1 for a dry run): nothing measured"
        ok=0
      fi
    else
      record setup 1 $(($(date +%s) - t0)) "environment broken, see setup.log"
      ok=0
    fi
  fi
  export ALLOW_CPU="${ALLOW_CPU:-0}"
  echo "${PYTHONPATH:-}" > "$WORK_DIR/pythonpath"  # for the packaging, which runs outside this (piped) subshell

  # --- ablation (issue 10)
  if [[ "$PHASES" == *,ablation,* ]]; then
    if ((ok == 0)); then
      record ablation 1 0 "not run: setup failed"
    else
      local t0 end limit rc
      t0=$(date +%s)
      end=$((START + ABLATION_BUDGET_S))
      ((end > DEADLINE - PACK_MARGIN_S)) && end=$((DEADLINE - PACK_MARGIN_S))
      limit=$((end - t0))
      if ((limit < MIN_PHASE_S)); then
        record ablation 1 0 "not run: only $limit s left in its budget"
      else
        local augment=gpu
        [[ "$mode" == cpu ]] && augment=auto
        echo "=== [$(now) s] phase ablation: $ABLATION_SCRIPT, at most $limit s"
        # OUT is emptied for the phase: it writes into RESULTS_DIR / ABLATION_OUT_DIR, this script returns the files
        timeout --kill-after=10 "$limit" env OUT= RESULTS_DIR="$RESULTS_DIR" OUT_DIR="$ABLATION_OUT_DIR" \
          DEADLINE_EPOCH=$((end - 5)) STEPS="${STEPS:-600}" BATCH="${BATCH:-128}" PARALLEL="${PARALLEL:-6}" \
          FINETUNE_EPOCHS="${FINETUNE_EPOCHS:-3}" \
          NUM_WORKERS="${NUM_WORKERS:-2}" AUGMENT_ON="${AUGMENT_ON:-$augment}" \
          TIME_LIMIT="${TIME_LIMIT:-$limit}" bash "$ABLATION_SCRIPT" 2>&1 | tee "$WORK_DIR/ablation.log"
        rc=${PIPESTATUS[0]}
        record ablation "$rc" $(($(date +%s) - t0)) "$(rc_note "$rc"), budget $limit s"
      fi
    fi
  fi

  # --- check (issue 11) with the time that is left
  if [[ "$PHASES" == *,check,* ]]; then
    if ((ok == 0)); then
      record check 1 0 "not run: setup failed"
    else
      local t0 limit rc skip_smoke=0 reason="" cuda_runs
      t0=$(date +%s)
      limit=$((DEADLINE - PACK_MARGIN_S - t0))
      # the ablation's pretraining runs of THIS call, on CUDA, are the smoke test of run_pretrain.py
      cuda_runs=$(find "$ABLATION_OUT_DIR/runs" -name all_results.json -newer "$WORK_DIR/start_marker" 2>/dev/null \
        | wc -l)
      if [[ "$mode" == cuda ]] && ((cuda_runs > 0)); then
        skip_smoke=1
        reason="$cuda_runs run_pretrain.py run(s) of the ablation finished on CUDA in this call"
      fi
      if ((limit < MIN_PHASE_S)); then
        record check 1 0 "not run: only $limit s left"
      else
        echo "=== [$(now) s] phase check: $CHECK_SCRIPT, at most $limit s"
        timeout --kill-after=10 $((limit + 5)) env OUT= GPU_CHECK_DIR="$CHECK_DIR" \
          CHECK_DEADLINE_EPOCH=$((t0 + limit)) SKIP_SMOKE="$skip_smoke" SKIP_SMOKE_REASON="$reason" \
          bash "$CHECK_SCRIPT" 2>&1 | tee "$WORK_DIR/check.log"
        rc=${PIPESTATUS[0]}
        record check "$rc" $(($(date +%s) - t0)) "$(rc_note "$rc"), budget $limit s"
      fi
    fi
  fi
}

# ------------------------------------------------------------------------------------------------------- phases
run_phases 2>&1 | tee "$WORK_DIR/session.log"

# ------------------------------------------------------------------------------------------------------- package
echo "=== [$(now) s] packaging into $RETURN_DIR"
[[ -s "$WORK_DIR/pythonpath" ]] && export PYTHONPATH="$(cat "$WORK_DIR/pythonpath")"
pack_problems=()
# gpu_check.json: from the check phase, else written here from whatever benchmark JSON exists (nulls + "missing"),
# with gpu_check_summary.summarise and the device named by the setup (no torch import: works with a broken torch too)
if [[ ! -f "$CHECK_DIR/gpu_check.json" ]]; then
  device_name=$(grep -h '^device:' "$WORK_DIR/setup.log" 2>/dev/null | tail -n 1 | sed -E 's/^device: //; s/ bf16:.*//')
  timeout 60 "$PY" - "$CHECK_DIR" "${device_name:-unknown (setup not run)}" > "$CHECK_DIR/gpu_check_summary.log" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from gpu_check_summary import summarise
summary = summarise(sys.argv[1], device=sys.argv[2])
summary["written_by"] = "gpu_session.sh packaging (the check phase wrote none)"
(Path(sys.argv[1]) / "gpu_check.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
EOF
  [[ -f "$CHECK_DIR/gpu_check.json" ]] || pack_problems+=("gpu_check.json could not be written (see gpu_check_summary.log)")
fi
[[ -f "$CHECK_DIR/gpu_check.json" ]] && cp "$CHECK_DIR/gpu_check.json" "$RETURN_DIR/"
for name in ablation_gpu.json ablation_gpu.md ablation_gpu.png; do
  if [[ -f "$RESULTS_DIR/$name" ]]; then cp "$RESULTS_DIR/$name" "$RETURN_DIR/"
  else pack_problems+=("$name not written (no finished ablation run, or the report failed)"); fi
done

# logs.tar.gz: logs and result JSONs of both phases (no weights, no caches, no images)
STAGE="$WORK_DIR/logs_staging/logs"
mkdir -p "$STAGE/session" "$STAGE/check" "$STAGE/ablation"
cp "$WORK_DIR"/*.log "$WORK_DIR/phases.tsv" "$STAGE/session/" 2>/dev/null
find "$CHECK_DIR" -maxdepth 1 -type f \( -name '*.log' -o -name '*.json' -o -name '*.txt' \) \
  -exec cp {} "$STAGE/check/" \;
[[ -f "$CHECK_DIR/pretrain_smoke/all_results.json" ]] \
  && cp "$CHECK_DIR/pretrain_smoke/all_results.json" "$STAGE/check/pretrain_smoke_all_results.json"
(cd "$ABLATION_OUT_DIR" && find . \( -path ./logs -o -path ./results -o -path ./runs -o -path ./calibration \) -prune \
  -o -maxdepth 1 -type f \( -name '*.json' -o -name '*.md' \) -print) 2>/dev/null \
  | while read -r file; do cp "$ABLATION_OUT_DIR/$file" "$STAGE/ablation/"; done
for sub in logs results; do
  [[ -d "$ABLATION_OUT_DIR/$sub" ]] && mkdir -p "$STAGE/ablation/$sub" \
    && find "$ABLATION_OUT_DIR/$sub" -maxdepth 1 -type f \( -name '*.log' -o -name '*.json' \) \
      -exec cp {} "$STAGE/ablation/$sub/" \;
done
if [[ -d "$ABLATION_OUT_DIR/runs" ]]; then  # run_pretrain.py logs (runs/<run>.log) and results (runs/<run>/*.json)
  mkdir -p "$STAGE/ablation/runs"
  find "$ABLATION_OUT_DIR/runs" -maxdepth 1 -type f -name '*.log' -exec cp {} "$STAGE/ablation/runs/" \;
  for run in "$ABLATION_OUT_DIR"/runs/*/; do
    [[ -f "$run/all_results.json" ]] && cp "$run/all_results.json" "$STAGE/ablation/runs/$(basename "$run")_all_results.json"
  done
fi

# session_summary.txt
SUMMARY="$RETURN_DIR/session_summary.txt"
{
  echo "artstyle GPU session, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "device: $(grep -h '^device:' "$WORK_DIR/setup.log" 2>/dev/null | tail -n 1 | sed 's/^device: //')"
  echo "deadline ${DEADLINE_S:-540} s, ablation budget $ABLATION_BUDGET_S s; ablation: steps ${STEPS:-600}, batch ${BATCH:-128}," \
    "parallel ${PARALLEL:-6}, workers ${NUM_WORKERS:-2}, seeds ${SEEDS:-0,1,2}, settings ${SETTINGS:-moco_v3,full}"
  echo
  echo "== phases (name, exit, seconds, note)"
  for phase in setup ablation check; do
    if grep -q "^$phase	" "$STATE" 2>/dev/null; then
      grep "^$phase	" "$STATE" | awk -F'\t' '{printf "phase %-9s exit %-4s %5s s  %s\n", $1, $2, $3, $4}'
    elif [[ "$PHASES" == *,$phase,* ]]; then
      echo "phase $phase    NO RECORD (the phase runner itself broke: see session.log)"
    else
      echo "phase $phase    not requested (PHASES=${PHASES:1:-1})"
    fi
  done
  echo
  echo "== ablation runs"
  "$PY" - "$ABLATION_OUT_DIR" "${SEEDS:-0,1,2}" "${SETTINGS:-moco_v3,full}" <<'EOF' 2>&1 || echo "(could not read the ablation results)"
import json, sys
from pathlib import Path
out, seeds, settings = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3].split(",")
done = {}
for seed in seeds:
    for setting in settings:
        name = f"{setting}__seed{seed}"
        result, pretrain = out / "results" / f"{name}.json", out / "runs" / name / "all_results.json"
        state = "done" if result.exists() else "NO RESULT (failed, killed or not started: see its log)"
        extra = ""
        if pretrain.exists():
            p = json.loads(pretrain.read_text())
            extra = (f"; pretrain {p.get('train_steps')} steps, augment_on {p.get('augment_on')}, "
                     f"{p.get('train_steps_per_second')} steps/s, {p.get('train_runtime_s')} s")
        if result.exists():
            r = json.loads(result.read_text())
            acc = {k: r.get(k) if r.get(k) is None else round(r[k], 4) for k in ("linear_probe_acc", "knn_acc",
                                                                                   "finetune_acc")}
            extra += (f"; probe {acc['linear_probe_acc']}, kNN {acc['knn_acc']}, fine-tune {acc['finetune_acc']}, "
                      f"eval {r.get('eval_runtime_s')} s, total {r.get('total_runtime_s')} s")
        done[(setting, seed)] = result.exists()
        print(f"{setting:8s} seed {seed}: {state}{extra}")
pairs = [s for s in seeds if done.get(("moco_v3", s)) and done.get(("full", s))]
print(f"complete (moco_v3, full) seed pairs: {len(pairs)} ({', '.join(pairs) or 'none'})")
EOF
  if [[ -f "$RESULTS_DIR/ablation_gpu.md" ]]; then echo; cat "$RESULTS_DIR/ablation_gpu.md"; fi
  echo
  echo "== check steps (gpu_check.sh summary: started, exit codes, skipped)"
  if [[ -f "$CHECK_DIR/summary.txt" ]]; then
    grep -E '^(=== |bench_[a-z]+: |CUDA|setup)' "$CHECK_DIR/summary.txt" | grep -v '^=== done' \
      | sed -E 's/(\(limit [0-9]+ s\)):.*/\1/; s/ \| last line: .*//'
  else echo "(no summary.txt: the check phase did not run)"; fi
  if [[ -f "$CHECK_DIR/gpu_check.json" ]]; then
    "$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); print('gpu_check.json:', {k: s.get(k) for k in \
('device','tiny_mode','tiny_steps_per_s','tiny_data_wait_fraction','tiny_steps_per_s_eager',\
'floor_ratio','full_ratio','floor_ratio_eager','full_ratio_eager',\
'compile_speedup','floor_peak_fraction','pipeline_images_per_s','predict_images_per_s')}); print('missing:', s.get('missing'))" \
      "$CHECK_DIR/gpu_check.json" 2>&1
  fi
  echo
  echo "== last lines of failing logs"
  while IFS=$'\t' read -r phase rc _ _; do
    [[ "$rc" == 0 ]] && continue
    for log in "$WORK_DIR/$phase.log" "$WORK_DIR/setup.log"; do
      [[ "$phase" != setup && "$log" == "$WORK_DIR/setup.log" ]] && continue
      # the last lines that are not the pretty-printed JSON of a summary
      [[ -f "$log" ]] && { echo "--- $(basename "$log") (phase $phase, exit $rc)"; grep -vE '^( |\{|\}|\])' "$log" | tail -n 15; }
    done
  done < <(cat "$STATE" 2>/dev/null)
  IFS=, read -r -a seed_list <<< "${SEEDS:-0,1,2}"
  IFS=, read -r -a setting_list <<< "${SETTINGS:-moco_v3,full}"
  for seed in "${seed_list[@]}"; do
    for setting in "${setting_list[@]}"; do
      name="${setting}__seed${seed}"
      log="$ABLATION_OUT_DIR/logs/$name.log"
      if [[ ! -f "$ABLATION_OUT_DIR/results/$name.json" && -f "$log" ]]; then
        # progress bars end their updates with carriage returns: one line each, the last few kept
        echo "--- ablation run $name (no result)"; tr '\r' '\n' < "$log" | grep -v '^\s*$' | tail -n 10
        if [[ -f "$ABLATION_OUT_DIR/runs/$name.log" ]]; then
          echo "--- its run_pretrain.py log"; tr '\r' '\n' < "$ABLATION_OUT_DIR/runs/$name.log" | grep -v '^\s*$' | tail -n 6
        fi
      fi
    done
  done
  if [[ -f "$CHECK_DIR/summary.txt" ]]; then
    grep -oE '^=== \[[0-9]+ s\] [a-z_]+ exit=[1-9][0-9]*' "$CHECK_DIR/summary.txt" | awk '{print $4}' | while read -r step; do
      echo "--- check step $step"; tail -n 15 "$CHECK_DIR/$step.log" 2>/dev/null
    done
  fi
  if [[ ! -f "$CHECK_DIR/gpu_check.json" && -f "$CHECK_DIR/gpu_check_summary.log" ]]; then
    echo "--- gpu_check_summary.log"; tail -n 10 "$CHECK_DIR/gpu_check_summary.log"
  fi
  echo
  echo "== packaging"
  for problem in "${pack_problems[@]}"; do echo "problem: $problem"; done
} > "$SUMMARY" 2>&1

cp "$SUMMARY" "$STAGE/session/"
if ! tar -czf "$RETURN_DIR/logs.tar.gz" -C "$WORK_DIR/logs_staging" logs; then
  pack_problems+=("logs.tar.gz could not be written")
  echo "problem: logs.tar.gz could not be written" >> "$SUMMARY"
fi

status=0
while IFS=$'\t' read -r phase rc _ _; do [[ "$rc" == 0 ]] || status=1; done < <(cat "$STATE" 2>/dev/null)
for phase in setup ablation check; do
  [[ "$PHASES" == *,$phase,* ]] && ! grep -q "^$phase	" "$STATE" 2>/dev/null && status=1
done
((${#pack_problems[@]})) && status=1
count=$(find "$RETURN_DIR" -mindepth 1 | wc -l)
if ((count > 8)); then
  echo "problem: $count entries in $RETURN_DIR (at most 8 come back)" | tee -a "$SUMMARY"
  status=1
fi
echo "total $(now) s, status $status" >> "$SUMMARY"
echo "=== [$(now) s] gpu_session done, status $status; $RETURN_DIR:"
ls -la "$RETURN_DIR"
cat "$SUMMARY"
exit "$status"
