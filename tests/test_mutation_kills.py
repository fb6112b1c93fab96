"""Tests that kill surviving mutants of the mutation run (docs/testing.md, "Mutation testing").

Each test names the mutant(s) it kills; the survivors judged harmless are explained in docs/testing.md instead.
"""

from unittest import mock

import numpy as np
import pytest
import torch

from artstyle import ArtStyleForPretraining
from artstyle.layer_fusion import LayerwiseContrast
from artstyle.soft_contrast import KeyQueue

from conftest import tiny_config


def _perturbed_pretraining_model():
    model = ArtStyleForPretraining(tiny_config()).train()
    with torch.no_grad():
        for p in model.teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


# ---------------------------------------------------------------------------------------------- teacher EMA
@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_update_teacher_accepts_the_bounds_momentum_0_copies_student_and_1_freezes_teacher(momentum):
    # hand mutation of update_teacher (decorated, so mutmut skips it): `0 <= m <= 1` → `0 < m` / `m < 1`.
    # The cosine momentum schedule ends at exactly 1.0: rejecting it would crash the last step of every run.
    model = _perturbed_pretraining_model()
    students = dict(model.named_parameters())
    teacher_old = {n: p.detach().clone() for n, p in model.teacher.named_parameters()}
    model.update_teacher(momentum)
    for name, param in model.teacher.named_parameters():
        expected = teacher_old[name] if momentum == 1.0 else students[name]
        assert torch.equal(param, expected), name


@pytest.mark.parametrize("momentum", [-0.01, 1.01])
def test_update_teacher_rejects_momentum_outside_0_1(momentum):
    model = ArtStyleForPretraining(tiny_config())
    with pytest.raises(ValueError, match="`momentum` must lie in \\[0, 1\\]"):
        model.update_teacher(momentum)


# ---------------------------------------------------------------------------------------------- key queue
def test_key_queue_of_one_slot_keeps_the_newest_key_and_its_pointer_is_a_long_index():
    # kills soft_contrast.xǁKeyQueueǁ__init____mutmut_1/_2 (`size < 1` → `size <= 1` / `size < 2`: a one-slot queue is
    # valid) and _26/_28 (`queue_ptr` dtype long → float: the checkpoint buffer must match the model's `queue_ptr`)
    queue = KeyQueue(size=1, dim=4)
    assert queue.queue.shape == (1, 4)
    assert queue.queue_ptr.dtype == torch.long and queue.queue_ptr.shape == ()
    assert queue.queue_ptr.dtype == ArtStyleForPretraining(tiny_config()).queue_ptr.dtype
    keys = torch.arange(12, dtype=torch.float32).view(3, 4)
    queue.enqueue(keys)
    assert torch.equal(queue.queue, keys[-1:]) and int(queue.queue_ptr) == 0


# ---------------------------------------------------------------------------------------------- layer-wise contrast
def _unit(*shape, seed):
    x = np.random.default_rng(seed).normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _infonce(q, k, tau, offset):
    logits = q @ k.T / tau
    logits = logits - logits.max(axis=1, keepdims=True)
    log_prob = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-np.mean([log_prob[i, offset + i] for i in range(len(q))]))


def test_layerwise_contrast_positive_is_this_process_rows_of_the_gathered_teacher_tokens():
    # kills layer_fusion.xǁLayerwiseContrastǁloss__mutmut_14 (the gather offset dropped: on process r > 0 of a
    # multi-process run every positive would be another image's token). Process 1 of 3, uneven batches (4, 3, 2).
    head = LayerwiseContrast(num_layers=2, dim=6, hidden_dim=5, out_dim=4, temperature=0.2)
    student, teacher = _unit(2, 3, 4, seed=1), _unit(2, 3, 4, seed=2)  # [L, B, P] of this process
    before, after = _unit(4, 2, 4, seed=3), _unit(2, 2, 4, seed=4)  # [B_r, L, P] of processes 0 and 2
    gathered = np.concatenate([before, teacher.transpose(1, 0, 2), after])  # [M, L, P], rank order

    def fake_gather(tensor):
        assert np.allclose(tensor.numpy(), teacher.transpose(1, 0, 2))  # the teacher tokens of this process
        return torch.tensor(gathered), 4

    with mock.patch("artstyle.layer_fusion.gather_from_all", fake_gather):
        loss = head.loss(torch.tensor(student), torch.tensor(teacher))
    keys = gathered.transpose(1, 0, 2)  # [L, M, P]
    expected = np.mean([_infonce(student[layer], keys[layer], 0.2, offset=4) for layer in range(2)])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert abs(np.mean([_infonce(student[la], keys[la], 0.2, offset=0) for la in range(2)]) - expected) > 1e-2
