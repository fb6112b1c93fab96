"""Losses against small hand-written numpy references."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from artstyle.fusion import LearnableGram
from artstyle.losses import GramMSELoss, InfoNCELoss, SoftContrastiveLoss, gather_from_all


def _unit(rows, dim, seed):
    x = np.random.default_rng(seed).normal(size=(rows, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _softmax(x):
    return np.exp(_log_softmax(x))


def reference_soft(q, p, queue, tau_s, tau_t, alpha, mode):
    """Plain loop version of the soft contrast equation (docs/method.md)."""
    losses = []
    for i in range(len(q)):
        logits = np.concatenate([[q[i] @ p[i]], queue @ q[i]]) / tau_s
        neighbours = _softmax((queue @ p[i])[None] / tau_t)[0]
        if mode == "ascl":
            entropy = -(neighbours * np.log(neighbours)).sum()
            neighbours = neighbours * (1 - entropy / math.log(len(queue)))
        target = np.concatenate([[alpha], (1 - alpha) * neighbours])
        target = target / target.sum()
        losses.append(-(target * _log_softmax(logits[None])[0]).sum())
    return float(np.mean(losses))


def reference_infonce(q, k, tau, offset=0):
    logits = q @ k.T / tau
    log_prob = _log_softmax(logits)
    return float(-np.mean([log_prob[i, offset + i] for i in range(len(q))]))


@pytest.mark.parametrize("mode", ["soft", "ascl"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_soft_contrastive_matches_reference(mode, alpha):
    q, p, queue = _unit(5, 8, 0), _unit(5, 8, 1), _unit(7, 8, 2)
    loss = SoftContrastiveLoss(0.2, 0.1, alpha, mode)(*(torch.tensor(a) for a in (q, p)), negatives=torch.tensor(queue))
    assert loss.item() == pytest.approx(reference_soft(q, p, queue, 0.2, 0.1, alpha, mode), rel=1e-5)


def test_soft_alpha_one_is_infonce_with_queue():
    q, p, queue = _unit(4, 6, 3), _unit(4, 6, 4), _unit(9, 6, 5)
    loss = SoftContrastiveLoss(0.2, 0.1, 1.0)(torch.tensor(q), torch.tensor(p), negatives=torch.tensor(queue))
    logits = np.concatenate([(q * p).sum(1, keepdims=True), q @ queue.T], axis=1) / 0.2
    expected = -_log_softmax(logits)[:, 0].mean()
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_soft_contrastive_without_queue_uses_in_batch_keys():
    q, p = _unit(6, 5, 6), _unit(6, 5, 7)
    loss = SoftContrastiveLoss(0.2, 0.1, 1.0)(torch.tensor(q), torch.tensor(p), negatives=None)
    assert loss.item() == pytest.approx(reference_infonce(q, p, 0.2), rel=1e-6)
    # soft in-batch: the own key is the positive, the other keys are the neighbours
    soft = SoftContrastiveLoss(0.2, 0.1, 0.5)(torch.tensor(q), torch.tensor(p), negatives=None).item()
    losses = []
    for i in range(6):
        others = np.delete(np.arange(6), i)
        neighbours = _softmax((p[others] @ p[i])[None] / 0.1)[0]
        target = np.zeros(6)
        target[i] = 0.5
        target[others] = 0.5 * neighbours
        losses.append(-(target * _log_softmax((q[i] @ p.T)[None] / 0.2)[0]).sum())
    assert soft == pytest.approx(np.mean(losses), rel=1e-5)


def test_infonce_single_and_per_layer():
    q, k = _unit(4, 8, 8), _unit(10, 8, 9)
    loss = InfoNCELoss(0.3)(torch.tensor(q), torch.tensor(k), offset=3)
    assert loss.item() == pytest.approx(reference_infonce(q, k, 0.3, offset=3), rel=1e-6)
    ql = np.stack([_unit(4, 8, 10 + i) for i in range(3)])
    kl = np.stack([_unit(4, 8, 20 + i) for i in range(3)])
    layered = InfoNCELoss(0.3)(torch.tensor(ql), torch.tensor(kl)).item()
    assert layered == pytest.approx(np.mean([reference_infonce(ql[i], kl[i], 0.3) for i in range(3)]), rel=1e-6)
    # distillation: per-layer queries against ONE set of teacher keys (broadcast)
    distill = InfoNCELoss(0.2)(torch.tensor(ql), torch.tensor(k[:4])).item()
    assert distill == pytest.approx(np.mean([reference_infonce(ql[i], k[:4], 0.2) for i in range(3)]), rel=1e-6)


def test_gram_matches_numpy_and_mse():
    torch.manual_seed(0)
    module = LearnableGram(dim=6, gram_dim=3, style_dim=None)
    tokens = torch.randn(2, 5, 6)
    gram, style = module(tokens)
    assert style is None and gram.shape == (2, 3, 3)
    wa, wb, x = module.proj_a.weight.detach().numpy(), module.proj_b.weight.detach().numpy(), tokens.numpy()
    for b in range(2):
        a_, b_ = x[b] @ wa.T, x[b] @ wb.T
        g = a_.T @ b_ / 5
        g = np.sign(g) * np.sqrt(np.abs(g))
        g = g / np.linalg.norm(g)
        np.testing.assert_allclose(gram[b].detach().numpy(), g, rtol=1e-4, atol=1e-6)
    other = torch.randn(2, 3, 3)
    expected = ((gram.detach().numpy() - other.numpy()) ** 2).reshape(2, -1).sum(1).mean()
    assert GramMSELoss()(gram, other).item() == pytest.approx(expected, rel=1e-5)
    # stop-gradient on the teacher side
    teacher = other.clone().requires_grad_(True)
    GramMSELoss()(gram, teacher).backward()
    assert teacher.grad is None and module.proj_a.weight.grad is not None


def test_losses_are_float32_under_bfloat16_inputs():
    q = F.normalize(torch.randn(4, 8), dim=1).bfloat16()
    p = F.normalize(torch.randn(4, 8), dim=1).bfloat16()
    assert SoftContrastiveLoss(0.2, 0.05, 0.5)(q, p, negatives=p.clone()).dtype == torch.float32
    assert InfoNCELoss(0.05)(q, p).dtype == torch.float32


def test_gather_single_process_is_identity():
    x = torch.randn(3, 4)
    gathered, offset = gather_from_all(x)
    assert gathered is x and offset == 0


def test_bad_loss_settings_raise_in_init():
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(0)
    with pytest.raises(ValueError, match="alpha"):
        SoftContrastiveLoss(0.2, 0.1, 2.0)
    with pytest.raises(ValueError, match="mode"):
        SoftContrastiveLoss(0.2, 0.1, 0.5, mode="x")


@pytest.mark.parametrize("mode", ["soft", "ascl"])
def test_soft_target_with_a_single_in_batch_key_is_finite_and_equals_infonce(mode):
    # one process, batch of 1, no queue: once the positive is masked, the teacher softmax has no neighbour left
    q = torch.nn.functional.normalize(torch.randn(1, 8), dim=1)
    p = torch.nn.functional.normalize(torch.randn(1, 8), dim=1)
    soft = SoftContrastiveLoss(0.2, 0.1, alpha=0.5, mode=mode)(q, p)
    assert torch.isfinite(soft)
    assert soft.item() == pytest.approx(SoftContrastiveLoss(0.2, 0.1, alpha=1.0)(q, p).item())
