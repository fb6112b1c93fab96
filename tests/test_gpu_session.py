"""benchmarks/gpu_session.sh (the one script of a lent GPU session) and the time budgets of the scripts it runs.

The phases' real work needs a GPU; here they are stubbed (ABLATION_SCRIPT / CHECK_SCRIPT) so that the orchestration
is tested for real: the phase budgets and their timeouts, the failure bookkeeping, gpu_check.json written from
partial results, session_summary.txt, logs.tar.gz and the at-most-8-files rule of the device tool's return folder.
"""

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["gpu_session.sh", "_gpu_setup.sh", "gpu_check.sh", "gpu_ablation.sh"]
RETURNED = {"gpu_check.json", "ablation_gpu.json", "ablation_gpu.md", "ablation_gpu.png", "session_summary.txt",
            "logs.tar.gz"}

# a stub of gpu_ablation.sh: one finished run (moco_v3 seed 0, with weights that must not travel back) and one
# crashed run (full seed 0); the table files; it echoes the environment gpu_session.sh gave it, then fails
ABLATION_STUB = """#!/usr/bin/env bash
mkdir -p "$OUT_DIR/logs" "$OUT_DIR/results" "$OUT_DIR/runs/moco_v3__seed0"
echo "moco run ok" > "$OUT_DIR/logs/moco_v3__seed0.log"
echo "Traceback: FULL-CRASH-MARKER" > "$OUT_DIR/logs/full__seed0.log"
echo '{"setting": "moco_v3", "seed": 0, "linear_probe_acc": 0.4}' > "$OUT_DIR/results/moco_v3__seed0.json"
echo '{"train_steps": 600, "augment_on": "gpu", "train_steps_per_second": 41.5}' \\
  > "$OUT_DIR/runs/moco_v3__seed0/all_results.json"
head -c 50000 /dev/zero > "$OUT_DIR/runs/moco_v3__seed0/model.safetensors"
echo '[{"setting": "moco_v3", "seed": 0}]' > "$RESULTS_DIR/ablation_gpu.json"
echo '| setting |' > "$RESULTS_DIR/ablation_gpu.md"
printf 'PNG' > "$RESULTS_DIR/ablation_gpu.png"
echo "stub-ablation augment_on=$AUGMENT_ON steps=$STEPS batch=$BATCH parallel=$PARALLEL OUT=[$OUT] \\
  deadline=$DEADLINE_EPOCH"
exit 1
"""

# a stub of gpu_check.sh: the data benchmark's JSON, one failing step, one skipped step; no gpu_check.json (the
# session must write it from what exists)
CHECK_STUB = """#!/usr/bin/env bash
echo '{"results": {"gpu": {"steps_per_s": 42.0, "data_wait_fraction": 0.05}}}' > "$GPU_CHECK_DIR/bench_data.json"
echo "bench_data ok" > "$GPU_CHECK_DIR/bench_data.log"
echo "RuntimeError: INFER-MARKER" > "$GPU_CHECK_DIR/bench_inference.log"
{
  echo "=== skipped pretrain_smoke: SKIP_SMOKE=$SKIP_SMOKE ($SKIP_SMOKE_REASON)"
  echo "=== [3 s] bench_data exit=0 | last line: ok"
  echo "=== skipped pstep_compile: only 5 s left"
  echo "=== [9 s] bench_inference exit=1 | last line: RuntimeError"
} > "$GPU_CHECK_DIR/summary.txt"
echo "stub-check OUT=[$OUT] deadline=$CHECK_DEADLINE_EPOCH"
exit 1
"""


