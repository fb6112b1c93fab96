"""run_finetune: LLRD groups, kNN, linear probe, and tiny end-to-end runs (fine-tune, probe, kNN)."""

import json

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

import run_finetune
from artstyle import ArtStyleForImageClassification, build_image_processor
from artstyle.evaluation import fit_linear_probe, knn_classify, layer_decay_param_groups, train_linear_probe

from conftest import tiny_config

# ---------------------------------------------------------------------------------------- units


def test_layer_decay_rates_decrease_with_depth():
    model = ArtStyleForImageClassification(tiny_config(backbone_depth=3, num_labels=4))
    groups = layer_decay_param_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale = {}
    decay = {}
    for group in groups:
        for param in group["params"]:
            scale[id(param)] = group["lr_scale"]
            decay[id(param)] = group["weight_decay"]
    named = dict(model.named_parameters())
    rate = lambda name: scale[id(named[name])]  # noqa: E731
    backbone = "artstyle.backbone."
    assert rate(backbone + "patch_embed.proj.weight") == pytest.approx(0.5**3)
    assert rate(backbone + "pos_embed") == pytest.approx(0.5**3)
    assert rate(backbone + "blocks.0.attn.qkv.weight") == pytest.approx(0.5**2)
    assert rate(backbone + "blocks.1.attn.qkv.weight") == pytest.approx(0.5)
    assert rate(backbone + "blocks.2.attn.qkv.weight") == 1.0
    assert rate("classifier.weight") == 1.0
    # every trainable parameter is in exactly one group; frozen ones in none
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(trainable) == len(scale)
    assert decay[id(named["classifier.weight"])] == 0.05
    assert decay[id(named["classifier.bias"])] == 0.0
    assert decay[id(named[backbone + "pos_embed"])] == 0.0
    # layer_decay 1.0: one scale for everything
    assert {g["lr_scale"] for g in layer_decay_param_groups(model, 0.05, 1.0)} == {1.0}


def test_knn_matches_a_hand_computed_vote():
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 2])
    query = torch.tensor([[0.6, 0.8], [-2.0, 0.1]])  # unnormalised on purpose
    scores = knn_classify(train, labels, query, num_classes=3, k=2, temperature=0.5)
    # query 0 (unit 0.6,0.8): cos = .6, .96, .8, -.6 -> neighbours 1 (class 0) and 2 (class 1)
    w0, w1 = torch.exp(torch.tensor(0.96 / 0.5)), torch.exp(torch.tensor(0.8 / 0.5))
    expected0 = torch.tensor([w0, w1, 0.0]) / (w0 + w1)
    torch.testing.assert_close(scores[0], expected0)
    assert scores[1].argmax() == 2
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(2))
    # multi-hot neighbours vote for each of their classes
    multi = torch.tensor([[0, 0, 1], [1, 1, 0], [0, 0, 1], [0, 0, 1]])
    scores = knn_classify(train, multi, query[:1], num_classes=3, k=1)
    torch.testing.assert_close(scores[0], torch.tensor([0.5, 0.5, 0.0]))  # nearest: train 1, classes 0 and 1
    with pytest.raises(ValueError, match="k must be"):
        knn_classify(train, labels, query, 3, k=0)


def test_linear_probe_separates_and_folds_standardisation():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    centres = torch.tensor([[5.0, 0.0, 100.0], [0.0, 5.0, 100.0], [-5.0, -5.0, 100.0]])
    features = centres[labels] + 0.5 * torch.randn(60, 3, generator=generator)
    layer = train_linear_probe(features, labels, 3, epochs=20, learning_rate=0.05, batch_size=30)
    assert (layer(features).argmax(dim=1) == labels).float().mean() == 1.0
    with pytest.raises(ValueError, match="60 features but 2 labels"):
        train_linear_probe(features, labels[:2], 3)


