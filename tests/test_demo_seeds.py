"""benchmarks/demo_seeds.sh: its table (mean ± std over seeds of validation and test accuracy) from results.jsonl."""

import json
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_seeds.sh"


def test_table_is_mean_and_std_over_seeds_per_setting_and_evaluation(tmp_path):
    rows = [
        {"setting": "full", "seed": 0, "mode": "finetune", "eval_accuracy": 0.90, "test_accuracy": 0.80},
        {"setting": "full", "seed": 1, "mode": "finetune", "eval_accuracy": 0.94, "test_accuracy": 0.84},
        {"setting": "scratch", "seed": 0, "mode": "finetune", "eval_accuracy": 0.5, "test_accuracy": None},
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    # no seed to run: only the table is built from the results already there
    result = subprocess.run(["bash", str(SCRIPT)], env={"OUT_DIR": str(tmp_path), "SEEDS": "", "PATH": "/usr/bin:/bin",
                                                         "PYTHON": "python3"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "| setting | evaluation | seeds | validation acc (%) | test acc (%) |"
    # mean 92.0, sample std of (90, 94) = 2.83; test 82.0 ± 2.83
    assert "| full | finetune | 2 | 92.0 ± 2.8 | 82.0 ± 2.8 |" in lines
    assert "| scratch | finetune | 1 | 50.0 | - |" in lines


def test_unknown_setting_is_refused(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT)], env={"OUT_DIR": str(tmp_path), "SEEDS": "0", "SETTINGS": "bogus",
                                                         "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown setting bogus" in result.stderr
