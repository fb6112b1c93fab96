"""Model behaviour: one backbone pass over both views, queue, teacher, switches, heads, classification losses."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from artstyle import ArtStyleForImageClassification, ArtStyleForPretraining, ArtStyleModel
from artstyle.soft_contrast import enqueue_keys

from conftest import tiny_config


def _views(batch=4, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, size, size)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def _count_block_calls(blocks):
    counts = [0] * len(blocks)
    for index, block in enumerate(blocks):
        def hook(module, args, index=index):
            counts[index] += 1
        block.register_forward_pre_hook(hook)
    return counts


@pytest.mark.parametrize("overrides", [{}, {"pooler": "fused_style", "soft_mode": "ascl"}, {"queue_size": 0}])
def test_backbone_runs_once_over_both_views_for_student_and_teacher(overrides):
    model = ArtStyleForPretraining(tiny_config(backbone_depth=3, **overrides))
    student = _count_block_calls(model.artstyle.backbone.blocks)
    teacher = _count_block_calls(model.teacher["artstyle"].backbone.blocks)
    rows = []
    model.artstyle.backbone.patch_embed.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    x1, x2 = _views()
    out = model(x1, x2, momentum=0.99)
    out.loss.backward()
    assert student == [1, 1, 1] and teacher == [1, 1, 1]  # one pass per encoder and step ...
    assert rows == [2 * x1.shape[0]]  # ... over both views at once
    assert all(getattr(out, f"loss_{n}").item() > 0 for n in ("contrastive", "layerwise", "distill", "gram"))
    expected = sum(getattr(model.config, f"weight_{n}") * getattr(out, f"loss_{n}")
                   for n in ("contrastive", "layerwise", "distill", "gram"))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_every_trainable_parameter_gets_a_gradient_and_teacher_none():
    model = ArtStyleForPretraining(tiny_config(pooler="fused_style"))
    model(*_views()).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []  # DDP without find_unused_parameters works
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.parameters())


def test_baseline_has_no_extra_modules_and_equals_reference_infonce():
    config = tiny_config(queue_size=0).moco_v3_baseline()
    model = ArtStyleForPretraining(config).eval()
    assert model.artstyle.fusion is None and model.artstyle.gram is None
    assert model.layer_projector is None and model.distill_projector is None
    x1, x2 = _views()
    out = model(x1, x2)
    assert out.loss_layerwise.item() == out.loss_distill.item() == out.loss_gram.item() == 0.0
    with torch.no_grad():
        def student(x):
            return F.normalize(model.predictor(model.projector(model.artstyle(x).pooler_output)), dim=1).numpy()

        def teacher(x):
            return F.normalize(model.teacher["projector"](model.teacher["artstyle"](x).pooler_output), dim=1).numpy()

        q1, q2, p1, p2 = student(x1), student(x2), teacher(x1), teacher(x2)

    def infonce(q, k, tau):
        logits = q @ k.T / tau
        logits = logits - logits.max(1, keepdims=True)
        log_prob = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return -np.mean(np.diag(log_prob))

    expected = (infonce(q1, p2, config.tau_student) + infonce(q2, p1, config.tau_student)) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_loss_is_symmetric_in_the_views():
    model = ArtStyleForPretraining(tiny_config(soft_alpha=0.5)).eval()
    x1, x2 = _views()
    with torch.no_grad():
        a, b = model(x1, x2), model(x2, x1)
    for name in ("loss", "loss_contrastive", "loss_layerwise", "loss_distill", "loss_gram"):
        assert getattr(a, name).item() == pytest.approx(getattr(b, name).item(), rel=1e-5)


def test_queue_ring_buffer_with_batches_not_dividing_its_size():
    model = ArtStyleForPretraining(tiny_config(queue_size=24))
    keys = F.normalize(torch.randn(37, model.config.projection_dim), dim=1)
    start = 0
    for size in (5, 5, 5, 5, 5, 7, 5):  # 37 keys into 24 slots
        enqueue_keys(model.queue, model.queue_ptr, keys[start:start + size])
        start += size
    assert int(model.queue_ptr) == 37 % 24
    for i in range(37 - 24, 37):  # the newest 24 keys, each at slot i % 24
        assert torch.equal(model.queue[i % 24], keys[i])
    enqueue_keys(model.queue, model.queue_ptr, keys[:30])  # more keys than slots: keep the last 24
    assert int(model.queue_ptr) == (13 + 30) % 24
    for i in range(6, 30):
        assert torch.equal(model.queue[(13 + i) % 24], keys[i])


def test_eval_mode_never_enqueues():
    # the enqueue order and content are checked against an independent reference in test_wiring.py
    model = ArtStyleForPretraining(tiny_config(queue_size=24)).eval()
    before = model.queue.clone()
    model(*_views(batch=5))
    assert int(model.queue_ptr) == 0
    assert torch.equal(model.queue, before)


def test_teacher_is_student_copy_then_ema():
    model = ArtStyleForPretraining(tiny_config())
    for s, t in zip(model.artstyle.parameters(), model.teacher["artstyle"].parameters()):
        assert torch.equal(s, t)
    teacher_before = [p.clone() for p in model.teacher.parameters()]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(*_views()).loss.backward()
    optimizer.step()
    for before, after in zip(teacher_before, model.teacher.parameters()):
        assert torch.equal(before, after)  # the optimizer never touches the teacher
    model.update_teacher(0.9)
    student = dict(model.artstyle.named_parameters())
    for (name, t), before in zip(model.teacher["artstyle"].named_parameters(), teacher_before):
        torch.testing.assert_close(t, 0.9 * before + 0.1 * student[name])
    with pytest.raises(ValueError, match="momentum"):
        model.update_teacher(1.5)


def test_zero_weight_skips_component_compute():
    config = tiny_config(weight_layerwise=0.0, weight_distill=0.0, weight_gram=0.0, pooler="fused")
    model = ArtStyleForPretraining(config)
    assert model.artstyle.gram is None and model.layer_projector is None and model.distill_projector is None
    assert model.artstyle.fusion is not None  # the fused pooler still needs it
    out = model(*_views())
    assert out.loss_gram.item() == 0.0 and out.loss.item() == pytest.approx(out.loss_contrastive.item())


def test_base_model_outputs_and_poolers():
    x = _views()[0]
    for pooler in ("cls", "fused", "fused_style", "gram_diag", "cls_gram_diag"):
        model = ArtStyleModel(tiny_config(pooler=pooler, backbone_depth=3, fusion_layers=[0, 2])).eval()
        out = model(x, output_hidden_states=True)
        assert out.last_hidden_state.shape == (4, 17, 192)
        assert out.pooler_output.shape == (4, 384 if pooler == "cls_gram_diag" else 192)
        assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (4, 17, 192)
        assert out.fusion_weights.shape == (4, 2, 2)
        torch.testing.assert_close(out.fusion_weights.sum(-1), torch.ones(4, 2))
        if pooler == "cls":
            torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 0])
        elif pooler in ("gram_diag", "cls_gram_diag"):
            assert out.fusion_pool_weights is None
        else:
            assert out.fusion_pool_weights.shape == (4, 2)
        assert (out.style_embedding is not None) == (pooler == "fused_style")
        # the last hidden state equals the last block output after the final norm
        torch.testing.assert_close(model.backbone.norm(out.hidden_states[-1]), out.last_hidden_state)


@pytest.mark.parametrize("gram_layer", [-1, 0])
def test_gram_diag_pooler_matches_a_hand_computation(gram_layer):
    """pooler "gram_diag" = LayerNorm(log(diag(TᵀT/N) + 1e-6)) over block `gram_layer`'s patch tokens T (CLS
    excluded, before the final norm): checked against loops over the hidden states, for the base model and for the
    classifier's pooler_only path, whose logits must be the head applied to it."""
    config = tiny_config(pooler="gram_diag", gram_layer=gram_layer, num_labels=3)
    model = ArtStyleModel(config).eval()
    with torch.no_grad():
        model.pooler_norm.weight.uniform_(0.5, 1.5)  # a non-trivial affine, so it must be applied
        model.pooler_norm.bias.uniform_(-0.5, 0.5)
    x = _views()[0]
    out = model(x, output_hidden_states=True)
    tokens = out.hidden_states[gram_layer][:, 1:]  # [B, 16, 192]
    expected = torch.empty(4, 192)
    for b in range(4):
        diag = torch.stack([sum(tokens[b, n, d] ** 2 for n in range(16)) / 16 for d in range(192)])
        logs = torch.log(diag + 1e-6)
        normed = (logs - logs.mean()) / torch.sqrt(logs.var(unbiased=False) + 1e-6)
        expected[b] = normed * model.pooler_norm.weight + model.pooler_norm.bias
    torch.testing.assert_close(out.pooler_output, expected, atol=1e-4, rtol=1e-4)
    assert out.gram is not None and out.style_embedding is None  # the learnable Gram module is left as it was
    # "cls_gram_diag": the CLS head input (after the final norm) next to the same diagonal
    both = ArtStyleModel(tiny_config(pooler="cls_gram_diag", gram_layer=gram_layer)).eval()
    both.load_state_dict(model.state_dict())
    torch.testing.assert_close(both(x).pooler_output, torch.cat([out.last_hidden_state[:, 0], expected], dim=-1),
                               atol=1e-4, rtol=1e-4)

    classifier = ArtStyleForImageClassification(config).eval()
    classifier.artstyle.load_state_dict(model.state_dict())
    logits = classifier(x).logits
    torch.testing.assert_close(logits, classifier.classifier(expected), atol=1e-4, rtol=1e-4)
    # the pooler reads pre-norm tokens: the backbone's final norm gets no gradient and is frozen
    assert not any(p.requires_grad for p in classifier.artstyle.backbone.norm.parameters())


