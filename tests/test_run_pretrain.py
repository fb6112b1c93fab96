"""End-to-end tests of run_pretrain.py on a tiny model and a 48-image demo dataset (CPU)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from safetensors.torch import load_file

import run_pretrain
from artstyle import ArtStyleForPretraining
from artstyle.training.pretrain_loop import PretrainLoop
from run_pretrain import main, parse_args, schedule_values, training_lengths

from conftest import reset_training_state

ROOT = Path(__file__).resolve().parents[1]
TINY = {"backbone_depth": 2, "image_size": 32, "patch_size": 8, "queue_size": 64, "projection_hidden_dim": 64,
        "projection_dim": 32, "distill_hidden_dim": 32, "layer_head_dim": 32, "style_dim": 32, "gram_dim": 8}


def tiny_args(tmp_path, out="out", *extra, steps=4, batch=8, num_images=48):
    cache = tmp_path / "cache"
    return [
        "--config_overrides", json.dumps(TINY),
        "--dataset_options", json.dumps({"num_images": num_images, "image_size": 32, "cache_dir": str(cache)}),
        "--output_dir", str(tmp_path / out),
        "--per_device_train_batch_size", str(batch),
        "--max_train_steps", str(steps),
        "--dataloader_num_workers", "0",
        "--report_to", "none",
        "--seed", "0",
        "--deterministic",
        *extra,
    ]


@pytest.fixture(autouse=True)
def _reset_global_state():
    yield
    reset_training_state()


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    return env


def _weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


# --------------------------------------------------------------------------------------------- pure parts
def test_help_lists_hf_argument_names(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in ("--output_dir", "--per_device_train_batch_size", "--num_train_epochs", "--max_train_steps",
                 "--learning_rate", "--weight_decay", "--gradient_accumulation_steps", "--checkpointing_steps",
                 "--resume_from_checkpoint", "--seed", "--mixed_precision", "--report_to", "--push_to_hub",
                 "--hub_model_id", "--config_preset", "--augmentation", "--dataloader_num_workers", "--eval_every",
                 "--torch_compile", "--dataset_name", "--with_tracking", "--hub_private_repo"):
        assert name in text


@pytest.mark.parametrize("argv, match", [
    (["--learning_rate", "0"], "learning_rate"),
    (["--per_device_train_batch_size", "0"], "per_device_train_batch_size"),
    (["--augmentation", "fancy"], "augmentation"),
    (["--dataset_options", "[1]"], "dataset_options"),
    (["--config_overrides", "queue_size"], "config_overrides"),
    (["--augment_on", "tpu"], "augment_on"),
    (["--decode_size", "0"], "decode_size"),
])
def test_bad_arguments_name_the_flag(argv, match):
    with pytest.raises(ValueError, match=match):
        parse_args(argv)


def test_config_overrides_and_loss_weights():
    model_args, _, _ = parse_args(["--config_overrides", "queue_size=128,image_size=32", "--weight_gram", "0"])
    config = run_pretrain.build_config(model_args)
    assert (config.queue_size, config.image_size, config.weight_gram) == (128, 32, 0.0)
    assert run_pretrain.parse_overrides('{"fusion_layers": [0, 1]}') == {"fusion_layers": [0, 1]}


def test_lengths_and_schedule_values_follow_the_step():
    _, _, train_args = parse_args(["--gradient_accumulation_steps", "3", "--num_train_epochs", "2",
                                   "--learning_rate", "0.01", "--num_warmup_steps", "2"])
    assert training_lengths(10, train_args) == (4, 8, 2)  # ceil(10 / 3) steps per epoch
    _, _, with_max = parse_args(["--max_train_steps", "9"])
    assert training_lengths(4, with_max) == (4, 9, 3)
    config = run_pretrain.ArtStyleConfig.tiny(momentum_base=0.9)
    assert schedule_values(0, 8, train_args, config) == pytest.approx(
        {"lr": 0.005, "weight_decay": 0.1, "momentum": 0.9})
    assert schedule_values(8, 8, train_args, config) == pytest.approx({"lr": 0.0, "weight_decay": 0.1, "momentum": 1.0})


# --------------------------------------------------------------------------------------------- in-process runs
def test_final_folder_card_and_push_to_hub_patched(tmp_path):
    args = tiny_args(tmp_path, "out", "--push_to_hub", "--hub_model_id", "me/artstyle-tiny",
                     "--gradient_accumulation_steps", "2", steps=2)
    with mock.patch.object(HfApi, "create_repo", return_value="https://hf.co/me/artstyle-tiny") as create, \
            mock.patch.object(HfApi, "upload_folder") as upload:
        results = main(args)
    out = tmp_path / "out"
    create.assert_called_once()
    assert create.call_args.args[0] == "me/artstyle-tiny"
    assert upload.call_args.kwargs["folder_path"] == str(out)
    # accumulation: 2 optimisation steps of 2 micro-batches of 8 images
    assert results["train_steps"] == 2 and results["images_seen"] == 32 and results["world_size"] == 1
    assert results["augment_on"] == "cpu"  # --augment_on auto on a CPU device: today's worker-side path
    assert not (out / "training_curves.png").exists()  # --report_to none: no events, no curves
    assert json.loads((out / "all_results.json").read_text()) == results
    assert all(f"train_{t}" in results for t in run_pretrain.LOSS_TERMS)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
        assert (out / name).is_file(), name
    card = ModelCard.load(out / "README.md")
    assert "pretraining" in card.data.tags
    assert "| steps | 2 |" in card.text and "final train_loss" in card.text and "`demo`" in card.text
    from transformers import AutoImageProcessor, AutoModel

    encoder = AutoModel.from_pretrained(out)
    assert type(encoder).__name__ == "ArtStyleModel"
    assert AutoImageProcessor.from_pretrained(out).size["height"] == 32
    # the teacher and the queue are saved with the pretraining model
    assert any(k.endswith("queue") for k in _weights(out))

    # pretraining continues from the saved folder: weights, teacher and queue are loaded from it
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    with mock.patch.object(run_pretrain.ArtStyleForPretraining, "from_pretrained",
                           wraps=run_pretrain.ArtStyleForPretraining.from_pretrained) as loaded:
        again = main(tiny_args(tmp_path, "again", "--model_name_or_path", str(out), steps=1))
    assert loaded.call_args.args[0] == str(out) and again["train_steps"] == 1
    assert f"`{out}`" in (tmp_path / "again" / "README.md").read_text()  # base model named in the card


def test_non_finite_loss_stops_naming_the_step_and_keeps_last_checkpoint(tmp_path):
    original = ArtStyleForPretraining.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            output.loss = output.loss * float("nan")
        return output

    args = tiny_args(tmp_path, "out", "--checkpointing_steps", "2", steps=4)
    with mock.patch.object(ArtStyleForPretraining, "forward", forward), \
            pytest.raises(FloatingPointError, match="step 3"):
        main(args)
    checkpoints = tmp_path / "out" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_2"]
    files = {p.name for p in (checkpoints / "step_2").iterdir()}
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"} <= files
    assert not (tmp_path / "out" / "model.safetensors").exists()
    # the output dir now holds checkpoints: a plain rerun refuses to mix runs
    with pytest.raises(ValueError, match="resume_from_checkpoint"):
        main(args)
    # exact resume needs the same data layout
    with pytest.raises(ValueError, match="per_device_train_batch_size 8"):
        main(tiny_args(tmp_path, "out", "--resume_from_checkpoint", "latest", batch=4))


class _Stop(Exception):
    pass


def test_gpu_augment_path_on_cpu_trains_and_resumes_exactly(tmp_path):
    """--augment_on gpu forced on a CPU device: uint8 batches, views made in the loop; stopping right after the
    step-2 checkpoint and resuming gives the same final weights as an uninterrupted run."""
    import artstyle.training.pretrain_loop as loop_module

    gpu = ["--augment_on", "gpu", "--decode_size", "40", "--checkpointing_steps", "2", "--eval_every", "2",
           "--knn_k", "3"]
    small = {"steps": 5, "batch": 4, "num_images": 24}  # demo train split: 12 images = 3 batches per epoch
    logged = []
    original_log, original_save = Accelerator.log, loop_module.save_checkpoint

    def spy(self, values, step=None, log_kwargs=None):
        logged.append((step, dict(values)))
        return original_log(self, values, step=step)

    def save_then_stop(accelerator, checkpoint_dir, step, total_limit=None):
        path = original_save(accelerator, checkpoint_dir, step, total_limit)
        raise _Stop(path)

    views = mock.MagicMock(wraps=loop_module.make_two_view_batch)
    with mock.patch.object(Accelerator, "log", spy), mock.patch.object(loop_module, "make_two_view_batch", views):
        straight = main(tiny_args(tmp_path, "straight", *gpu, **small))
    assert straight["augment_on"] == "gpu" and straight["train_steps"] == 5
    assert views.call_count == 5
    batch = views.call_args.args[0]
    assert batch["pixel_values_uint8"].dtype == torch.uint8 and batch["pixel_values_uint8"].shape[-1] == 40
    losses = [values["train/loss"] for _, values in logged if "train/loss" in values]
    assert len(losses) == 5 and all(torch.isfinite(torch.tensor(losses)))

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    with mock.patch.object(loop_module, "save_checkpoint", save_then_stop), pytest.raises(_Stop):
        main(tiny_args(tmp_path, "stopped", *gpu, **small))
    checkpoints = tmp_path / "stopped" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_2"]
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    resumed = main(tiny_args(tmp_path, "stopped", *gpu, "--resume_from_checkpoint", "latest", **small))
    assert resumed["resumed_from"].endswith("step_2") and resumed["epochs"] == straight["epochs"] == 2
    assert resumed["train_loss"] == straight["train_loss"]
    a, b = _weights(tmp_path / "stopped"), _weights(tmp_path / "straight")
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    # the kNN monitor: step 0 only in a fresh run (not again after the resume), the same values as without the stop
    monitor = [json.loads(line) for line in (tmp_path / "stopped" / "eval_log.jsonl").read_text().splitlines()]
    assert monitor == [json.loads(line) for line in (tmp_path / "straight" / "eval_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in monitor] == [0, 2, 4]
    at_resume = _weights(checkpoints / "step_2")
    assert any(not torch.equal(at_resume[k], a[k]) for k in a if k in at_resume)


# --------------------------------------------------------------------------------------------- subprocesses
KILLER = textwrap.dedent("""
    import os, signal, sys
    import accelerate
    import run_pretrain

    original = accelerate.Accelerator.save_state

    def save_state(self, output_dir=None, **kwargs):
        result = original(self, output_dir, **kwargs)
        if os.path.basename(str(output_dir)) == ".tmp-step_4":
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 after writing, before the checkpoint is complete
        return result

    accelerate.Accelerator.save_state = save_state
    run_pretrain.main(sys.argv[1:])
