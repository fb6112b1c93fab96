"""benchmarks/ablation.py: the fine-tune evaluation, paired-difference statistics, flat records, the GPU script."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def load_ablation():
    spec = importlib.util.spec_from_file_location("bench_ablation_method", REPO / "benchmarks" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def class_folders(tmp_path):
    """3 classes x 8 images: flat colours with noise (class-per-folder)."""
    root = tmp_path / "styles"
    for label, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        (root / f"class_{label}").mkdir(parents=True)
        for index in range(8):
            rng = np.random.default_rng(label * 100 + index)
            array = np.clip(np.array(colour) + rng.integers(-20, 21, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(array).save(root / f"class_{label}" / f"{index}.png")
    return root


TINY = json.dumps({"backbone_depth": 1, "image_size": 16, "patch_size": 8, "queue_size": 16, "projection_dim": 16,
                   "projection_hidden_dim": 32, "layer_head_dim": 16, "distill_hidden_dim": 16, "gram_dim": 4,
                   "style_dim": 8})


# ---------------------------------------------------------------------------------------------- statistics
def _record(setting, seed, probe, knn=0.5, finetune=None):
    return {"setting": setting, "seed": seed, "linear_probe_acc": probe, "knn_acc": knn, "finetune_acc": finetune,
            "train_steps": 10, "batch_size": 4, "config": {"image_size": 16}, "config_preset": "tiny",
            "num_train": 8, "num_test": 4, "num_classes": 2, "split": {"test_size": 0.2, "seed": 0, "eval": "test"}}


def test_paired_differences_against_hand_computation():
    ablation = load_ablation()
    results = [_record("full", 0, 0.50), _record("full", 1, 0.60), _record("full", 2, 0.55),
               _record("moco_v3", 0, 0.45), _record("moco_v3", 1, 0.62), _record("moco_v3", 2, 0.50),
               _record("full", 3, 0.99)]  # seed 3 has no baseline: not paired
    paired = ablation.paired_differences(results, "linear_probe_acc")
    # differences 0.05, -0.02, 0.05; mean 0.08/3; deviations 0.07/3, -0.14/3, 0.07/3
    mean = 0.08 / 3
    variance = ((0.07 / 3) ** 2 * 2 + (0.14 / 3) ** 2) / 2
    assert paired["seeds"] == [0, 1, 2]
    assert paired["differences"] == pytest.approx([0.05, -0.02, 0.05])
    assert paired["mean"] == pytest.approx(mean)
    assert paired["stderr"] == pytest.approx(math.sqrt(variance) / math.sqrt(3))
    assert paired["stderr"] == pytest.approx(0.07 / 3)  # = sqrt(0.0049/3)/sqrt(3)
    assert paired["wins"] == 2 and paired["ties"] == 0
    single = ablation.paired_differences(results[:1] + results[3:4], "linear_probe_acc")
    assert single["differences"] == pytest.approx([0.05]) and single["stderr"] is None
    assert ablation.paired_differences(results, "finetune_acc") is None  # missing everywhere
    assert ablation.paired_differences([_record("full", 0, 0.5)], "linear_probe_acc") is None


def test_report_has_paired_table_flat_records_and_budget(tmp_path):
    ablation = load_ablation()
    (tmp_path / "results").mkdir()
    records = [_record("moco_v3", 0, 0.40, 0.30, 0.70), _record("moco_v3", 1, 0.42, 0.35, 0.72),
               _record("full", 0, 0.45, 0.30, 0.69), _record("full", 1, 0.46, 0.36, 0.75)]
    for r in records:
        (tmp_path / "results" / f"{r['setting']}__seed{r['seed']}.json").write_text(json.dumps(r))
    ablation.write_report(tmp_path)
    table = (tmp_path / "ablation.md").read_text()
    assert "Seeds: [0, 1] (2)" in table and "(10, 4)" in table and "Evaluated on: test" in table
    assert "| fine-tune | -1.0 | +3.0 | +1.00 | 2.00 | 1/2 |" in table
    assert "| linear probe | +5.0 | +4.0 | +4.50 | 0.50 | 2/2 |" in table
    assert "| full | 2 | 10 |" in table and "| 72.0 ± 4.2 |" in table
    flat = json.loads((tmp_path / "ablation_records.json").read_text())
    assert flat[0] == {"setting": "full", "seed": 0, "steps": 10, "batch": 4, "image_size": 16,
                       "linear_probe_acc": 0.45, "knn_acc": 0.30, "finetune_acc": 0.69}
    assert (tmp_path / "ablation.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------------------- fine-tune
def test_finetune_evaluation_random_init(class_folders, tmp_path):
    ablation = load_ablation()
    output = tmp_path / "out"
    argv = ["--data_dir", str(class_folders), "--output_dir", str(output), "--settings", "random_init",
            "--seeds", "0", "--num_workers", "0", "--probe_epochs", "20", "--config_overrides", TINY,
            "--finetune_epochs", "3", "--finetune_batch_size", "8", "--finetune_lr", "1e-3",
            "--eval_split", "validation"]
    assert ablation.main(argv) == 0
    record = json.loads((output / "results" / "random_init__seed0.json").read_text())
    # validation: 20 % of the 19-20 train images per... stratified over 3 classes; fine-tune 3 epochs of batch 8
    assert record["num_train"] + record["num_test"] == 18  # the 6 test images are never read
    assert record["finetune_steps"] == 3 * math.ceil(record["num_train"] / 8)
    assert 0.0 <= record["finetune_acc"] <= 1.0
    assert record["finetune_recipe"]["epochs"] == 3 and record["steps"] == 0 and record["image_size"] == 16
    assert "Fine-tune (same recipe for every setting): {'epochs': 3" in (output / "ablation.md").read_text()
    # resume: the saved record's encoder is rebuilt exactly (same seeded init: same probe and kNN as the record) ...
    args = ablation.parse_args([*argv, "--finetune_epochs", "0"])
    rebuilt = ablation.evaluate_encoder(ablation.saved_encoder(record, args), args, 0)
    assert (rebuilt["linear_probe_acc"], rebuilt["knn_acc"]) == (record["linear_probe_acc"], record["knn_acc"])
    # ... so a later call with --readouts adds the read-out records without running the setting again
    assert ablation.main([*argv, "--readouts", "cls"]) == 0
    readout = json.loads((output / "results" / "random_init@cls__seed0.json").read_text())
    assert readout["readout_of"] == "random_init" and readout["config"]["pooler"] == "cls"
    assert json.loads((output / "results" / "random_init__seed0.json").read_text()) == record


def test_finetune_leaves_the_encoder_unchanged(class_folders):
    from artstyle import ArtStyleConfig, ArtStyleModel

    ablation = load_ablation()
    args = ablation.parse_args(["--data_dir", str(class_folders), "--output_dir", "unused", "--num_workers", "0",
                                "--finetune_epochs", "1", "--finetune_batch_size", "8"])
    encoder = ArtStyleModel(ArtStyleConfig.from_preset("tiny", **json.loads(TINY)))
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    splits, num_classes = ablation.evaluation_splits(args)
    result = ablation.finetune_accuracy(encoder, splits, num_classes, args, seed=0, device="cpu")
    assert result["finetune_steps"] == 3  # 19 train images (80 % of 24, stratified), batch 8
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())


def test_finetune_arguments_are_checked():
    ablation = load_ablation()
    for bad in (["--finetune_epochs", "-1"], ["--finetune_lr", "0"], ["--finetune_layer_decay", "1.5"]):
        with pytest.raises(SystemExit):
            ablation.parse_args(["--data_dir", ".", "--output_dir", "unused", *bad])


def test_pretrained_settings_tiny_steps_paired_report(class_folders, tmp_path):
    ablation = load_ablation()
    output = tmp_path / "out"
    argv = ["--data_dir", str(class_folders), "--output_dir", str(output), "--settings", "moco_v3,full",
            "--seeds", "0", "--max_steps", "2", "--batch_size", "4", "--num_workers", "0", "--probe_epochs", "10",
            "--config_overrides", TINY, "--finetune_epochs", "1", "--finetune_batch_size", "16",
            "--readouts", "cls,cls_gram_diag"]
    assert ablation.main(argv) == 0
    records = json.loads((output / "ablation_records.json").read_text())
    assert sorted((r["setting"], r["steps"], r["batch"]) for r in records) == [
        ("full", 2, 4), ("full@cls", 2, 4), ("moco_v3", 2, 4), ("moco_v3@cls_gram_diag", 2, 4)]
    assert all(0 <= r["finetune_acc"] <= 1 for r in records)
    readout = json.loads((output / "results" / "full@cls__seed0.json").read_text())
    base = json.loads((output / "results" / "full__seed0.json").read_text())
    assert base["config"]["pooler"] == "cls_gram_diag"  # the default
    assert readout["readout_of"] == "full" and readout["config"]["pooler"] == "cls"
    assert readout["pretrain_dir"] == base["pretrain_dir"]  # one pretraining serves both records
    table = (output / "ablation.md").read_text()
    assert "Paired difference full − moco_v3" in table and "| fine-tune |" in table
    # the components compared with the pooler held fixed, both ways
    assert "Paired difference full@cls − moco_v3" in table
    assert "Paired difference full − moco_v3@cls_gram_diag" in table
    # resume: a read-out missing from an earlier call is computed from the saved pretrained folder, with the same result
    (output / "results" / "full@cls__seed0.json").unlink()
    assert ablation.main(argv) == 0
    again = json.loads((output / "results" / "full@cls__seed0.json").read_text())
    assert (again["linear_probe_acc"], again["knn_acc"]) == (readout["linear_probe_acc"], readout["knn_acc"])
    # resume: a run killed during its evaluation (no result file) keeps its pretraining; the next call only evaluates it
    weights = Path(base["pretrain_dir"]) / "model.safetensors"
    written = weights.stat().st_mtime_ns
    assert ablation.finished_pretraining(Path(base["pretrain_dir"]), 2)
    assert not ablation.finished_pretraining(Path(base["pretrain_dir"]), 3)  # another budget: pretrain again
    (output / "results" / "full__seed0.json").unlink()
    assert ablation.main(argv) == 0
    assert weights.stat().st_mtime_ns == written  # not pretrained again
    redone = json.loads((output / "results" / "full__seed0.json").read_text())
    assert (redone["linear_probe_acc"], redone["knn_acc"], redone["train_steps"]) == (
        base["linear_probe_acc"], base["knn_acc"], base["train_steps"])


def test_report_pairs_hold_the_pooler_fixed():
    ablation = load_ablation()

    def rec(setting, pooler):
        return {**_record(setting, 0, 0.5), "config": {"pooler": pooler}}

    results = [rec("full", "cls_gram_diag"), rec("moco_v3", "cls"), rec("full@cls", "cls"),
               rec("full@gram_diag", "gram_diag"), rec("moco_v3@gram_diag", "gram_diag")]
    assert ablation.report_pairs(results) == [("full", "moco_v3"), ("full@cls", "moco_v3"),
                                              ("full@gram_diag", "moco_v3@gram_diag")]


def test_with_pooler_reads_the_same_weights_through_the_gram_diagonal():
    from artstyle import ArtStyleConfig, ArtStyleModel

    ablation = load_ablation()
    torch.manual_seed(0)
    encoder = ArtStyleModel(ArtStyleConfig.tiny(**json.loads(TINY), pooler="cls")).eval()
    other = ablation.with_pooler(encoder, "gram_diag")
    assert other.config.pooler == "gram_diag" and encoder.config.pooler == "cls"  # the original is left alone
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        tokens = encoder(x, output_hidden_states=True).hidden_states[-1][:, 1:]
        logs = torch.log(tokens.pow(2).mean(1) + 1e-6)
        expected = (logs - logs.mean(1, keepdim=True)) / torch.sqrt(logs.var(1, unbiased=False, keepdim=True) + 1e-6)
        torch.testing.assert_close(other(x).pooler_output, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(SystemExit):
        ablation.parse_args(["--data_dir", ".", "--output_dir", "unused", "--readouts", "fused"])
    fused = ArtStyleModel(ArtStyleConfig.tiny(**json.loads(TINY), pooler="fused"))
    with pytest.raises(ValueError, match="fused poolers change pretraining"):
        ablation.with_pooler(fused, "cls")


# ---------------------------------------------------------------------------------------------- GPU script
def test_gpu_ablation_script_dry_run_on_cpu(class_folders, tmp_path):
    env = {**os.environ, "DATA_DIR": str(class_folders), "OUT_DIR": str(tmp_path / "gpu"), "STEPS": "2",
           "BATCH": "4", "SEEDS": "0", "SETTINGS": "moco_v3", "PARALLEL": "1", "NUM_WORKERS": "0",
           "FINETUNE_EPOCHS": "1", "CONFIG_OVERRIDES": TINY, "RESULTS_DIR": str(tmp_path / "results"),
           "PYTHON": sys.executable, "EXTRA_ARGS": "--probe_epochs 5", "TIME_LIMIT": "3000"}
    completed = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_ablation.sh")], env=env, cwd=REPO,
                               capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    table = json.loads((tmp_path / "results" / "ablation_gpu.json").read_text())
    # the default read-outs: moco_v3 (own pooler cls) is also read through cls_gram_diag, same pretraining
    assert sorted((r["setting"], r["seed"], r["steps"]) for r in table) == [("moco_v3", 0, 2),
                                                                            ("moco_v3@cls_gram_diag", 0, 2)]
    assert set(table[0]) == {"setting", "seed", "steps", "batch", "image_size", "linear_probe_acc", "knn_acc",
                             "finetune_acc"}
    assert (tmp_path / "results" / "ablation_gpu.md").read_text().startswith("| setting |")
    # resumable: a second call skips the finished (setting, seed)
    again = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_ablation.sh")], env=env, cwd=REPO,
                           capture_output=True, text=True)
    assert again.returncode == 0 and "skip moco_v3 seed 0" in again.stdout + again.stderr


def test_full_variants_change_only_their_own_fields():
    """full+gram_mse / full+gram_infonce / full+late_layers are the default full method with one change each."""
    ablation = load_ablation()
    args = SimpleNamespace(config_preset="tiny", config_overrides={"backbone_depth": 6})
    full = ablation.setting_overrides("full", args)
    assert ablation.setting_overrides("full+gram_infonce", args) == {**full, "gram_loss": "infonce"}
    assert ablation.setting_overrides("full+gram_mse", args) == {**full, "gram_loss": "mse"}
    late = ablation.setting_overrides("full+late_layers", args)
    assert late == {**full, "fusion_layers": [3, 4, 5], "distill_layers": [3, 4, 5]}
    config = ablation.build_config(late, "tiny")
    assert config.resolved_fusion_layers() == [3, 4, 5] and config.components == {
        name: True for name in config.components}
    for variant in ablation.FULL_VARIANTS:
        assert f"full+{variant}" in ablation.ALL_SETTINGS
