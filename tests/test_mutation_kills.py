"""Tests that kill surviving mutants of the mutation run (docs/testing.md, "Mutation testing").

Each test names the mutant(s) it kills; the survivors judged harmless are explained in docs/testing.md instead.
"""

from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from artstyle import ArtStyleForPretraining
from artstyle.layer_fusion import LayerwiseContrast
from artstyle.soft_contrast import KeyQueue, SoftContrastiveLoss

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
    # `momentum_schedule` allows base/final in [0, 1] (1.0 = frozen teacher): rejecting a bound would crash such a run.
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


# ---------------------------------------------------------------------------------------------- distillation wiring
def test_distillation_of_blocks_outside_the_fusion_and_gram_layers_reads_their_own_cls_tokens():
    # kills modeling_artstyle.xǁArtStyleForPretrainingǁ_view__mutmut_15/_16 (the student encodes without the distilled
    # blocks as extra layers): with distill_layers ⊆ fusion_layers (every other test) the CLS tokens are there anyway
    config = tiny_config(backbone_depth=4, fusion_layers=[2, 3], gram_layer=3, distill_layers=[0, 1])
    model = ArtStyleForPretraining(config).eval()  # eval: BN running stats, no enqueue
    x1, x2 = torch.randn(2, 3, 3, 32, 32)

    def prediction(x):  # CLS token of blocks 0 and 1 through the distillation heads, from the hidden states
        hidden = model.artstyle(x, output_hidden_states=True).hidden_states
        tokens = torch.stack([hidden[0][:, 0], hidden[1][:, 0]])
        return F.normalize(model.distill_predictor(model.distill_projector(tokens)), dim=-1).numpy()

    def teacher_key(x):
        cls = model.teacher["artstyle"](x).last_hidden_state[:, 0]  # the projector reads the CLS (any read-out)
        return F.normalize(model.teacher["projector"](cls), dim=-1).numpy()

    with torch.no_grad():
        out = model(x1, x2)
        pairs = [(prediction(x1), teacher_key(x2)), (prediction(x2), teacher_key(x1))]
    expected = [np.mean([_infonce(d[layer], p, config.tau_distill, 0) for layer in range(2)]) for d, p in pairs]
    assert out.loss_distill.item() == pytest.approx(np.mean(expected), rel=1e-4)


def test_distillation_alone_without_the_contrastive_term_still_gets_teacher_keys():
    # kills modeling_artstyle.xǁArtStyleForPretrainingǁ_view__mutmut_26 (`weight_distill > 0` → `> 1`: with the
    # contrastive term off and a distillation weight ≤ 1 the teacher would compute no key for the distillation target)
    config = tiny_config(weight_contrastive=0.0, weight_layerwise=0.0, weight_gram=0.0, weight_distill=0.5)
    model = ArtStyleForPretraining(config).eval()
    x1, x2 = torch.randn(2, 3, 3, 32, 32)

    def prediction(x):
        layer_cls = model.artstyle.encode(x, extra_layers=tuple(model.distill_layers)).layer_cls
        return model.distillation(layer_cls, model.distill_projector, model.distill_predictor).numpy()

    def teacher_key(x):
        cls = model.teacher["artstyle"](x).last_hidden_state[:, 0]  # the projector reads the CLS (any read-out)
        return F.normalize(model.teacher["projector"](cls), dim=-1).numpy()

    with torch.no_grad():
        out = model(x1, x2)
        pairs = [(prediction(x1), teacher_key(x2)), (prediction(x2), teacher_key(x1))]
    layers = len(model.distill_layers)
    expected = np.mean([np.mean([_infonce(d[la], p, config.tau_distill, 0) for la in range(layers)]) for d, p in pairs])
    assert out.loss_distill.item() == pytest.approx(expected, rel=1e-4)
    assert out.loss.item() == pytest.approx(0.5 * expected, rel=1e-4) and out.loss_contrastive.item() == 0.0


