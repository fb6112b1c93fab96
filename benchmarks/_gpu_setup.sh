# Sourced (not run) by gpu_session.sh, gpu_check.sh and gpu_ablation.sh: the Python environment of a lent GPU machine.
#
#   source benchmarks/_gpu_setup.sh
#   PYTHON=$(artstyle_pick_python)       # $PYTHON, else python if it imports torch, else python3
#   artstyle_gpu_setup PYTHON LOG_FILE    # from the repository root; returns 1 when torch or artstyle cannot be imported
#
# 1. wheels carried in $WHEELS_DIR (default .whl: datasets, evaluate, dill, multiprocess for
#    Python 3.12, see benchmarks/README.md) are installed ONCE into $ARTSTYLE_SITE (default /tmp/artstyle_site) when
#    `import datasets, evaluate` fails; a folder installed by an earlier call on a warm machine is reused;
# 2. artstyle: from this checkout, first on PYTHONPATH (the benchmarks measure the working tree);
# 3. the versions of every dependency are printed (all missing ones named, not only the first).
# Exports PYTHONPATH, the offline switches of the Hugging Face libraries and ARTSTYLE_GPU_SETUP_DONE=1, so that the
# scripts a caller starts afterwards (gpu_session.sh -> gpu_ablation.sh, gpu_check.sh) skip all of this.

artstyle_pick_python() {  # the interpreter: $PYTHON if set, else `python` when it imports torch, else `python3`
  if [[ -n "${PYTHON:-}" ]]; then
    echo "$PYTHON"
  elif command -v python >/dev/null 2>&1 && python -c "import torch" >/dev/null 2>&1; then
    echo python
  elif command -v python3 >/dev/null 2>&1; then
    echo python3  # the device image's python3 is the one that holds PyTorch
  else
    echo python
  fi
}

artstyle_gpu_setup() {
  local py="$1" log="$2"
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  if [[ -n "${ARTSTYLE_GPU_SETUP_DONE:-}" ]]; then
    echo "setup: done already by the calling script (PYTHONPATH=${PYTHONPATH:-})" | tee -a "$log"
    return 0
  fi
  local wheels="${WHEELS_DIR:-.whl}" site="${ARTSTYLE_SITE:-/tmp/artstyle_site}" report missing
  # artstyle from THIS checkout, always first: the benchmarks measure the working tree. An import test run from the
  # repository root proves nothing (`python -c` puts the working directory on sys.path, `python benchmarks/x.py` puts
  # benchmarks/ there instead): on a machine without artstyle installed that test passed and every benchmark script
  # then failed with "No module named 'artstyle'" (the first H200 call of 2026-11-28).
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  [[ -d "$site" ]] && export PYTHONPATH="$PYTHONPATH:$site"  # wheels installed by an earlier call on a warm machine
  # ONE Python process reports every version (a Python start cost 15-20 s on a fresh H200 machine: imports from a
  # cold disk); it runs from / so that only PYTHONPATH and the installed packages count
  report=$(artstyle_versions "$py")
  missing=$(sed -n 's/^missing: //p' <<< "$report")
  if grep -qwE 'datasets|evaluate' <<< "$missing"; then
    if ls "$wheels"/*.whl >/dev/null 2>&1; then
      echo "setup: installing carried wheels from $wheels into $site (missing: $missing)" | tee -a "$log"
      "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$wheels"/*.whl 2>&1 | tail -n 3 | tee -a "$log" || true
      [[ ":$PYTHONPATH:" == *":$site:"* ]] || export PYTHONPATH="$PYTHONPATH:$site"
      report=$(artstyle_versions "$py")
      missing=$(sed -n 's/^missing: //p' <<< "$report")
    else
      echo "setup: datasets/evaluate missing and no wheels in $wheels (see benchmarks/README.md)" | tee -a "$log"
    fi
  fi
  echo "$report" | tee -a "$log"
  if grep -qwE 'torch|artstyle' <<< "$missing"; then
    echo "setup: torch or artstyle cannot be imported (PYTHONPATH=$PYTHONPATH): nothing can run here" | tee -a "$log"
    return 1
  fi
  export ARTSTYLE_GPU_SETUP_DONE=1
}

artstyle_versions() {  # artstyle_versions PYTHON: one line per package, "device: ...", last "missing: <names>"
  (cd / && "$1" - <<'EOF' 2>&1)
import importlib
missing = []
for name in ("torch", "torchvision", "timm", "transformers", "accelerate", "datasets", "evaluate",
             "huggingface_hub", "sklearn", "matplotlib", "artstyle"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as error:  # report every missing dependency, not only the first
        print(f"{name} MISSING: {error!r}")
        missing.append(name)
try:
    import torch
    if torch.cuda.is_available():
        print("device:", torch.cuda.get_device_name(), "bf16:", torch.cuda.is_bf16_supported())
    else:
        print("device: cpu (CUDA not available)")
except Exception as error:
    print(f"device: unknown ({error!r})")
print("missing:", " ".join(missing))
EOF
}