@pytest.mark.parametrize("pooler", ["gram_diag", "cls_gram_diag"])
def test_gram_diag_pooler_is_a_read_out_only_pretraining_is_unchanged(pooler):
    """Under the Gram-diagonal poolers the contrastive projector keeps reading the CLS: the same weights and views
    give the same losses and gradients as with "cls"; only the pretraining output's pooler_output differs."""
    torch.manual_seed(0)
    cls_model = ArtStyleForPretraining(tiny_config(pooler="cls"))
    diag_model = ArtStyleForPretraining(tiny_config(pooler=pooler))
    missing, unexpected = diag_model.load_state_dict(cls_model.state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == ["artstyle.pooler_norm.bias", "artstyle.pooler_norm.weight",
                                                     "teacher.artstyle.pooler_norm.bias",
                                                     "teacher.artstyle.pooler_norm.weight"]
    x1, x2 = _views()
    out_cls, out_diag = cls_model(x1, x2), diag_model(x1, x2)
    for name in ("loss", "loss_contrastive", "loss_layerwise", "loss_distill", "loss_gram"):
        torch.testing.assert_close(getattr(out_diag, name), getattr(out_cls, name))
    out_cls.loss.backward()
    out_diag.loss.backward()
    torch.testing.assert_close(diag_model.artstyle.backbone.norm.weight.grad,
                               cls_model.artstyle.backbone.norm.weight.grad)
    torch.testing.assert_close(out_diag.pooler_output,
                               diag_model.artstyle(x1).pooler_output.detach(), atol=1e-5, rtol=1e-5)


def test_gram_diag_pooler_keeps_the_tokens_dtype_in_bfloat16():
    model = ArtStyleModel(tiny_config(pooler="gram_diag")).to(torch.bfloat16).eval()
    out = model(_views()[0].to(torch.bfloat16))
    assert out.pooler_output.dtype == torch.bfloat16 and torch.isfinite(out.pooler_output.float()).all()


def test_classifier_losses_and_frozen_unused_modules():
    config = tiny_config(num_labels=3)
    model = ArtStyleForImageClassification(config)
    assert not any(p.requires_grad for p in model.artstyle.fusion.parameters())  # cls pooler: fusion unused
    calls = []
    model.artstyle.fusion.register_forward_pre_hook(lambda *args: calls.append("fusion"))
    model.artstyle.gram.register_forward_pre_hook(lambda *args: calls.append("gram"))
    x = _views()[0]
    labels = torch.tensor([0, 2, 1, 2])
    out = model(x, labels=labels)
    assert out.logits.shape == (4, 3)
    assert out.loss.item() == pytest.approx(F.cross_entropy(out.logits, labels).item(), rel=1e-6)
    assert calls == []  # the classifier skips what its pooler does not read
    model.artstyle(x)
    assert calls == ["fusion", "gram"]  # the base model still returns every output
    multi = ArtStyleForImageClassification(tiny_config(num_labels=3, problem_type="multi_label_classification"))
    hot = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 1, 0]], dtype=torch.float)
    out = multi(x, labels=hot)
    expected = F.binary_cross_entropy_with_logits(out.logits, hot)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="multi-hot"):
        multi(x, labels=torch.tensor([0, 1, 2, 1]).float())


