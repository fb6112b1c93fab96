"""artstyle.diagnostics and benchmarks/diagnose.py: values against hand computations, invariants, a tiny end-to-end."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from artstyle import ArtStyleForPretraining, diagnostics

from conftest import tiny_config

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


# ---------------------------------------------------------------------------------------------- collapse
def test_effective_rank_of_known_matrices():
    # singular values (3, 1, 0): p = (0.75, 0.25), H = -(0.75 ln 0.75 + 0.25 ln 0.25)
    matrix = torch.diag(torch.tensor([3.0, 1.0, 0.0]))
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert diagnostics.effective_rank(matrix) == pytest.approx(math.exp(entropy), rel=1e-9)
    assert diagnostics.effective_rank(torch.eye(5)) == pytest.approx(5.0)
    rank_one = torch.outer(torch.arange(1.0, 7.0), torch.tensor([1.0, -2.0, 0.5]))
    assert diagnostics.effective_rank(rank_one) == pytest.approx(1.0, abs=1e-6)
    # invariant to rotations and to the overall scale
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    assert diagnostics.effective_rank(7.0 * matrix.double() @ rotation) == pytest.approx(math.exp(entropy))
    assert diagnostics.effective_rank(torch.zeros(4, 3)) == 0.0
    with pytest.raises(ValueError, match="features"):
        diagnostics.effective_rank(torch.zeros(4))


def test_uniformity_of_known_points():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # orthogonal unit vectors: ||x - y||² = 2, so log exp(-2·2) = -4; the scale of a row does not matter
    assert diagnostics.uniformity(torch.stack([e1, 5 * e2])) == pytest.approx(-4.0)
    # pairs of (e1, e2, e1): distances² 2, 0, 2
    expected = math.log((math.exp(-4) + 1 + math.exp(-4)) / 3)
    assert diagnostics.uniformity(torch.stack([e1, e2, e1])) == pytest.approx(expected)
    # every point the same direction: collapse, uniformity 0
    assert diagnostics.uniformity(torch.ones(4, 3)) == pytest.approx(0.0)
    # t changes the scale of the exponent
    assert diagnostics.uniformity(torch.stack([e1, -e1]), t=0.5) == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="N >= 2"):
        diagnostics.uniformity(torch.ones(1, 3))


def test_mean_pairwise_cosine_of_known_points():
    points = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])  # cosines 0, 1/√2, 1/√2
    assert diagnostics.mean_pairwise_cosine(points) == pytest.approx(math.sqrt(2) / 3)
    assert diagnostics.mean_pairwise_cosine(torch.ones(5, 4)) == pytest.approx(1.0)
    assert diagnostics.mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-1.0)
    cosines = diagnostics.pairwise_cosines(points)
    assert sorted(cosines) == pytest.approx([0.0, 1 / math.sqrt(2), 1 / math.sqrt(2)])


def test_representation_stats_flattens_gram_matrices():
    grams = torch.randn(6, 4, 4)
    stats = diagnostics.representation_stats(grams)
    assert stats["dim"] == 16 and stats["num_images"] == 6
    assert stats["effective_rank"] == pytest.approx(diagnostics.effective_rank(grams.reshape(6, 16)))


# ---------------------------------------------------------------------------------------------- gradients
def _pretraining_model(**overrides):
    torch.manual_seed(0)
    config = tiny_config(drop_path_rate=0.0, **overrides)
    return ArtStyleForPretraining(config)


def test_gradient_norms_zero_for_an_off_term_and_queue_untouched():
    model = _pretraining_model(weight_gram=0.0, weight_layerwise=1.0, weight_distill=1.0)
    views = torch.randn(2, 6, 3, 32, 32)
    queue = model.queue.clone()
    result = diagnostics.loss_gradient_norms(model, views[0], views[1])
    assert result["norms"]["gram"] == [0.0, 0.0] and result["total"]["gram"] == 0.0
    assert result["cosine_with_contrastive"]["gram"] is None
    for term in ("contrastive", "layerwise", "distill"):
        assert all(value > 0 for value in result["norms"][term]), term
        # the whole-backbone norm is the root of the sum of squared block norms
        assert result["total"][term] == pytest.approx(math.sqrt(sum(v * v for v in result["norms"][term])))
    assert result["cosine_with_contrastive"]["contrastive"] == pytest.approx(1.0)
    assert torch.equal(model.queue, queue) and int(model.queue_ptr) == 0
    assert all(p.grad is None for p in model.parameters())  # autograd.grad does not accumulate into .grad


def test_gradient_norms_match_a_manual_backward_and_scale_with_the_weight():
    views = torch.randn(2, 6, 3, 32, 32)
    model = _pretraining_model(weight_layerwise=1.0)
    result = diagnostics.loss_gradient_norms(model, views[0], views[1])

    # hand computation: backward of the weighted layer-wise loss only, block 0's gradient norm
    reference = _pretraining_model(weight_layerwise=1.0)
    reference.train()
    output = reference(views[0], views[1], momentum=None)
    (reference.config.weight_layerwise * output.loss_layerwise).backward()
    block0 = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in reference.artstyle.backbone.blocks[0].parameters()
                            if p.grad is not None))
    assert result["norms"]["layerwise"][0] == pytest.approx(float(block0), rel=1e-5)

    doubled = diagnostics.loss_gradient_norms(_pretraining_model(weight_layerwise=2.0), views[0], views[1])
    assert np.allclose(doubled["norms"]["layerwise"], 2 * np.asarray(result["norms"]["layerwise"]), rtol=1e-5)
    assert np.allclose(doubled["norms"]["contrastive"], result["norms"]["contrastive"], rtol=1e-5)

    averaged = diagnostics.mean_gradient_norms([result, doubled])
    assert averaged["norms"]["layerwise"][1] == pytest.approx(1.5 * result["norms"]["layerwise"][1], rel=1e-5)
    with pytest.raises(ValueError, match="empty"):
        diagnostics.mean_gradient_norms([])


# ---------------------------------------------------------------------------------------------- probes, fusion
def test_block_linear_probe_separable_and_constant_features():
    train_y = torch.tensor([0] * 6 + [1] * 4)
    test_y = torch.tensor([0, 1, 1, 1])
    separable = [torch.nn.functional.one_hot(train_y, 2).float() * 3, torch.zeros(10, 3)]
    held_out = [torch.nn.functional.one_hot(test_y, 2).float() * 3, torch.zeros(4, 3)]
    accuracies = diagnostics.block_linear_probe(separable, train_y, held_out, test_y)
    # constant features: the probe predicts the majority train class (0) -> 1 of 4 right
    assert accuracies == [1.0, 0.25]
    with pytest.raises(ValueError, match="feature sets"):
        diagnostics.block_linear_probe(separable, train_y, held_out[:1], test_y)


def test_encoder_outputs_and_fusion_summary():
    model = _pretraining_model(weight_layerwise=1.0, pooler="fused")
    encoder = model.artstyle
    images = torch.randn(5, 3, 32, 32)
    loader = [{"pixel_values": images[:3], "labels": torch.tensor([0, 1, 0])},
              None, {"pixel_values": images[3:], "labels": torch.tensor([1, 1])}]
    outputs = diagnostics.encoder_outputs(encoder, loader)
    assert outputs["block_cls"].shape == (2, 5, encoder.hidden_size)
    assert outputs["labels"].tolist() == [0, 1, 0, 1, 1]
    with torch.no_grad():
        direct = encoder.encode(images, output_hidden_states=True).output
    assert torch.allclose(outputs["block_cls"][1], direct.hidden_states[1][:, 0], atol=1e-5)
    # patch-token energy: mean over the patch tokens (not the CLS) of each squared feature, by hand
    assert outputs["block_token_energy"].shape == (2, 5, encoder.hidden_size)
    tokens = direct.hidden_states[0][:, 1:]  # 16 patch tokens of 8 px on 32 px images, after the CLS
    assert tokens.shape[1] == 16
    hand = torch.stack([torch.stack([sum(t[d] ** 2 for t in image) / 16 for d in range(tokens.shape[2])])
                        for image in tokens])
    assert torch.allclose(outputs["block_token_energy"][0], hand, atol=1e-5)
    summary = diagnostics.fusion_attention_summary(outputs, model.config.resolved_fusion_layers())
    assert np.allclose(summary["cross_layer"], direct.fusion_weights.mean(dim=0).numpy(), atol=1e-5)
    assert np.allclose(np.sum(summary["cross_layer"], axis=1), 1.0, atol=1e-5)  # softmax rows
    assert summary["uniform_entropy"] == pytest.approx(math.log(2))
    assert 0 <= summary["pool_entropy"] <= math.log(2) + 1e-6

    hand = {"fusion_weights": torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]]),
            "fusion_pool_weights": torch.tensor([[0.5, 0.5], [0.5, 0.5]])}
    summary = diagnostics.fusion_attention_summary(hand, [0, 1])
    assert summary["cross_layer"] == [[0.5, 0.5], [0.5, 0.5]]
    assert summary["pool_entropy"] == pytest.approx(math.log(2))
    assert diagnostics.fusion_attention_summary({"fusion_weights": None}, [0, 1]) is None


def test_cls_pooler_is_the_normalised_last_block_cls():
    model = _pretraining_model(pooler="cls")
    outputs = diagnostics.encoder_outputs(model.artstyle, [{"pixel_values": torch.randn(4, 3, 32, 32)}])
    assert outputs["labels"] is None
    with torch.no_grad():
        normed = model.artstyle.backbone.norm(outputs["block_cls"][-1])
    assert torch.allclose(normed, outputs["pooler"], atol=1e-5)


# ---------------------------------------------------------------------------------------------- the script
def _load_diagnose():
    spec = importlib.util.spec_from_file_location("bench_diagnose", BENCHMARKS / "diagnose.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_diagnose_script_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("dots", "stripes"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            if label == "stripes":
                pixels[::4] = 0
            Image.fromarray(pixels).save(tmp_path / "data" / label / f"{i}.png")
    diagnose = _load_diagnose()
    overrides = json.dumps(dict(backbone_depth=2, image_size=32, patch_size=8, queue_size=24, projection_dim=32,
                                projection_hidden_dim=64, layer_head_dim=32, distill_hidden_dim=32, gram_dim=8,
                                pooler="fused"))
    out = tmp_path / "out"
    code = diagnose.main(["--model_name_or_path", "none", "--config_overrides", overrides,
                          "--dataset", "imagefolder", "--data_dir", str(tmp_path / "data"), "--test_size", "0.25",
                          "--max_train_images", "12", "--max_eval_images", "4", "--grad_batches", "1",
                          "--grad_batch_size", "4", "--batch_size", "8", "--output_dir", str(out)])
    assert code == 0
    result = json.loads((out / "diagnostics.json").read_text())
    assert result["eval_split"] == "validation"
    assert len(result["block_probe"]["block_cls_acc"]) == 2
    assert len(result["block_probe"]["block_token_energy_acc"]) == 2
    assert result["block_probe"]["chance"] == 0.5
    assert set(result["collapse"]) == {"pooler", "last_block_cls", "gram"}
    assert len(result["gradient_norms"]["norms"]["gram"]) == 2
    for name in ("grad_norms", "block_probe", "collapse", "gram_stats", "fusion_attention"):
        assert (out / f"{name}.png").stat().st_size > 1000, name


def test_diagnose_rejects_bad_arguments(tmp_path):
    diagnose = _load_diagnose()
    with pytest.raises(SystemExit):
        diagnose.parse_args(["--model_name_or_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        diagnose.parse_args(["--model_name_or_path", "none", "--output_dir", str(tmp_path), "--max_eval_images",
                             "1"])