def test_argument_errors_name_the_option():
    with pytest.raises(ValueError, match="exclusive"):
        run_finetune.parse_args(["--linear_probe", "--knn"])
    with pytest.raises(ValueError, match="--layer_decay"):
        run_finetune.parse_args(["--layer_decay", "0"])
    with pytest.raises(ValueError, match="--dataset_options"):
        run_finetune.parse_args(["--dataset_options", "{bad"])
    with pytest.raises(FileNotFoundError, match="run_pretrain.py"):
        run_finetune.build_model(run_finetune.ModelArguments(model_name_or_path="./missing_dir"), ["a", "b"], False)


# ---------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def demo_options(tmp_path_factory):
    cache = tmp_path_factory.mktemp("demo_cache")
    return json.dumps({"num_images": 48, "image_size": 32, "cache_dir": str(cache)})


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, demo_options):
    output = tmp_path_factory.mktemp("finetune")
    results = run_finetune.main([
        "--model_name_or_path", "none", "--config_preset", "tiny",
        "--config_overrides", "backbone_depth=2,image_size=32",
        "--dataset_options", demo_options, "--output_dir", str(output), "--max_train_steps", "2",
        "--per_device_train_batch_size", "7", "--per_device_eval_batch_size", "16", "--warmup_epochs", "0",
        "--mixup", "0.8", "--cutmix", "1.0", "--gradient_accumulation_steps", "2",
    ])
    return output, results


def test_finetune_writes_the_expected_files(finetuned):
    output, results = finetuned
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "all_results.json",
                 "confusion_matrix.png", "per_class_accuracy.png", "embedding_map_test.png", "README.md"):
        assert (output / name).is_file(), name
    assert (output / "last_epoch" / "model.safetensors").is_file()
    written = json.loads((output / "all_results.json").read_text())
    assert written["train_steps"] == 2 and written["mode"] == "finetune"
    for key in ("eval_accuracy", "eval_macro_f1", "eval_mean_average_precision", "test_accuracy"):
        assert 0.0 <= written[key] <= 1.0
    assert len(written["test_details"]["confusion_matrix"]) == 6
    # example counts: every image of each split was scored (the confusion matrix counts them)
    for split in ("eval", "test"):
        assert written[f"{split}_num_examples"] == sum(map(sum, written[f"{split}_details"]["confusion_matrix"])) > 0
    model = ArtStyleForImageClassification.from_pretrained(output)
    # per-class AP under the class names; their mean over defined classes is the reported mAP
    per_class = written["test_average_precision"]
    assert list(per_class) == [model.config.id2label[i] for i in range(6)]
    defined = [ap for ap in per_class.values() if ap is not None]
    assert defined and all(0.0 <= ap <= 1.0 for ap in defined)
    assert sum(defined) / len(defined) == pytest.approx(written["test_mean_average_precision"])
    assert model.config.num_labels == 6 and model.config.problem_type == "single_label_classification"
    assert set(model.config.label2id) == set(model.config.id2label.values())
    card = (output / "README.md").read_text()
    assert "model-index" in card and "image-classification" in card


def test_linear_probe_keeps_the_encoder_frozen(finetuned, demo_options, tmp_path):
    source, _ = finetuned
    results = run_finetune.main([
        "--model_name_or_path", str(source), "--linear_probe", "--dataset_options", demo_options,
        "--output_dir", str(tmp_path), "--probe_epochs", "5", "--per_device_eval_batch_size", "16",
    ])
    assert results["mode"] == "linear_probe" and 0.0 <= results["test_accuracy"] <= 1.0
    before, after = load_file(source / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    encoder = [k for k in before if k.startswith("artstyle.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])


def test_knn_mode_writes_metrics_only(finetuned, demo_options, tmp_path):
    source, _ = finetuned
    results = run_finetune.main([
        "--model_name_or_path", str(source), "--knn", "--knn_k", "5", "--dataset_options", demo_options,
        "--output_dir", str(tmp_path), "--per_device_eval_batch_size", "16",
    ])
    assert results["knn"] == {"k": 5, "temperature": 0.07}
    written = json.loads((tmp_path / "all_results.json").read_text())
    assert 0.0 <= written["eval_accuracy"] <= 1.0 and "test_mean_average_precision" in written
    assert not (tmp_path / "model.safetensors").exists()
    assert (tmp_path / "embedding_map_test.png").is_file() and written["test_num_examples"] > 0


def _multi_label_dataset(multi_hot_train: bool):
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    names = ["noir", "vintage", "macro"]

    def split(n):
        images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
        single = [i % 3 for i in range(n)]
        multi = [[int(j == i % 3 or j == (i + 1) % 3 and i % 2) for j in range(3)] for i in range(n)]
        return images, single, multi

    images, single, multi = split(12)
    label_feature = datasets.List(datasets.Value("int32")) if multi_hot_train else datasets.ClassLabel(names=names)
    train = datasets.Dataset.from_dict(
        {"image": images, "label": multi if multi_hot_train else single},
        features=datasets.Features({"image": datasets.Image(), "label": label_feature}),
    )
    images, single, multi = split(8)
    test = datasets.Dataset.from_dict(
        {"image": images, "label": single, "labels": multi},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names),
                                    "labels": datasets.List(datasets.Value("int32"))}),
    )
    return datasets.DatasetDict(train=train, test=test)