def test_pretrained_backbone_from_local_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    reference = timm.create_model("vit_tiny_patch16_224", depth=2, img_size=32, patch_size=8, num_classes=5)
    path = tmp_path / "vit.safetensors"
    save_file(reference.state_dict(), str(path))
    model = ArtStyleForPretraining(tiny_config(backbone_pretrained=str(path)))
    for encoder in (model.artstyle, model.teacher["artstyle"]):
        torch.testing.assert_close(encoder.backbone.blocks[1].mlp.fc1.weight, reference.blocks[1].mlp.fc1.weight)
        torch.testing.assert_close(encoder.backbone.pos_embed, reference.pos_embed)
    with pytest.raises(FileNotFoundError, match="backbone_pretrained"):
        ArtStyleModel(tiny_config(backbone_pretrained=str(tmp_path / "missing.pth")))


def test_forward_needs_two_views():
    model = ArtStyleForPretraining(tiny_config())
    with pytest.raises(ValueError, match="pixel_values_2"):
        model(_views()[0], None)


@pytest.mark.parametrize("pooler", ["cls", "fused", "fused_style", "gram_diag", "cls_gram_diag"])
def test_classifier_trainable_parameters_all_receive_gradients(pooler):
    model = ArtStyleForImageClassification(tiny_config(num_labels=2, pooler=pooler))
    model(_views()[0], labels=torch.tensor([0, 1, 1, 0])).loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_views_of_different_shapes_are_refused_by_name():
    model = ArtStyleForPretraining(tiny_config(backbone_depth=1))
    x1, x2 = _views()
    with pytest.raises(ValueError, match=r"`pixel_values` and `pixel_values_2` must have the same shape.*\(4, 3"):
        model(x1, x2[:3], momentum=0.99)