def test_without_contrastive_and_distillation_terms_no_projector_runs_and_no_projector_bn_statistics_move():
    # kills modeling_artstyle.xǁArtStyleForPretrainingǁ_view__mutmut_22/_24/_25, forward__mutmut_49/_100 (`> 0` →
    # `>= 0`, `and` → `or`): the MoCo projector/predictor of the student and
    # the teacher would run for nothing, and in training mode their BatchNorm running statistics would drift
    config = tiny_config(weight_contrastive=0.0, weight_distill=0.0, weight_layerwise=0.5, weight_gram=1.0)
    model = ArtStyleForPretraining(config).train()
    calls = []
    for name in ("projector", "predictor"):
        getattr(model, name).register_forward_hook(lambda *_, n=name: calls.append(n))
    model.teacher["projector"].register_forward_hook(lambda *_: calls.append("teacher.projector"))
    heads = ("projector.", "predictor.", "teacher.projector.")
    buffers = {n: b.clone() for n, b in model.named_buffers() if n.startswith(heads)}
    assert any(n.endswith("running_mean") for n in buffers)
    # no key to gather either (kills forward__mutmut_24: `gather_from_all(None)` fails on more than one process);
    # the Gram InfoNCE (the default gram_loss) gathers the teacher Gram matrices, which is right

    def gather_no_none(tensor):
        if tensor is None:
            raise AssertionError("gathered None")
        return tensor, 0

    with mock.patch("artstyle.modeling_artstyle.gather_from_all", side_effect=gather_no_none):
        out = model(*torch.randn(2, 4, 3, 32, 32), momentum=0.99)
    assert calls == []
    assert all(torch.equal(b, dict(model.named_buffers())[n]) for n, b in buffers.items())
    assert out.loss_contrastive.item() == 0.0 and out.loss_distill.item() == 0.0 and out.loss.item() > 0


# ---------------------------------------------------------------------------------------------- soft contrast loss
def _soft_contrast_with_queue_reference(q, p, negatives, tau_s, tau_t, alpha, mode):
    """Row by row in numpy: logits [q·p, q·n_k]/τ_s, target α·onehot + (1-α)·w·softmax_k(p·n_k/τ_t), L1-normalised."""
    total = 0.0
    for qi, pi in zip(q, p):
        logits = np.concatenate([[qi @ pi], negatives @ qi]) / tau_s
        log_prob = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
        sim = negatives @ pi / tau_t
        neighbours = np.exp(sim - sim.max()) / np.exp(sim - sim.max()).sum()
        if mode == "ascl":
            entropy = -(neighbours * np.log(neighbours)).sum()
            neighbours = neighbours * (1.0 - entropy / np.log(len(negatives)))
        target = np.concatenate([[alpha], (1.0 - alpha) * neighbours])
        total += -(target / target.sum() * log_prob).sum()
    return total / len(q)


def test_ascl_confidence_with_a_queue_of_two_keys_is_normalised_by_log_2():
    # kills soft_contrast.xǁSoftContrastiveLossǁforward__mutmut_111 (`max(K, 2)` → `max(K, 3)`: the entropy of K = 2
    # neighbours would be divided by log 3, the ASCL confidence of a small queue too high)
    q, p, negatives = _unit(4, 8, seed=5), _unit(4, 8, seed=6), _unit(2, 8, seed=7)
    loss = SoftContrastiveLoss(0.2, 0.1, 0.3, mode="ascl")(torch.tensor(q), torch.tensor(p),
                                                          negatives=torch.tensor(negatives))
    assert loss.item() == pytest.approx(_soft_contrast_with_queue_reference(q, p, negatives, 0.2, 0.1, 0.3, "ascl"),
                                        rel=1e-5)