""")


def test_kill_9_then_resume_is_bit_identical(tmp_path):
    steps = ["--checkpointing_steps", "2"]
    small = {"steps": 5, "batch": 4, "num_images": 24}  # demo train split: 12 images = 3 batches per epoch
    killed = subprocess.run([sys.executable, "-c", KILLER, *tiny_args(tmp_path, "killed", *steps, **small)],
                            env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = tmp_path / "killed" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [".tmp-step_4", "step_2"]

    resumed = main(tiny_args(tmp_path, "killed", *steps, "--resume_from_checkpoint", "latest", **small))
    assert resumed["resumed_from"].endswith("step_2")
    assert not (checkpoints / ".tmp-step_4").exists()
    torch.use_deterministic_algorithms(False)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    straight = main(tiny_args(tmp_path, "straight", *steps, **small))

    # 5 steps over 3 batches per epoch: the resume starts mid-epoch 0 and crosses into epoch 1
    assert straight["epochs"] == resumed["epochs"] == 2
    assert resumed["train_loss"] == straight["train_loss"]
    a, b = _weights(tmp_path / "killed"), _weights(tmp_path / "straight")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    # the weights moved after the resume point, so the comparison means something
    at_resume = _weights(checkpoints / "step_2")
    assert any(not torch.equal(at_resume[k], a[k]) for k in a if k in at_resume)


def test_two_processes_keep_replicas_identical(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "run_pretrain.py"), *tiny_args(tmp_path, "ddp", steps=2, batch=4)]
    run = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads((tmp_path / "ddp" / "all_results.json").read_text())
    assert results["world_size"] == 2
    assert results["global_batch_size"] == 8 and results["images_seen"] == 16
    # invariant: after the same steps every replica holds the same student, teacher and queue
    # (BatchNorm statistics stay per process on CPU, where torch has no SyncBatchNorm)
    checksums = results["replica_checksums"]
    assert len(checksums["parameters"]) == 2
    assert checksums["parameters"][0] == checksums["parameters"][1]
    assert checksums["queue"][0] == checksums["queue"][1]
    # the queue received the keys of the whole global batch (2 processes x 4) at every step
    weights = _weights(tmp_path / "ddp")
    (ptr_key,) = [k for k in weights if k.endswith("queue_ptr")]
    assert int(weights[ptr_key]) == (2 * 8) % TINY["queue_size"]


def _write_bad_image_folder(root):
    rng = torch.Generator().manual_seed(0)
    for cls in ("a", "b"):
        folder = root / "train" / cls
        folder.mkdir(parents=True)
        for i in range(7 if cls == "a" else 6):
            pixels = (torch.rand(24, 24, 3, generator=rng) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"{i}.png")
    good = root / "train" / "a" / "0.png"
    (root / "train" / "a" / "zero.jpg").write_bytes(b"")
    (root / "train" / "b" / "text.jpg").write_text("this is not an image")
    Image.open(good).convert("RGB").save(root / "train" / "b" / "full.jpg")
    data = (root / "train" / "b" / "full.jpg").read_bytes()
    (root / "train" / "b" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "train" / "b" / "full.jpg").unlink()


def test_bad_images_are_skipped_and_counted(tmp_path):
    _write_bad_image_folder(tmp_path / "images")  # 13 good + 3 bad = 16 images = 4 batches of 4
    args = tiny_args(tmp_path, "bad", steps=4, batch=4)
    args[args.index("--dataset_options") + 1] = json.dumps({"cache_dir": str(tmp_path / "cache"),
                                                             "validation_size": 0.0})
    args[args.index("--report_to") + 1] = "tensorboard"
    results = main([*args, "--dataset_name", "imagefolder", "--data_dir", str(tmp_path / "images"),
                    "--num_train_epochs", "1", "--max_train_steps", "4", "--hub_token", "hf_SECRET"])
    assert results["train_steps"] == 4
    assert results["skipped_images"] == 3
    assert results["images_seen"] == 13
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = [EventAccumulator(str(p)).Reload() for p in (tmp_path / "bad" / "runs").rglob("events.out.tfevents*")]
    (logged,) = [log for log in logs if "train/lr" in log.Tags()["scalars"]]
    tags = set(logged.Tags()["scalars"])
    expected = {f"train/{t}" for t in run_pretrain.LOSS_TERMS} | {
        "train/lr", "train/momentum", "train/weight_decay", "train/images_per_second", "train/skipped_images"}
    assert expected <= tags
    assert [e.step for e in logged.Scalars("train/lr")] == [1, 2, 3, 4]
    assert logged.Scalars("train/skipped_images")[-1].value == 3
    # TensorBoard tracking on: the loss curves are drawn from the flushed events at the end
    with Image.open(tmp_path / "bad" / "training_curves.png") as figure:
        assert figure.format == "PNG" and figure.width > 200
    assert not any(b"hf_SECRET" in p.read_bytes() for p in (tmp_path / "bad").rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------- options
def test_deprecated_flag_names_still_work_with_a_warning():
    with pytest.warns(FutureWarning) as caught:
        model_args, data_args, train_args = parse_args([
            "--dataset", "demo", "--num_workers", "3", "--hub_private", "--weight_gram", "0",
            "--config_overrides", "queue_size=128", "--weight_distill=0.5"])
    messages = " ".join(str(w.message) for w in caught)
    for old, new in (("--dataset", "--dataset_name"), ("--num_workers", "--dataloader_num_workers"),
                     ("--hub_private", "--hub_private_repo"), ("--weight_gram", "--config_overrides weight_gram=0")):
        assert f"{old} is deprecated, use {new}" in messages
    assert data_args.dataset_name == "demo" and data_args.dataloader_num_workers == 3 and train_args.hub_private_repo
    config = run_pretrain.build_config(model_args)
    assert (config.weight_gram, config.weight_distill, config.queue_size) == (0.0, 0.5, 128)


def test_moco_v3_baseline_flag_uses_the_config_method():
    model_args, _, _ = parse_args(["--moco_v3_baseline", "--config_overrides", "queue_size=128"])
    config = run_pretrain.build_config(model_args)
    expected = run_pretrain.ArtStyleConfig.demo(queue_size=128).moco_v3_baseline()
    assert config.to_dict() == expected.to_dict()
    assert not any(config.components.values())


def test_eval_every_logs_knn_without_changing_training(tmp_path):
    logged = []
    original = Accelerator.log

    def spy(self, values, step=None, log_kwargs=None):
        logged.append((step, dict(values)))
        return original(self, values, step=step)

    updates_before = []  # optimizer updates taken before each kNN evaluation
    original_log_knn = PretrainLoop.log_knn

    def log_knn_spy(self):
        updates_before.append(sum(int(s.get("step", 0)) for s in self.optimizer.state.values()))
        return original_log_knn(self)

    with mock.patch.object(Accelerator, "log", spy), mock.patch.object(PretrainLoop, "log_knn", log_knn_spy):
        monitored = main(tiny_args(tmp_path, "knn", "--eval_every", "2", "--knn_k", "5", steps=5))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    plain = main(tiny_args(tmp_path, "plain", steps=5))

    lines = [json.loads(line) for line in (tmp_path / "knn" / "eval_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 2, 4]
    assert updates_before[0] == 0 and updates_before[1] > 0  # step 0 reads the encoder before any update
    assert all(0.0 <= line["knn_acc"] <= 1.0 for line in lines)
    tracked = [(step, values["eval/knn_acc"]) for step, values in logged if "eval/knn_acc" in values]
    assert tracked == [(line["step"], line["knn_acc"]) for line in lines]
    assert not (tmp_path / "plain" / "eval_log.jsonl").exists()
    # the monitor uses no global RNG and does not touch the model: training is unchanged
    assert {k: v for k, v in monitored.items() if k.startswith("train_loss")} == \
        {k: v for k, v in plain.items() if k.startswith("train_loss")}
    a, b = _weights(tmp_path / "knn"), _weights(tmp_path / "plain")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_torch_compile_with_ema_queue_and_resume(tmp_path):
    """Dynamo capture of the forward (EMA update, queue) with the 'eager' backend: the inductor backend compiles
    C++ kernels, which takes minutes on a CPU (measured > 10 min on this project's CI machine), so it is not run."""
    steps = ["--checkpointing_steps", "2"]
    eager = main(tiny_args(tmp_path, "eager", *steps, steps=3))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    compiled_args = tiny_args(tmp_path, "compiled", *steps, "--torch_compile", "--torch_compile_backend", "eager",
                              steps=3)
    compiled = main(compiled_args)
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-5)
    a, b = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    assert a.keys() == b.keys()  # compiled in place: the saved names are the eager model's
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    (pointer,) = [k for k in a if k.endswith("queue_ptr")]
    assert int(a[pointer]) == int(b[pointer])
    # resume the compiled run from its step-2 checkpoint: same final weights as the straight compiled run
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    resumed = main([*compiled_args, "--resume_from_checkpoint", str(tmp_path / "compiled" / "checkpoints" / "step_2")])
    assert resumed["resumed_from"].endswith("step_2") and resumed["train_loss"] == compiled["train_loss"]
    c = _weights(tmp_path / "compiled")
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_queue_size_warning_names_the_field_and_suggests_a_quarter():
    from artstyle.training.arguments import queue_size_warning

    assert queue_size_warning(0, 10) is None  # in-batch negatives: no queue
    assert queue_size_warning(839, 840) is None  # fewer keys than images
    message = queue_size_warning(1024, 840)
    assert "queue_size 1024 >= the 840 training images" in message
    assert json.loads(message.split("--config_overrides '")[1].split("'")[0]) == {"queue_size": 210}
    assert queue_size_warning(840, 840) is not None