def test_compiled_pretraining_forward_is_one_graph_and_matches_eager_with_queue_and_ema():
    """Under torch.compile the training forward (EMA update, encoders, heads, losses, enqueue) is ONE graph: the only
    eager piece, the queue snapshot, comes first, so nothing splits the step (what CUDA graphs need). AOTAutograd
    (the ``aot_eager`` backend: inductor's tracing without its code generation) gives eager's losses, queue and
    weights over steps with a changing momentum, so the snapshot is not rematerialised from the updated buffer."""
    import copy

    import torch._dynamo

    torch.manual_seed(0)
    config = tiny_config(queue_size=16)
    eager = ArtStyleForPretraining(config).train()
    compiled = copy.deepcopy(eager)
    images = torch.randn(3, 2, 4, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(0))
    explained = torch._dynamo.explain(copy.deepcopy(eager))(pixel_values=images[0, 0], pixel_values_2=images[0, 1],
                                                             momentum=0.99)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    compiled.compile(backend="aot_eager")
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (eager, compiled)]
    for step in range(3):
        losses = []
        for model, optimizer in zip((eager, compiled), optimizers):
            out = model(pixel_values=images[step, 0], pixel_values_2=images[step, 1], momentum=0.99 - 0.01 * step)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(out.loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-5), step
        torch.testing.assert_close(compiled.queue, eager.queue, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled.teacher["artstyle"].backbone.blocks[0].attn.qkv.weight,
                               eager.teacher["artstyle"].backbone.blocks[0].attn.qkv.weight, rtol=1e-5, atol=1e-6)