@pytest.mark.parametrize("mode", ["soft", "ascl"])
def test_alpha_one_with_a_single_in_batch_key_is_infonce_zero_not_nan(mode):
    # kills soft_contrast.xǁSoftContrastiveLossǁforward__mutmut_61 (`alpha == 1.0` → `== 2.0`: alpha = 1 would take the
    # soft-target path, whose neighbour softmax over an empty row is NaN, and NaN·0 = NaN: one sample, no queue)
    q = torch.tensor(_unit(1, 8, seed=8))
    loss = SoftContrastiveLoss(0.2, 0.1, 1.0, mode=mode)(q, q.clone())
    assert loss.item() == 0.0


# ---------------------------------------------------------------------------------------------- error messages
def test_pretraining_forward_without_a_second_view_names_both_arguments():
    # kills modeling_artstyle.xǁArtStyleForPretrainingǁforward__mutmut_3/_4 (message text changed)
    model = ArtStyleForPretraining(tiny_config())
    message = "ArtStyleForPretraining needs two views: `pixel_values` and `pixel_values_2`"
    with pytest.raises(ValueError) as error:
        model(torch.randn(2, 3, 32, 32), None)
    assert str(error.value) == message


# ---------------------------------------------------------------------------------------------- distributed gather
def test_gather_from_all_on_rank_1_of_2_with_uneven_batches_puts_rank_0_rows_first():
    # hand mutation of gather_from_all (decorated, so mutmut skips it): `world == 1` → `world <= 2` (a 2-process run
    # would use only its own keys as negatives, and the offset of rank 1 would be 0). Rank 0 holds 5 rows, rank 1 3.
    from artstyle import losses

    rank0 = torch.arange(10, dtype=torch.float32).view(5, 2)
    own = -torch.arange(1, 7, dtype=torch.float32).view(3, 2)

    def fake_all_gather(outputs, tensor):
        if tensor.dtype == torch.long:  # the sizes
            outputs[0].copy_(torch.tensor([5])), outputs[1].copy_(tensor)
        else:  # the rows, padded to the largest batch
            assert tensor.shape == (5, 2) and torch.equal(tensor[:3], own) and not tensor[3:].any()
            outputs[0].copy_(rank0), outputs[1].copy_(tensor)

    with mock.patch.object(losses, "_world", return_value=(1, 2)), \
            mock.patch.object(losses.dist, "all_gather", fake_all_gather):
        gathered, offset = losses.gather_from_all(own)
    assert offset == 5 and torch.equal(gathered, torch.cat([rank0, own]))


# ---------------------------------------------------------------------------------------------- multi-process wiring
@pytest.mark.parametrize("mode", ["soft", "ascl"])
def test_in_batch_contrast_uses_the_keys_gathered_from_every_process_and_this_process_offset(mode):
    # kills modeling_artstyle.xǁArtStyleForPretrainingǁforward__mutmut_61/_66/_67 (the loss given `keys=None` or no
    # `offset`: equivalent on one process, but on rank 1 of 2 the negatives would be this process's keys only and the
    # positive of row i column i). Rank 0's keys are simulated; no queue (MoCo v3 in-batch negatives).
    config = tiny_config(queue_size=0, weight_layerwise=0.0, weight_distill=0.0, weight_gram=0.0, soft_mode=mode,
                         soft_alpha=0.5)
    model = ArtStyleForPretraining(config).eval()
    rank0 = F.normalize(torch.randn(4, config.projection_dim), dim=-1)
    gathered_calls = []

    def fake_gather(keys):
        gathered_calls.append(keys)
        return torch.cat([rank0, keys]), 4

    x1, x2 = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad(), mock.patch("artstyle.modeling_artstyle.gather_from_all", fake_gather):
        out = model(x1, x2)
        # each view encoded alone (the forward encodes both in one pass)
        student = [model._views((x,), teacher=False)[0].key for x in (x1, x2)]
        teacher = [model._views((x,), teacher=True)[0].key for x in (x1, x2)]
    assert len(gathered_calls) == 2
    loss = SoftContrastiveLoss(config.tau_student, config.tau_teacher, 0.5, mode=mode)
    expected = (loss(student[0], teacher[1], keys=torch.cat([rank0, teacher[1]]), offset=4)
                + loss(student[1], teacher[0], keys=torch.cat([rank0, teacher[0]]), offset=4)) / 2
    assert out.loss_contrastive.item() == pytest.approx(expected.item(), rel=1e-5)
    local = (loss(student[0], teacher[1]) + loss(student[1], teacher[0])) / 2  # what the mutants compute
    assert abs(local.item() - expected.item()) > 1e-3


