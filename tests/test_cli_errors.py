"""Every command-line tool answers bad input with one line on stderr naming the flag/field, exit code 2,
and no traceback: artstyle-pretrain / run_pretrain.py, artstyle-finetune, artstyle-predict, artstyle-similar."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import run_finetune
import run_pretrain
from artstyle.cli import predict_main, similar_main

ROOT = Path(__file__).resolve().parents[1]


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)
    return path


PRETRAIN_CASES = [
    (["--no_such_flag"], "unrecognized arguments: --no_such_flag"),
    (["--learning_rate", "-1"], "--learning_rate must be > 0, got -1.0"),
    (["--learning_rate", "fast"], "argument --learning_rate/--learning-rate: invalid float value: 'fast'"),
    (["--config_preset", "huge"], "unknown preset 'huge'"),
    (["--config_overrides", "no_such_field=1"], "--config_overrides: unknown config field(s) ['no_such_field']"),
    (["--config_overrides", "queue_size=-3"], "`queue_size` must be a non-negative integer"),
    (["--config_overrides", "queue_size"], "--config_overrides: expected key=value"),
    (["--dataset_name", "imagefolder"], "--dataset_name imagefolder needs --data_dir"),
    (["--dataset_name", "imagefolder", "--data_dir", "does/not/exist"], "--data_dir 'does/not/exist': no such folder"),
    (["--model_name_or_path", "does/not/exist"], "'does/not/exist' does not exist"),
    (["--augmentation", "fancy"], "--augmentation must be one of moco_v3, style_preserving, got 'fancy'"),
    (["--eval_every", "0"], "--eval_every must be > 0, got 0"),
]


@pytest.mark.parametrize("argv, message", PRETRAIN_CASES, ids=[c[1][:40] for c in PRETRAIN_CASES])
def test_pretrain_cli(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_pretrain.cli(argv)
    assert exit_info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("artstyle-pretrain: error:") or line.startswith("run_pretrain.py: error:")
    assert message in line


FINETUNE_CASES = [
    (["--no_such_flag"], "unrecognized arguments: --no_such_flag"),
    (["--model_name_or_path", "does/not/exist"], "--model_name_or_path 'does/not/exist': no saved model there"),
    (["--model_name_or_path", "none", "--learning_rate", "-0.1"], "--learning_rate must be > 0, got -0.1"),
    (["--model_name_or_path", "none", "--config_preset", "huge"], "unknown preset 'huge'"),
    (["--model_name_or_path", "none", "--config_overrides", "depth=2"], "unknown config field(s) ['depth']"),
    (["--model_name_or_path", "none", "--layer_decay", "2"], "--layer_decay must be in (0, 1], got 2.0"),
    (["--model_name_or_path", "none", "--dataset_name", "pandora18k"], "--dataset_name pandora18k needs --data_dir"),
]


@pytest.mark.parametrize("argv, message", FINETUNE_CASES, ids=[c[1][:40] for c in FINETUNE_CASES])
def test_finetune_cli(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_finetune.cli(argv)
    assert exit_info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert message in line


PREDICT_CASES = [
    (["--no_such_flag"], "unrecognized arguments: --no_such_flag"),
    (["--top_k", "0"], "--top_k must be >= 1, got 0"),
    (["--top_k", "many"], "argument --top_k: invalid int value: 'many'"),
    (["--batch_size", "0"], "--batch_size must be >= 1, got 0"),
    (["--dataloader_num_workers", "-1"], "argument --dataloader_num_workers: must be 'auto' or an integer >= 0, "
                                         "got '-1'"),
    (["--dataloader_num_workers", "many"], "argument --dataloader_num_workers: must be 'auto' or an integer >= 0"),
    (["--model", "does/not/exist"], "--model does/not/exist: no config.json there"),
]


@pytest.mark.parametrize("argv, message", PREDICT_CASES, ids=[c[1][:40] for c in PREDICT_CASES])
def test_predict_cli(argv, message, image, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # passes the folder check; bad values are caught before loading
    argv = [str(image), "--model", str(model), "--device", "cpu", *argv]
    try:
        code = predict_main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("artstyle-predict: error:") and message in line


SIMILAR_CASES = [
    (["--no_such_flag"], "unrecognized arguments: --no_such_flag"),
    (["--k", "0"], "--k must be >= 1, got 0"),
    (["--k", "x"], "argument --k: invalid int value: 'x'"),
    (["--dataloader_num_workers", "2.5"], "argument --dataloader_num_workers: must be 'auto' or an integer >= 0"),
    (["--index", "does/not/exist"], "--index does/not/exist: not a folder of images"),
    (["--model", "does/not/exist"], "--model does/not/exist: no config.json there"),
]


@pytest.mark.parametrize("argv, message", SIMILAR_CASES, ids=[c[1][:40] for c in SIMILAR_CASES])
def test_similar_cli(argv, message, image, capsys):
    argv = ["--index", str(image.parent), "--query", str(image), "--device", "cpu", *argv]
    try:
        code = similar_main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("artstyle-similar: error:") and message in line


@pytest.mark.parametrize("script, argv, message", [
    ("run_pretrain.py", ["--learning_rate", "-1"], "run_pretrain.py: error: --learning_rate must be > 0"),
    ("run_pretrain.py", ["--bogus"], "run_pretrain.py: error: unrecognized arguments: --bogus"),
    ("run_finetune.py", ["--model_name_or_path", "./missing"], "artstyle-finetune: error: --model_name_or_path"),
])
def test_scripts_in_a_subprocess(script, argv, message):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, str(ROOT / script), *argv], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2
    assert message in _one_error_line(run.stderr)