def write_stub(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def run_session(tmp_path: Path, **env) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHON": sys.executable, "WORK_DIR": str(tmp_path / "work"),
               "ABLATION_OUT_DIR": str(tmp_path / "ablation"), "OUT": str(tmp_path / "out"), "SEEDS": "0",
               "PHASES": "ablation,check", **env}
    return subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_session.sh")], env=environ, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
    completed = subprocess.run(["bash", "-n", str(REPO / "benchmarks" / script)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr


def test_session_packages_failing_phases_into_at_most_eight_files(tmp_path):
    completed = run_session(tmp_path, ABLATION_SCRIPT=write_stub(tmp_path / "ablation.sh", ABLATION_STUB),
                            CHECK_SCRIPT=write_stub(tmp_path / "check.sh", CHECK_STUB))
    output = completed.stdout + completed.stderr
    assert completed.returncode == 1, output[-3000:]  # both phases failed: the session says so, after packaging
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert names == RETURNED and len(names) <= 8
    assert all(p.is_file() for p in out.iterdir())  # no folders: nothing deep that the device tool would drop

    # the phases got the session's sizes, GPU augmentation, and NOT $OUT (they must not write into it)
    assert "stub-ablation augment_on=gpu steps=600 batch=128 parallel=6 OUT=[]" in output
    assert "stub-check OUT=[]" in output
    # the ablation's run pretrained in this call: the check phase was told to skip its own smoke test
    summary = (out / "session_summary.txt").read_text()
    assert "SKIP_SMOKE=1 (1 run_pretrain.py run(s) of the ablation finished on CUDA in this call)" in summary

    # every phase is named with its exit code; failing logs are quoted; the run table and the pairs are right
    lines = summary.splitlines()
    assert any(line.startswith("phase ablation") and "exit 1" in line and "failed" in line for line in lines)
    assert any(line.startswith("phase check") and "exit 1" in line for line in lines)
    assert any(line.startswith("phase setup") and "not requested" in line for line in lines)
    assert "FULL-CRASH-MARKER" in summary and "INFER-MARKER" in summary
    assert "moco_v3  seed 0: done; pretrain 600 steps, augment_on gpu, 41.5 steps/s" in summary
    assert "full     seed 0: NO RESULT" in summary
    assert "complete (moco_v3, full) seed pairs: 0 (none)" in summary
    assert "=== skipped pstep_compile: only 5 s left" in summary
    assert summary.rstrip().endswith("status 1")

    # gpu_check.json was written from the partial results: the measured key set, nulls elsewhere, listed as missing
    check = json.loads((out / "gpu_check.json").read_text())
    assert check["tiny_steps_per_s"] == 42.0 and check["tiny_data_wait_fraction"] == 0.05
    assert check["floor_ratio"] is None and check["compile_speedup"] is None
    assert {"floor_ratio", "compile_speedup", "pipeline_images_per_s"} <= set(check["missing"])
    assert "tiny_steps_per_s" not in check["missing"]
    assert (out / "ablation_gpu.md").read_text() == "| setting |\n"

    # one tarball of all logs and result JSONs, without weights
    with tarfile.open(out / "logs.tar.gz") as tar:
        members = set(tar.getnames())
    assert {"logs/session/session.log", "logs/session/ablation.log", "logs/session/check.log",
            "logs/session/session_summary.txt", "logs/ablation/logs/moco_v3__seed0.log",
            "logs/ablation/logs/full__seed0.log", "logs/ablation/results/moco_v3__seed0.json",
            "logs/ablation/runs/moco_v3__seed0_all_results.json", "logs/check/bench_inference.log",
            "logs/check/bench_data.json", "logs/check/summary.txt", "logs/check/gpu_check.json"} <= members
    assert not [name for name in members if name.endswith((".safetensors", ".bin", ".pt", ".npy"))]


def test_session_kills_a_phase_at_its_budget_and_goes_on(tmp_path):
    hanging = write_stub(tmp_path / "hang.sh", "#!/usr/bin/env bash\necho hanging-ablation\nsleep 120\n")
    check = write_stub(tmp_path / "check.sh", CHECK_STUB.replace("exit 1", "exit 0"))
    start = time.monotonic()
    completed = run_session(tmp_path, ABLATION_SCRIPT=hanging, CHECK_SCRIPT=check, ABLATION_BUDGET_S="3",
                            MIN_PHASE_S="1")
    assert time.monotonic() - start < 100  # the sleep (120 s) was cut: the phase's timeout holds
    summary = (tmp_path / "out" / "session_summary.txt").read_text()
    assert any(line.startswith("phase ablation") and "exit 124" in line and "killed at its time limit" in line
               for line in summary.splitlines()), summary
    assert any(line.startswith("phase check") and "exit 0" in line for line in summary.splitlines()), summary
    assert "hanging-ablation" in summary  # the killed phase's last log lines
    # no ablation table this time: named as a packaging problem, the files that exist still come back
    assert "problem: ablation_gpu.json not written" in summary
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert names == {"gpu_check.json", "session_summary.txt", "logs.tar.gz"}
    assert completed.returncode == 1


def test_session_without_time_left_runs_no_phase_but_still_reports(tmp_path):
    never = write_stub(tmp_path / "never.sh", "#!/usr/bin/env bash\necho SHOULD-NOT-RUN\n")
    completed = run_session(tmp_path, ABLATION_SCRIPT=never, CHECK_SCRIPT=never, DEADLINE_S="20",
                            PACK_MARGIN_S="15")
    summary = (tmp_path / "out" / "session_summary.txt").read_text()
    assert "SHOULD-NOT-RUN" not in completed.stdout
    assert "phase ablation" in summary and "not run: only" in summary
    assert completed.returncode == 1
    gpu_check = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert gpu_check["tiny_steps_per_s"] is None and "tiny_steps_per_s" in gpu_check["missing"]
    assert gpu_check["device"] == "unknown (setup not run)"
    assert gpu_check["written_by"].startswith("gpu_session.sh")


def test_gpu_check_skips_every_step_it_has_no_time_for(tmp_path):
    environ = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DIR": str(tmp_path / "check"),
               "ARTSTYLE_GPU_SETUP_DONE": "1", "CHECK_BUDGET_S": "0", "ALLOW_CPU": "1"}
    completed = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], env=environ, cwd=REPO,
                               capture_output=True, text=True, timeout=300)
    summary = (tmp_path / "check" / "summary.txt").read_text()
    for step in ("pretrain_smoke", "bench_data", "pstep_eager", "pstep_compile", "bench_inference"):
        assert f"=== skipped {step}: " in summary, summary
    assert "needs >= 45 s" in summary  # bench_data's lite size
    written = json.loads((tmp_path / "check" / "gpu_check.json").read_text())
    assert written["floor_ratio"] is None and len(written["missing"]) == 8  # every key but the device
    assert completed.returncode == 1
    # without ALLOW_CPU a CPU machine stops at once, saying why
    if "CUDA is not available" in summary:
        environ.pop("ALLOW_CPU")
        environ["GPU_CHECK_DIR"] = str(tmp_path / "check2")
        stopped = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], env=environ, cwd=REPO,
                                 capture_output=True, text=True, timeout=300)
        assert stopped.returncode == 1 and "ALLOW_CPU=1 for a CPU dry run" in stopped.stdout