@pytest.mark.parametrize("multi_hot_train", [False, True], ids=["ava_protocol", "multi_label_training"])
def test_multi_label_evaluation(monkeypatch, tmp_path, multi_hot_train):
    import artstyle.data

    monkeypatch.setattr(artstyle.data, "load_style_dataset", lambda *a, **k: _multi_label_dataset(multi_hot_train))
    results = run_finetune.main([
        "--model_name_or_path", "none", "--config_overrides", "backbone_depth=2,image_size=32",
        "--output_dir", str(tmp_path),
        "--max_train_steps", "1", "--per_device_train_batch_size", "4", "--warmup_epochs", "0",
    ])
    assert results["eval_split"] == "test"
    details = results["eval_details"]
    assert details["confusion_matrix"] is None  # multi-label protocol
    assert 0.0 < results["eval_mean_average_precision"] <= 1.0
    config = ArtStyleForImageClassification.from_pretrained(tmp_path).config
    expected = "multi_label_classification" if multi_hot_train else "single_label_classification"
    assert config.problem_type == expected
    assert not (tmp_path / "confusion_matrix.png").exists()
    assert not (tmp_path / "embedding_map_test.png").exists()  # multi-label scoring: no single-label map
    assert results["eval_num_examples"] == 8 and "test_num_examples" not in results  # test is the eval split
    # per-class AP named as the model's labels (the dataset's class names where it has them)
    assert list(results["eval_average_precision"]) == [config.id2label[i] for i in range(3)]
    if not multi_hot_train:
        assert list(results["eval_average_precision"]) == ["noir", "vintage", "macro"]


def test_deprecated_flag_names_still_work_with_a_warning():
    with pytest.warns(FutureWarning) as caught:
        model_args, data_args, train_args = run_finetune.parse_args([
            "--model_name_or_path", "none", "--dataset", "demo", "--num_workers", "2", "--hub_private",
            "--backbone_depth", "2", "--image_size=32", "--drop_path_rate", "0.2"])
    messages = " ".join(str(w.message) for w in caught)
    for old, new in (("--dataset", "--dataset_name"), ("--num_workers", "--dataloader_num_workers"),
                     ("--hub_private", "--hub_private_repo"), ("--backbone_depth", "--config_overrides")):
        assert f"{old} is deprecated, use {new}" in messages
    assert data_args.dataset_name == "demo" and data_args.dataloader_num_workers == 2 and train_args.hub_private_repo
    model = run_finetune.build_model(model_args, ["a", "b"], multi_label=False)
    config = model.config
    assert (config.backbone_depth, config.image_size, config.drop_path_rate, config.num_labels) == (2, 32, 0.2, 2)