# ---------------------------------------------------------------------------------------------- Gram
def test_gram_of_all_zero_patch_tokens_is_zero_not_nan():
    # kills gram.xǁLearnableGramǁgram__mutmut_15 (`|G| + 1e-12` → `|G| - 1e-12` under the square root: NaN for every
    # exactly-zero entry, e.g. black padding or a blank canvas, and NaN would reach the Gram loss)
    from artstyle.gram import LearnableGram

    gram, style = LearnableGram(dim=6, gram_dim=3, style_dim=4)(torch.zeros(2, 5, 6))
    assert torch.equal(gram, torch.zeros(2, 3, 3))
    assert torch.isfinite(style).all()


# ---------------------------------------------------------------------------------------------- outputs
def test_pretraining_outputs_are_those_of_the_first_view_and_return_dict_false_gives_a_tuple():
    # kills modeling_artstyle.xǁArtStyleForPretrainingǁforward__mutmut_118/_125/_126/_127/_133/_134/_135 (outputs from
    # the second view, or dropped) and _137/_139 (`return_dict=False` must give the tuple, as in transformers)
    model = ArtStyleForPretraining(tiny_config(pooler="fused")).eval()
    x1, x2 = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        out = model(x1, x2)
        first = model.artstyle(x1)
        as_tuple = model(x1, x2, return_dict=False)
    torch.testing.assert_close(out.pooler_output, first.pooler_output)
    torch.testing.assert_close(out.fusion_weights, first.fusion_weights)
    torch.testing.assert_close(out.fusion_pool_weights, first.fusion_pool_weights)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(out.to_tuple())
    for got, expected in zip(as_tuple, out.to_tuple()):
        torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------------------------------------- encoder
def test_encode_maps_each_requested_block_to_its_own_hidden_state_and_returns_no_hidden_states_by_default():
    # kills modeling_artstyle.xǁArtStyleModelǁencode__mutmut_30/_34 (`forward_intermediates` without `indices`: every
    # block comes back and the zip pairs block 0, 1, ... with the requested indices; only visible when the fusion
    # and Gram layers are not all blocks) and encode__mutmut_1 (hidden states of every block by default: memory)
    from artstyle import ArtStyleModel

    model = ArtStyleModel(tiny_config(backbone_depth=4, fusion_layers=[1, 3], gram_layer=2)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        encoded = model.encode(x)
        hidden = model(x, output_hidden_states=True).hidden_states
    assert sorted(encoded.layer_cls) == [1, 2, 3] and encoded.output.hidden_states is None
    for index, cls in encoded.layer_cls.items():
        torch.testing.assert_close(cls, hidden[index][:, 0])
    # the Gram matrix is that of block 2's patch tokens (prefix tokens come first in the hidden states)
    patches = hidden[2][:, -16:]
    torch.testing.assert_close(encoded.output.gram, model.gram(patches)[0])


def test_base_model_return_dict_false_gives_the_output_tuple():
    # kills modeling_artstyle.xǁArtStyleModelǁforward__mutmut_8/_10
    from artstyle import ArtStyleModel

    model = ArtStyleModel(tiny_config()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, as_tuple = model(x), model(x, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(out.to_tuple())
    for got, expected in zip(as_tuple, out.to_tuple()):
        torch.testing.assert_close(got, expected)