def test_pretraining_with_a_queue_larger_than_the_data_logs_the_warning(tmp_path, caplog):
    # TINY's queue of 64 keys is larger than the 36 training images of a 48-image demo (6 validation, 6 test)
    with caplog.at_level("WARNING"):
        main(tiny_args(tmp_path, steps=1))
    assert "queue_size 64 >= the 36 training images" in caplog.text
    assert '{"queue_size": 9}' in caplog.text
    # a size the user chose is kept
    assert json.loads((tmp_path / "out" / "config.json").read_text())["queue_size"] == 64


def test_the_presets_queue_is_lowered_to_a_quarter_of_a_small_dataset(tmp_path, caplog):
    args = tiny_args(tmp_path, steps=1)
    overrides = {k: v for k, v in TINY.items() if k != "queue_size"}  # the tiny preset's 1024 keys
    args[args.index("--config_overrides") + 1] = json.dumps(overrides)
    with caplog.at_level("WARNING"):
        main(args)
    assert "preset's 1024 keys are at least the 36 training images" in caplog.text
    assert "using queue_size 9 (a quarter of them)" in caplog.text
    out = tmp_path / "out"
    assert json.loads((out / "config.json").read_text())["queue_size"] == 9
    assert _weights(out)["queue"].shape[0] == 9