def test_linear_probe_init_puts_the_probe_head_in_place_and_leaves_everything_trainable(finetuned, demo_options,
                                                                                        tmp_path):
    """LP-FT's first stage: the head equals a linear probe fitted on the frozen encoder (same seed and recipe), the
    encoder is untouched, and every parameter that was trainable is trainable again for the fine-tune."""
    source, _ = finetuned
    model_args, data_args, train_args = run_finetune.parse_args([
        "--model_name_or_path", str(source), "--linear_probe_init", "--dataset_options", demo_options,
        "--output_dir", str(tmp_path), "--probe_epochs", "5", "--per_device_eval_batch_size", "16", "--seed", "3"])
    data = run_finetune.load_data(data_args)
    accelerator = Accelerator(cpu=True)
    model = run_finetune.build_model(model_args, data.label_names, False)
    model.artstyle.fusion.requires_grad_(False)  # a part frozen by the user stays frozen
    processor = build_image_processor(model.config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_finetune.initialise_head_by_linear_probe(model, data, processor, data_args, train_args, accelerator)

    reference = run_finetune.build_model(model_args, data.label_names, False)
    features = run_finetune.build_loaders(data, processor, data_args, train_args, "linear_probe")["train_features"]
    head = fit_linear_probe(reference, features, accelerator, len(data.label_names), seed=3, epochs=5,
                            learning_rate=train_args.probe_learning_rate, weight_decay=train_args.probe_weight_decay)
    torch.testing.assert_close(model.classifier.weight, head.weight)
    torch.testing.assert_close(model.classifier.bias, head.bias)
    assert not torch.equal(model.classifier.weight, before["classifier.weight"])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("artstyle."))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {f"artstyle.fusion.{n}" for n, _ in model.artstyle.fusion.named_parameters()}


