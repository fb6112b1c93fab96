"""How the scripts wire the shared parts: the pretraining data path chosen by --augment_on, run_finetune's
flip option, per-class average precision and the embedding map (fast, no training run)."""

from unittest import mock

import datasets
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from PIL import Image

import run_finetune
import run_pretrain
from artstyle import ArtStyleForImageClassification, build_image_processor
from artstyle.data import collate_skip_bad
from artstyle.evaluation import StyleData
from artstyle.fast_data import collate_decoded
from artstyle.gpu_augment import GPUTwoViewAugment
from artstyle.training.finetune_reports import per_class_average_precision, split_results, write_embedding_map

from conftest import tiny_config


@pytest.fixture(autouse=True)
def _reset_accelerate():
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _half_black_split(count=2, size=32, labels=None):
    """Images dark on the left half, bright on the right: a flip is visible in every output."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):  # dark noise on the left, bright noise on the right
        pixels = rng.integers(0, 100, (size, size, 3), dtype=np.uint8)
        pixels[:, size // 2:] += 155
        images.append(Image.fromarray(pixels))
    labels = labels if labels is not None else [i % 2 for i in range(count)]
    return datasets.Dataset.from_dict(
        {"image": images, "label": labels},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}))


# --------------------------------------------------------------------------------------------- run_pretrain
def test_augment_on_chooses_the_dataset_collate_and_augment():
    split = _half_black_split(4)
    _, data_args, _ = run_pretrain.parse_args(["--augment_on", "gpu", "--decode_size", "24"])
    config = tiny_config()
    dataset, collate_fn, augment = run_pretrain.build_train_dataset(split, data_args, config, seed=0,
                                                                    augment_on="gpu")
    assert collate_fn is collate_decoded and isinstance(augment, GPUTwoViewAugment)
    item = dataset[0]  # decoded only: uint8, longer side shrunk to --decode_size
    assert item["pixel_values_uint8"].dtype == torch.uint8 and item["pixel_values_uint8"].shape == (3, 24, 24)
    assert item["image_size"] == (24, 24)
    views = augment(collate_fn([dataset[0], dataset[1]])["pixel_values_uint8"], torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(2, 3, 32, 32)] * 2

    dataset, collate_fn, augment = run_pretrain.build_train_dataset(split, data_args, config, seed=0,
                                                                    augment_on="cpu")
    assert collate_fn is collate_skip_bad and augment is None
    item = dataset[0]
    assert item["pixel_values"].shape == item["pixel_values_2"].shape == (3, 32, 32)
    # the default --augment_on auto resolves to the worker-side path on a CPU device
    _, defaults, _ = run_pretrain.parse_args([])
    assert defaults.augment_on == "auto" and defaults.decode_size is None
    assert run_pretrain.resolve_augment_on(defaults.augment_on, torch.device("cpu")) == "cpu"
    assert run_pretrain.resolve_augment_on(defaults.augment_on, torch.device("cuda", 0)) == "gpu"


# --------------------------------------------------------------------------------------------- run_finetune
def _style_data(split, multi_label_eval=False):
    return StyleData(train=split, eval=split, eval_split="validation", test=split, label_names=["a", "b"],
                     multi_label_train=False, train_label_column="label",
                     eval_columns={"eval": ("label", False), "test": ("label", multi_label_eval)})


@pytest.mark.parametrize("hflip_prob", [0.0, 0.5])
def test_hflip_prob_reaches_the_training_augmentation(hflip_prob):
    data = _style_data(_half_black_split())
    _, data_args, train_args = run_finetune.parse_args([
        "--model_name_or_path", "none", "--hflip_prob", str(hflip_prob), "--crop_scale_min", "1.0"])
    processor = build_image_processor(tiny_config())
    loaders = run_finetune.build_loaders(data, processor, data_args, train_args, "finetune")
    torch.manual_seed(0)
    outputs = [loaders["train"].dataset[0]["pixel_values"] for _ in range(24)]
    left_dark = [bool(out[:, :, :16].mean() < out[:, :, 16:].mean()) for out in outputs]
    if hflip_prob == 0.0:  # never flipped: every output is the same, unflipped image
        assert all(left_dark) and all(torch.equal(out, outputs[0]) for out in outputs)
    else:  # today's default: both orientations occur (P(all 24 alike) = 2^-23)
        assert any(left_dark) and not all(left_dark)


def test_hflip_prob_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="--hflip_prob"):
        run_finetune.parse_args(["--model_name_or_path", "none", "--hflip_prob", "1.5"])
    _, data_args, _ = run_finetune.parse_args(["--model_name_or_path", "none"])
    assert data_args.hflip_prob == 0.5


def test_per_class_average_precision_is_named_by_class():
    metrics = {"accuracy": 0.5, "mean_average_precision": 0.75, "average_precision": [1.0, None, 0.5]}
    assert per_class_average_precision(metrics, ["noir", "vintage", "macro"]) == {
        "noir": 1.0, "vintage": None, "macro": 0.5}
    assert per_class_average_precision({"accuracy": 1.0}, ["a"]) is None
    data = _style_data(_half_black_split())
    results = split_results(metrics, "test", data)
    assert results["test_accuracy"] == 0.5 and results["test_mean_average_precision"] == 0.75
    assert results["test_average_precision"] == {"a": 1.0, "b": None, "2": 0.5}  # beyond the names: the index
    assert results["test_details"] is metrics


def test_embedding_map_single_label_only(tmp_path):
    split = _half_black_split(6, labels=[0, 1, 0, 1, 0, -1])  # -1: a row without a class, left out
    loader = torch.utils.data.DataLoader(_eval_dataset(split), batch_size=4, collate_fn=collate_skip_bad)
    model = ArtStyleForImageClassification(tiny_config(num_labels=2))
    accelerator = Accelerator(cpu=True)
    path = write_embedding_map(model, {"test": loader}, accelerator, _style_data(split), tmp_path, "test")
    assert path == tmp_path / "embedding_map_test.png"
    with Image.open(path) as figure:
        assert figure.format == "PNG"
    drawn = []
    with mock.patch("artstyle.training.finetune_reports.plot_embedding_map",
                    side_effect=lambda *args, **kwargs: drawn.append(args)):
        write_embedding_map(model, {"test": loader}, accelerator, _style_data(split), tmp_path, "test")
    features, labels, names, _ = drawn[0]
    assert features.shape[0] == 5 and labels.tolist() == [0, 1, 0, 1, 0] and names == ["a", "b"]
    # multi-label scoring (AVA style tags) or a missing split: no map
    assert write_embedding_map(model, {"test": loader}, accelerator, _style_data(split, multi_label_eval=True),
                               tmp_path / "multi", "test") is None
    assert write_embedding_map(model, {}, accelerator, _style_data(split), tmp_path / "none", "test") is None
    assert not (tmp_path / "multi").exists() and not (tmp_path / "none").exists()


def _eval_dataset(split):
    from artstyle.data import StyleImageDataset
    from artstyle.transforms import build_eval_transform

    return StyleImageDataset(split, build_eval_transform(build_image_processor(tiny_config())), "image", "label")