def _setup(tmp_path: Path, python: str) -> subprocess.CompletedProcess:
    """Source _gpu_setup.sh from the repository root, run the setup, then import artstyle from ANOTHER folder (as
    `python benchmarks/x.py` does: the repository root is not on sys.path then)."""
    script = (f'source benchmarks/_gpu_setup.sh; artstyle_gpu_setup "{python}" "{tmp_path}/setup.log"; rc=$?; '
              'echo "PYTHONPATH=$PYTHONPATH"; cd /; "$0" -c "import artstyle; print(\'FROM\', artstyle.__file__)"; '
              'exit $rc')
    environ = {key: value for key, value in os.environ.items() if key not in ("ARTSTYLE_GPU_SETUP_DONE", "PYTHONPATH")}
    environ.update(WHEELS_DIR=str(tmp_path / "no_wheels"), ARTSTYLE_SITE=str(tmp_path / "no_site"))
    return subprocess.run(["bash", "-c", script, python], env=environ, cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_setup_puts_this_checkout_first_for_scripts_run_from_elsewhere(tmp_path):
    result = _setup(tmp_path, sys.executable)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PYTHONPATH={REPO}" in result.stdout  # first entry: the working tree, installed or not
    assert f"FROM {REPO / 'artstyle' / '__init__.py'}" in result.stdout
    log = (tmp_path / "setup.log").read_text()
    assert "artstyle 0." in log and "\nmissing: \n" in log + "\n" and "device: " in log


def test_setup_fails_clearly_when_artstyle_cannot_be_imported(tmp_path):
    # an interpreter on which `import artstyle` fails whatever PYTHONPATH says (a broken package shadows it)
    fake = tmp_path / "fake"
    (fake / "artstyle").mkdir(parents=True)
    (fake / "artstyle" / "__init__.py").write_text("raise ImportError('BROKEN-ARTSTYLE')\n")
    wrapper = write_stub(tmp_path / "python", f'#!/usr/bin/env bash\nPYTHONPATH="{fake}:$PYTHONPATH" '
                                              f'exec "{sys.executable}" "$@"\n')
    result = _setup(tmp_path, wrapper)
    assert result.returncode == 1
    log = (tmp_path / "setup.log").read_text()
    assert "artstyle MISSING: ImportError('BROKEN-ARTSTYLE')" in log
    assert "missing: artstyle" in log and "torch or artstyle cannot be imported" in log