def test_finetune_with_linear_probe_init_says_so_in_its_card(finetuned, demo_options, tmp_path):
    source, _ = finetuned
    run_finetune.main([
        "--model_name_or_path", str(source), "--linear_probe_init", "--dataset_options", demo_options,
        "--output_dir", str(tmp_path), "--probe_epochs", "3", "--max_train_steps", "1",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--save_plots", "false"])
    assert "linear probe (LP-FT)" in (tmp_path / "README.md").read_text()


def test_lp_ft_records_what_its_probe_head_scored_before_fine_tuning(finetuned, demo_options, tmp_path):
    """``probe_init`` in all_results.json: the LP-FT model evaluated before its first update, i.e. exactly the
    ``--linear_probe`` run with the same seed and probe settings."""
    source, _ = finetuned
    common = ["--model_name_or_path", str(source), "--dataset_options", demo_options, "--probe_epochs", "4",
              "--seed", "3", "--per_device_eval_batch_size", "16", "--save_plots", "false"]
    probe = run_finetune.main(common + ["--linear_probe", "--output_dir", str(tmp_path / "probe")])
    lp_ft = run_finetune.main(common + ["--output_dir", str(tmp_path / "lp_ft"), "--max_train_steps", "1",
                                        "--per_device_train_batch_size", "8"])
    written = json.loads((tmp_path / "lp_ft" / "all_results.json").read_text())
    assert written["probe_init"]["eval_accuracy"] == pytest.approx(probe["eval_accuracy"])
    assert written["probe_init"]["eval_macro_f1"] == pytest.approx(probe["eval_macro_f1"])
    assert lp_ft["probe_init"] == written["probe_init"]
    plain = run_finetune.main(common + ["--linear_probe_init", "false", "--output_dir", str(tmp_path / "ft"),
                                             "--max_train_steps", "1", "--per_device_train_batch_size", "8"])
    assert "probe_init" not in plain


def test_the_probe_init_evaluation_leaves_the_training_randomness_alone(finetuned, demo_options, tmp_path,
                                                                       monkeypatch):
    """Iterating the evaluation loader draws from torch's generator; the LP-FT model must train on the draws it
    would have had without the extra evaluation (so earlier results stay reproducible)."""
    source, _ = finetuned
    states = {}
    evaluate, train_one_epoch = run_finetune.evaluate, run_finetune.train_one_epoch

    def recording_evaluate(*args, **kwargs):
        states.setdefault("before_probe_eval", torch.random.get_rng_state())
        return evaluate(*args, **kwargs)

    def recording_train_one_epoch(*args, **kwargs):
        states.setdefault("first_epoch", torch.random.get_rng_state())
        return train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(run_finetune, "evaluate", recording_evaluate)
    monkeypatch.setattr(run_finetune, "train_one_epoch", recording_train_one_epoch)
    run_finetune.main(["--model_name_or_path", str(source), "--dataset_options", demo_options, "--probe_epochs", "2",
                       "--output_dir", str(tmp_path), "--max_train_steps", "1", "--per_device_train_batch_size", "8",
                       "--per_device_eval_batch_size", "16", "--save_plots", "false"])
    assert torch.equal(states["before_probe_eval"], states["first_epoch"])


def test_lp_ft_keeps_the_probe_when_no_epoch_beats_it(finetuned, demo_options, tmp_path, monkeypatch):
    """``--probe_candidate`` (default): the probe head before fine-tuning competes like an epoch. When every epoch
    scores below it on the evaluation split, LP-FT saves exactly what ``--linear_probe`` saves (best_epoch -1);
    with ``--probe_candidate false`` it saves the best epoch whatever the probe scored."""
    source, _ = finetuned
    common = ["--model_name_or_path", str(source), "--dataset_options", demo_options, "--probe_epochs", "4",
              "--seed", "3", "--per_device_eval_batch_size", "16", "--save_plots", "false"]
    run_finetune.main(common + ["--linear_probe", "--output_dir", str(tmp_path / "probe")])
    evaluate, calls = run_finetune.evaluate, []

    def epochs_score_below_the_probe(model, loaders, accelerator, data, split):
        metrics = evaluate(model, loaders, accelerator, data, split)
        if split == "eval":
            calls.append(split)
            if len(calls) > 1:  # every evaluation after the probe's: an epoch of fine-tuning
                metrics = {**metrics, "accuracy": -1.0}
        return metrics

    monkeypatch.setattr(run_finetune, "evaluate", epochs_score_below_the_probe)
    fine_tune = ["--max_train_steps", "1", "--per_device_train_batch_size", "8"]  # one epoch of one update
    kept = run_finetune.main(common + fine_tune + ["--output_dir", str(tmp_path / "kept")])
    assert len(calls) == 2 and kept["best_epoch"] == -1
    assert kept["eval_accuracy"] == kept["probe_init"]["eval_accuracy"]
    assert [h["eval_accuracy"] for h in kept["history"]] == [-1.0]
    probe = load_file(tmp_path / "probe" / "model.safetensors")
    saved = load_file(tmp_path / "kept" / "model.safetensors")
    assert probe.keys() == saved.keys() and all(torch.equal(probe[k], saved[k]) for k in probe)
    last = load_file(tmp_path / "kept" / "last_epoch" / "model.safetensors")
    assert not torch.equal(last["classifier.weight"], probe["classifier.weight"])  # the fine-tune did run

    calls.clear()
    epochs_only = run_finetune.main(common + fine_tune + ["--probe_candidate", "false",
                                                          "--output_dir", str(tmp_path / "epochs")])
    assert epochs_only["best_epoch"] == 0 and epochs_only["eval_accuracy"] == -1.0
    chosen = load_file(tmp_path / "epochs" / "model.safetensors")
    assert not torch.equal(chosen["classifier.weight"], probe["classifier.weight"])


def test_none_builds_the_model_run_pretrain_trains_by_default():
    """`--model_name_or_path none` (the "no pretraining" row of the README) and run_pretrain.py's default must
    build the same encoder, or the demo's comparison compares two models."""
    import run_pretrain

    pre_model_args, _, pre_train_args = run_pretrain.parse_args([])
    model_args, _, train_args = run_finetune.parse_args(["--model_name_or_path", "none"])
    assert model_args.config_preset == pre_model_args.config_preset == "demo"
    assert (pre_train_args.learning_rate, pre_train_args.num_train_epochs) == (5e-4, 16)  # README's table
    assert (train_args.learning_rate, train_args.num_train_epochs) == (1e-3, 8)
    model = run_finetune.build_model(model_args, ["a", "b", "c"], multi_label=False)
    assert (model.config.backbone, model.config.hidden_size, model.config.num_blocks) == ("test_vit3", 96, 9)
    assert model.classifier.out_features == 3
