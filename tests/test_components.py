"""Each paper component alone, against a small hand-written reference (docs/method.md)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from artstyle import ArtStyleForPretraining
from artstyle.distillation import MultiLayerSelfDistillation
from artstyle.gram import GramContrastiveLoss, GramMSELoss, LearnableGram
from artstyle.layer_fusion import AttentionLayerFusion, LayerwiseContrast
from artstyle.soft_contrast import KeyQueue

from conftest import tiny_config


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _infonce(q, k, tau, offset=0):
    log_prob = _log_softmax(q @ k.T / tau)
    return float(-np.mean([log_prob[i, offset + i] for i in range(len(q))]))


def _unit(*shape, seed):
    x = np.random.default_rng(seed).normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------- soft contrast queue
def test_key_queue_is_a_fifo_ring_with_wrap_around_and_more_keys_than_slots():
    queue = KeyQueue(size=6, dim=3)
    assert torch.allclose(queue.queue.norm(dim=1), torch.ones(6))  # random unit keys at start
    reference = [None] * 6  # slot → id of the key written there, by a plain one-at-a-time FIFO
    pointer, next_id = 0, 0
    for count in (4, 4, 1, 9, 2):  # wraps after 6, then more keys (9) than slots
        keys = torch.arange(next_id, next_id + count, dtype=torch.float32)[:, None].repeat(1, 3)
        queue.enqueue(keys)
        for key_id in range(next_id, next_id + count):
            reference[pointer] = key_id
            pointer = (pointer + 1) % 6
        next_id += count
        assert int(queue.queue_ptr) == pointer
        assert queue.queue[:, 0].tolist() == [float(r) if r is not None else queue.queue[i, 0].item()
                                              for i, r in enumerate(reference)]
    assert sorted(queue.queue[:, 0].tolist()) == [float(i) for i in range(next_id - 6, next_id)]  # the newest 6
    assert not queue.negatives().requires_grad and queue.negatives().data_ptr() != queue.queue.data_ptr()
    with pytest.raises(ValueError, match="size"):
        KeyQueue(size=0, dim=3)


def test_pretraining_model_queue_buffers_keep_the_checkpoint_names():
    model = ArtStyleForPretraining(tiny_config(queue_size=24))
    names = dict(model.named_buffers())
    assert names["queue"].shape == (24, 32) and names["queue_ptr"].shape == ()


# ---------------------------------------------------------------------------------------------- learnable Gram
def test_learnable_gram_matches_the_equation():
    torch.manual_seed(0)
    module = LearnableGram(dim=5, gram_dim=3, style_dim=4)
    tokens = torch.randn(2, 7, 5)
    gram, style = module(tokens)
    wa, wb = module.proj_a.weight.detach().numpy(), module.proj_b.weight.detach().numpy()
    for b in range(2):
        p = tokens[b].numpy().astype(np.float64)
        g = (p @ wa.T).T @ (p @ wb.T) / 7  # Aᵀ·B / N
        g = np.sign(g) * np.sqrt(np.abs(g) + 1e-12)
        g = g / np.linalg.norm(g)
        np.testing.assert_allclose(gram[b].detach().numpy(), g, rtol=1e-5, atol=1e-6)
        s = module.style_proj.weight.detach().numpy() @ g.reshape(-1) + module.style_proj.bias.detach().numpy()
        np.testing.assert_allclose(style[b].detach().numpy(), s, rtol=1e-5, atol=1e-6)


def test_gram_loss_is_frobenius_squared_averaged_over_the_batch_and_stops_teacher_gradient():
    student = torch.randn(3, 4, 4, requires_grad=True)
    teacher = torch.randn(3, 4, 4, requires_grad=True)
    loss = GramMSELoss()(student, teacher)
    expected = np.mean([((student[b] - teacher[b]).detach().numpy() ** 2).sum() for b in range(3)])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert teacher.grad is None and student.grad is not None


@pytest.mark.parametrize("offset", [0, 2])
def test_gram_contrastive_loss_is_infonce_over_flattened_grams_with_the_rank_offset(offset):
    student = F.normalize(torch.randn(3, 16), dim=1).view(3, 4, 4).requires_grad_(True)
    teacher = F.normalize(torch.randn(6, 16), dim=1).view(6, 4, 4).requires_grad_(True)  # 2 processes' batches
    loss = GramContrastiveLoss(0.3)(student, teacher, offset)
    q, k = student.detach().flatten(1).double().numpy(), teacher.detach().flatten(1).double().numpy()
    logits = q @ k.T / 0.3
    log_prob = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert loss.item() == pytest.approx(-np.mean([log_prob[i, offset + i] for i in range(3)]), rel=1e-5)
    loss.backward()
    assert teacher.grad is None and student.grad is not None


def test_gram_mse_rewards_a_constant_gram_and_the_contrastive_gram_loss_does_not():
    """The collapse the InfoNCE variant exists for: every image with the same Gram matrix is the MSE's minimum
    (0), while InfoNCE gives it log(M) — no better than chance — and a spread-out batch scores far lower."""
    constant = F.normalize(torch.ones(4, 9), dim=1).view(4, 3, 3)
    assert GramMSELoss()(constant, constant).item() == pytest.approx(0.0, abs=1e-7)
    assert GramContrastiveLoss(0.1)(constant, constant).item() == pytest.approx(math.log(4), rel=1e-5)
    spread = torch.eye(9)[:4].view(4, 3, 3)  # orthogonal Gram vectors
    assert GramContrastiveLoss(0.1)(spread, spread).item() < 0.01


def test_gram_loss_and_its_temperature_are_validated():
    with pytest.raises(ValueError, match="gram_loss"):
        tiny_config(gram_loss="l1")
    with pytest.raises(ValueError, match="tau_gram"):
        tiny_config(tau_gram=0.0)
    with pytest.raises(ValueError, match="temperature"):
        GramContrastiveLoss(-1.0)


# ---------------------------------------------------------------------------------------------- layer fusion
def _attention(query, key, value, mha):
    """Plain multi-head attention with the weights of ``mha`` (numpy, float64): output and head-averaged weights."""
    dim, heads = query.shape[-1], mha.num_heads
    w, b = mha.in_proj_weight.detach().double().numpy(), mha.in_proj_bias.detach().double().numpy()
    q, k, v = query @ w[:dim].T + b[:dim], key @ w[dim:2 * dim].T + b[dim:2 * dim], value @ w[2 * dim:].T + b[2 * dim:]
    split = dim // heads
    outs, weights = [], []
    for h in range(heads):
        part = slice(h * split, (h + 1) * split)
        logits = q[:, part] @ k[:, part].T / math.sqrt(split)
        attn = np.exp(_log_softmax(logits))
        outs.append(attn @ v[:, part])
        weights.append(attn)
    out = np.concatenate(outs, axis=-1) @ mha.out_proj.weight.detach().double().numpy().T
    return out + mha.out_proj.bias.detach().double().numpy(), np.mean(weights, axis=0)


def _layer_norm(x, weight, bias, eps=1e-6):
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return x * weight + bias


def test_attention_layer_fusion_is_residual_attention_across_layers_then_attention_pooling():
    torch.manual_seed(0)
    fusion = AttentionLayerFusion(num_layers=3, dim=8, num_heads=2, with_pooling=True).eval()
    with torch.no_grad():
        for p in fusion.parameters():
            p.normal_(0, 0.5)  # away from the identity-like initialisation
    tokens = torch.randn(2, 3, 8)
    with torch.no_grad():
        fused, layer_weights, pooled, pool_weights = fusion(tokens)
    param = {name: p.detach().double().numpy() for name, p in fusion.named_parameters()}
    for b in range(2):
        x = _layer_norm(tokens[b].double().numpy(), param["input_norm.weight"], param["input_norm.bias"])
        x = x + param["layer_embedding"][0]
        attended, weights = _attention(x, x, x, fusion.attention)
        expected = _layer_norm(x + attended, param["output_norm.weight"], param["output_norm.bias"])  # residual
        np.testing.assert_allclose(fused[b].numpy(), expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer_weights[b].numpy(), weights, rtol=1e-4, atol=1e-6)
        pooled_ref, pooled_weights = _attention(param["pool_query"][0], expected, expected, fusion.pool_attention)
        pooled_ref = _layer_norm(pooled_ref[0], param["pool_norm.weight"], param["pool_norm.bias"])
        np.testing.assert_allclose(pooled[b].numpy(), pooled_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(pool_weights[b].numpy(), pooled_weights[0], rtol=1e-4, atol=1e-6)


def test_layerwise_contrast_is_one_infonce_per_layer_averaged():
    torch.manual_seed(0)
    head = LayerwiseContrast(num_layers=3, dim=6, hidden_dim=5, out_dim=4, temperature=0.2)
    fused = torch.randn(5, 3, 6)  # [B, L, D]
    embedded = head.embed(fused)
    assert embedded.shape == (3, 5, 4) and embedded.dtype == torch.float32
    for layer in range(3):  # embed = normalize(g_l(F_l)), layer l through its own MLP
        w1, b1 = head.weight1[layer].detach(), head.bias1[layer].detach()
        w2, b2 = head.weight2[layer].detach(), head.bias2[layer].detach()
        expected = F.normalize(F.gelu(fused[:, layer] @ w1 + b1) @ w2 + b2, dim=-1)
        torch.testing.assert_close(embedded[layer].detach(), expected, rtol=1e-5, atol=1e-6)
    student, teacher = _unit(3, 5, 4, seed=1), _unit(3, 5, 4, seed=2)
    loss = head.loss(torch.tensor(student), torch.tensor(teacher))
    expected = np.mean([_infonce(student[layer], teacher[layer], 0.2) for layer in range(3)])
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------- distillation
def test_distillation_predicts_the_teacher_key_of_the_other_view_from_every_layer():
    predictions, keys = _unit(2, 4, 6, seed=3), _unit(9, 6, seed=4)  # keys gathered from 3 "processes"
    distillation = MultiLayerSelfDistillation(layers=[0, 2], temperature=0.2)
    loss = distillation.loss(torch.tensor(predictions), torch.tensor(keys), offset=3)
    expected = np.mean([_infonce(predictions[layer], keys, 0.2, offset=3) for layer in range(2)])
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_pretraining_distillation_term_uses_the_cross_view_teacher_keys():
    model = ArtStyleForPretraining(tiny_config(distill_layers=[0, 1])).eval()  # eval: BN running stats, no enqueue
    x1, x2 = torch.randn(2, 4, 3, 32, 32)

    def prediction(x):
        layer_cls = model.artstyle.encode(x, extra_layers=(0, 1)).layer_cls
        return model.distillation(layer_cls, model.distill_projector, model.distill_predictor).numpy()

    def teacher_key(x):
        cls = model.teacher["artstyle"](x).last_hidden_state[:, 0]  # the projector reads the CLS (any read-out)
        return F.normalize(model.teacher["projector"](cls), dim=-1).numpy()

    with torch.no_grad():
        out = model(x1, x2)
        pairs = [(prediction(x1), teacher_key(x2)), (prediction(x2), teacher_key(x1))]  # student view, other view
    expected = [np.mean([_infonce(d[layer], p, 0.2) for layer in range(2)]) for d, p in pairs]
    assert out.loss_distill.item() == pytest.approx(np.mean(expected), rel=1e-5)
