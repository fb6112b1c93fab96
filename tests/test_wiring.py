"""Wiring tests: how the model connects its losses, teacher, queue, fusion, Gram and labels, each checked against an
independent hand reference (tests/wiring_refs.py) built from the modules' own weights.

Every test here was checked against a deliberately broken copy of the code (docs/testing.md lists which mutation
each test catches). The tests use only public classes, state-dict attribute paths, forward outputs and hooks, so
they hold whatever the internal structure of the model files.
"""

import gzip
import json
from pathlib import Path
from unittest import mock

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from artstyle import ArtStyleForPretraining, ArtStyleModel
from artstyle.data import load_style_dataset
from artstyle.losses import SoftContrastiveLoss

import wiring_refs as refs
from conftest import tiny_config

TERMS = ("contrastive", "layerwise", "distill", "gram")


def _views(batch=5, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, size, size)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


@torch.no_grad()
def _perturb_teacher(model, scale=0.01, seed=1):
    """Teacher ≠ student (but close, so that student and teacher of the SAME view agree far better than of two
    views), so that an EMA, or a student used in place of the teacher, shows in the numbers."""
    generator = torch.Generator().manual_seed(seed)
    for p in model.teacher.parameters():
        p.add_(scale * torch.randn(p.shape, generator=generator))


# ---------------------------------------------------------------------------------------------- per-view reference
def _layers(config, depth, field):
    chosen = getattr(config, field)
    return [i % depth for i in (chosen if chosen is not None else range(depth))]


@torch.no_grad()
def reference_view(model, x, teacher):
    """Keys, layer embeddings, distillation embeddings and Gram of one view, by hand from the weights.

    Only the timm backbone's hidden states come from the model (``output_hidden_states``): the pooler, fusion,
    heads and Gram are recomputed here.
    """
    config = model.config
    encoder = model.teacher["artstyle"] if teacher else model.artstyle
    backbone = encoder.backbone
    depth = len(backbone.blocks)
    hidden = encoder(x, output_hidden_states=True).hidden_states  # pre-norm block outputs, prefix tokens first
    cls = [h[:, 0] for h in hidden]
    fusion_layers = _layers(config, depth, "fusion_layers")
    fused = refs.fusion(encoder.fusion, torch.stack([cls[i] for i in fusion_layers], 1), config.fusion_num_heads)
    if config.pooler in ("cls", "gram_diag", "cls_gram_diag"):  # the Gram-diagonal poolers: the projector reads the CLS
        pooled = refs.layer_norm(refs.f64(hidden[-1][:, 0]), backbone.norm.weight, backbone.norm.bias)
    else:
        assert config.pooler == "fused", "reference covers the cls, Gram-diagonal and fused poolers"
        pooled = fused["pooled"]
    view = {"gram": refs.gram(encoder.gram, hidden[config.gram_layer % depth][:, backbone.num_prefix_tokens:])}
    projector = model.teacher["projector"] if teacher else model.projector
    z = refs.mlp_head(projector, pooled)
    view["key"] = refs.unit(z if teacher else refs.mlp_head(model.predictor, z))
    layer_projector = model.teacher["layer_projector"] if teacher else model.layer_projector
    view["layers"] = refs.unit(refs.per_layer_mlp(layer_projector, fused["fused"].transpose(0, 1)))
    if not teacher:
        tokens = torch.stack([cls[i] for i in _layers(config, depth, "distill_layers")], 0)
        hidden_distill = refs.per_layer_mlp(model.distill_projector, tokens)
        view["distill"] = refs.unit(refs.per_layer_mlp(model.distill_predictor, hidden_distill))
    return view


def reference_losses(model, x1, x2, queue_before, pairs=((0, 1), (1, 0))):
    """Every loss term by hand; ``pairs`` = (student view, teacher view) of each symmetric half."""
    config = model.config
    students = [reference_view(model, x, teacher=False) for x in (x1, x2)]
    teachers = [reference_view(model, x, teacher=True) for x in (x1, x2)]
    soft = SoftContrastiveLoss(config.tau_student, config.tau_teacher, config.soft_alpha, config.soft_mode)

    def contrastive(s, t):
        q, p = students[s]["key"], teachers[t]["key"]
        if queue_before is not None:
            return soft(q.float(), p.float(), negatives=queue_before).item()
        return refs.soft_in_batch(q.numpy(), p.numpy(), p.numpy(), 0, config.tau_student, config.tau_teacher,
                                  config.soft_alpha, config.soft_mode)

    losses = {
        "contrastive": np.mean([contrastive(s, t) for s, t in pairs]),
        "layerwise": np.mean([refs.infonce(students[s]["layers"].numpy(), teachers[t]["layers"].numpy(),
                                           config.tau_layerwise) for s, t in pairs]),
        "distill": np.mean([refs.infonce(students[s]["distill"].numpy(), teachers[t]["key"].numpy(),
                                         config.tau_distill) for s, t in pairs]),
        "gram": np.mean([refs.gram_mse(students[s]["gram"], teachers[t]["gram"]) if config.gram_loss == "mse"
                         else refs.infonce(students[s]["gram"].flatten(1).numpy(),
                                           teachers[t]["gram"].flatten(1).numpy(), config.tau_gram)
                         for s, t in pairs]),
    }
    return losses, teachers


def _run_forward(pointer=21, batch=5, **overrides):
    """A training-mode forward of two different views, with a perturbed teacher and the queue pointer at
    ``pointer``: returns the model, its output, the queue and pointer before the forward, and the views."""
    model = ArtStyleForPretraining(tiny_config(**overrides)).train()
    _perturb_teacher(model)
    if model.queue is not None:
        model.queue_ptr.fill_(pointer)
    queue_before = model.queue.clone() if model.queue is not None else None
    x1, x2 = _views(batch)
    out = model(x1, x2)
    return model, out, queue_before, (x1, x2)


# ---------------------------------------------------------------------------------------------- loss wiring
@pytest.mark.parametrize("pooler, gram_loss", [("cls", "mse"), ("fused", "mse"), ("cls", "infonce")])
def test_every_loss_pairs_student_of_one_view_with_teacher_of_the_other(pooler, gram_loss):
    model, out, queue_before, (x1, x2) = _run_forward(pooler=pooler, gram_loss=gram_loss, tau_gram=0.3)
    expected, _ = reference_losses(model, x1, x2, queue_before)
    for name in TERMS:
        assert getattr(out, f"loss_{name}").item() == pytest.approx(expected[name], rel=2e-4), name
    total = sum(getattr(model.config, f"weight_{name}") * expected[name] for name in TERMS)
    assert out.loss.item() == pytest.approx(total, rel=2e-4)
    # the same-view pairing (student x1 vs teacher x1) gives other numbers, far outside the tolerance above
    same_view, _ = reference_losses(model, x1, x2, queue_before, pairs=((0, 0), (1, 1)))
    for name in TERMS:
        assert abs(same_view[name] - expected[name]) > 2e-3 * abs(expected[name]), name


def test_contrastive_negatives_are_the_queue_before_the_forward_and_view2_teacher_keys_are_enqueued_after():
    model, out, queue_before, (x1, x2) = _run_forward(pointer=21, batch=5, queue_size=24)
    expected, teachers = reference_losses(model, x1, x2, queue_before)
    assert out.loss_contrastive.item() == pytest.approx(expected["contrastive"], rel=2e-4)
    # the batch's own keys as negatives (enqueued too early) would give another number
    early = queue_before.clone()
    keys = teachers[1]["key"].float()
    for j in range(5):
        early[(21 + j) % 24] = keys[j]
    soft = SoftContrastiveLoss(model.config.tau_student, model.config.tau_teacher, model.config.soft_alpha)
    wrong = np.mean([soft(q.float(), p.float(), negatives=early).item() for q, p in (
        (reference_view(model, x1, False)["key"], teachers[1]["key"]),
        (reference_view(model, x2, False)["key"], teachers[0]["key"]))])
    assert abs(wrong - expected["contrastive"]) > 1e-3
    # ring-buffer write of the teacher keys of view 2 at the old pointer (wrapping: slots 21, 22, 23, 0, 1)
    ring = queue_before.clone()
    for j, slot in enumerate([21, 22, 23, 0, 1]):
        ring[slot] = keys[j]
    # atol 1e-5: the reference keys come from a separate forward, whose float rounding differs by host (2.8e-6 seen on
    # an AVX2-only host); a wrong slot or a batch-1 key differs by orders of magnitude more (unit-norm keys)
    torch.testing.assert_close(model.queue, ring, rtol=1e-5, atol=1e-5)
    assert int(model.queue_ptr) == 2


@pytest.mark.parametrize("mode", ["soft", "ascl"])
def test_in_batch_path_without_queue_matches_numpy(mode):
    model, out, _, (x1, x2) = _run_forward(queue_size=0, soft_mode=mode, soft_alpha=0.4)
    assert model.queue is None
    expected, _ = reference_losses(model, x1, x2, None)
    assert out.loss_contrastive.item() == pytest.approx(expected["contrastive"], rel=2e-4)


@pytest.mark.parametrize("mode", ["soft", "ascl"])
@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_in_batch_soft_contrast_with_offset_and_uneven_process_batches(mode, alpha):
    # 3 processes with 4, 3 and 5 rows: this is process 1 (offset 4) of a gathered batch of 12 keys
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(12, 8))
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    q = rng.normal(size=(3, 8))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    p = keys[4:7]
    loss = SoftContrastiveLoss(0.2, 0.1, alpha, mode)(torch.tensor(q), torch.tensor(p), negatives=None,
                                                      keys=torch.tensor(keys), offset=4)
    expected = refs.soft_in_batch(q, p, keys, 4, 0.2, 0.1, alpha, mode)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the positive must be column offset + i: the reference with offset 0 is another number
    assert abs(refs.soft_in_batch(q, keys[0:3], keys, 0, 0.2, 0.1, alpha, mode) - expected) > 1e-3


def test_queue_of_one_negative_and_empty_queue():
    # found by mutmut: a one-key queue is still a queue, an empty one falls back to in-batch negatives
    rng = np.random.default_rng(1)
    q, p, n = (r / np.linalg.norm(r, axis=1, keepdims=True) for r in rng.normal(size=(3, 4, 8)))
    loss = SoftContrastiveLoss(0.2, 0.1, 0.5)(torch.tensor(q), torch.tensor(p), negatives=torch.tensor(n[:1]))
    logits = np.stack([(q * p).sum(1), q @ n[0]], axis=1) / 0.2
    log_prob = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert loss.item() == pytest.approx(-(0.5 * log_prob).sum(1).mean(), rel=1e-5)  # target [0.5, 0.5]
    empty = SoftContrastiveLoss(0.2, 0.1, 0.5)(torch.tensor(q), torch.tensor(p), negatives=torch.tensor(n[:0]))
    assert empty.item() == pytest.approx(refs.soft_in_batch(q, p, p, 0, 0.2, 0.1, 0.5, "soft"), rel=1e-5)


# ---------------------------------------------------------------------------------------------- teacher EMA
def test_ema_updates_every_teacher_twin_and_only_those():
    model = ArtStyleForPretraining(tiny_config()).train()
    _perturb_teacher(model)
    params = dict(model.named_parameters())
    teacher_old = {n: p.detach().clone() for n, p in params.items() if n.startswith("teacher.")}
    student_old = {n: p.detach().clone() for n, p in params.items() if not n.startswith("teacher.")}
    # the teacher twins exactly the encoder, the projector and the layer projector; predictor / distill heads have none
    assert {n.split(".")[1] for n in teacher_old} == {"artstyle", "projector", "layer_projector"}
    twins = {n.removeprefix("teacher.") for n in teacher_old}
    covered = [n for n in student_old if n.split(".")[0] in ("artstyle", "projector", "layer_projector")]
    assert sorted(twins) == sorted(covered)
    model(*_views(), momentum=0.9)
    changed = 0
    for name, old in teacher_old.items():
        twin = student_old[name.removeprefix("teacher.")]
        expected = 0.9 * old.double() + 0.1 * twin.double()
        torch.testing.assert_close(params[name].double(), expected, rtol=1e-6, atol=1e-7, msg=name)
        changed += not torch.equal(params[name], old)
    assert changed == len(teacher_old)  # every twin moved (teacher ≠ student before)


def test_teacher_moves_once_per_optimisation_step_under_gradient_accumulation(tmp_path):
    from accelerate.state import AcceleratorState, GradientState

    import run_pretrain

    calls = []
    original = ArtStyleForPretraining.update_teacher

    def counted(self, momentum, *args, **kwargs):
        calls.append(float(momentum))
        return original(self, momentum, *args, **kwargs)

    tiny = {"backbone_depth": 1, "image_size": 32, "patch_size": 16, "queue_size": 16, "projection_hidden_dim": 32,
            "projection_dim": 16, "distill_hidden_dim": 16, "layer_head_dim": 16, "style_dim": 16, "gram_dim": 4}
    args = ["--dataset_name", "demo",
            "--dataset_options", json.dumps({"num_images": 24, "image_size": 32, "cache_dir": str(tmp_path / "c")}),
            "--config_overrides", json.dumps(tiny), "--output_dir", str(tmp_path / "out"),
            "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2", "--max_train_steps", "3",
            "--dataloader_num_workers", "0", "--report_to", "none", "--seed", "0"]
    try:
        with mock.patch.object(ArtStyleForPretraining, "update_teacher", counted):
            results = run_pretrain.main(args)
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert results["train_steps"] == 3
    assert len(calls) == 3, f"teacher EMA applied {len(calls)} times in 3 optimisation steps of 2 micro-batches"
    # one momentum per optimisation step, on the half-cosine from momentum_base (0.99) to 1 over the 3 steps
    expected = [1.0 - 0.01 * (1 + np.cos(np.pi * k / 3)) / 2 for k in range(3)]
    assert calls == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------------------------------------- Gram and fusion
@pytest.mark.parametrize("depth, gram_layer", [(2, 0), (3, 1), (3, -1)])
def test_gram_is_taken_from_gram_layer(depth, gram_layer):
    model = ArtStyleModel(tiny_config(backbone_depth=depth, gram_layer=gram_layer)).eval()
    blocks = {}
    for index, block in enumerate(model.backbone.blocks):
        block.register_forward_hook(lambda module, args, output, index=index: blocks.__setitem__(index, output))
    x = _views(batch=3)[0]
    with torch.no_grad():
        out = model(x)
    prefix = model.backbone.num_prefix_tokens
    expected = refs.gram(model.gram, blocks[gram_layer % depth][:, prefix:])
    # atol 1e-5: float32 rounding of the forward differs by host (1.6e-6 seen on an AVX2-only host); another block
    # differs by more than 1e-3 (below)
    torch.testing.assert_close(out.gram.double(), expected, rtol=1e-4, atol=1e-5)
    other = refs.gram(model.gram, blocks[(gram_layer + 1) % depth][:, prefix:])
    assert (other - expected).abs().max() > 1e-3  # another block gives another Gram


@pytest.mark.parametrize("fusion_layers", [None, [0, 2]])
def test_fusion_is_layernorm_embedding_attention_with_residual(fusion_layers):
    model = ArtStyleModel(tiny_config(pooler="fused", backbone_depth=3, fusion_layers=fusion_layers)).eval()
    with torch.no_grad():  # non-trivial layer embedding and pooling query
        model.fusion.layer_embedding.normal_(0, 0.5)
        model.fusion.pool_query.normal_(0, 0.5)
        out = model(_views(batch=3)[0], output_hidden_states=True)
    layers = fusion_layers or [0, 1, 2]
    tokens = torch.stack([out.hidden_states[i][:, 0] for i in layers], 1)
    expected = refs.fusion(model.fusion, tokens, model.config.fusion_num_heads)
    torch.testing.assert_close(out.fusion_weights.double(), expected["layer_weights"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.fusion_pool_weights.double(), expected["pool_weights"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.pooler_output.double(), expected["pooled"], rtol=1e-4, atol=1e-5)
    without = refs.fusion(model.fusion, tokens, model.config.fusion_num_heads, residual=False)
    assert (without["pooled"] - expected["pooled"]).abs().max() > 1e-2  # the residual matters


# ---------------------------------------------------------------------------------------------- labels
def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _rows(ds):
    """(split, image path, label, labels or None) of every row, images not decoded."""
    for split, table in ds.items():
        table = table.cast_column("image", datasets.Image(decode=False))
        multi = table["labels"] if "labels" in table.column_names else [None] * len(table)
        for image, label, labels in zip(table["image"], table["label"], multi):
            yield split, Path(image["path"]), label, labels


# class folders whose sorted order differs from creation order, with different counts (a shift changes counts)
CLASSES = {"ukiyo_e": 3, "baroque": 5, "cubism": 4, "abstract": 6}


@pytest.mark.parametrize("layout", ["imagefolder", "pandora_nested", "pandora_presplit"])
def test_label_of_every_row_is_its_class_folder(tmp_path, layout):
    root, seed = tmp_path / "data", 0
    for name, count in CLASSES.items():
        for k in range(count):
            if layout == "imagefolder":
                relative = Path(name) / f"{k}.png"
            elif layout == "pandora_nested":
                relative = Path(name) / f"artist_{k % 2}" / f"{k}.png"
            else:
                relative = Path("test" if k == 0 else "train") / name / f"artist_{k % 2}" / f"{k}.png"
            _png(root / relative, seed)
            seed += 1
    dataset = "imagefolder" if layout == "imagefolder" else "pandora18k"
    ds = load_style_dataset(dataset, data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    names = ds["train"].features["label"].names
    assert names == sorted(CLASSES)
    rows = list(_rows(ds))
    assert len(rows) == sum(CLASSES.values())
    for split, path, label, _ in rows:
        parts = path.relative_to(root).parts
        folder = parts[1] if layout == "pandora_presplit" else parts[0]
        assert names[label] == folder, (split, path, label)
        if layout == "pandora_presplit":
            assert parts[0] == split


def test_label_of_every_row_is_its_metadata_entry_ava(tmp_path):
    root = tmp_path / "AVA"
    styles = ["HDR", "Macro", "Noir_like", "Duotones"]
    lists = root / "style_image_lists"
    lists.mkdir(parents=True)
    (lists / "styles.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(styles, 1)))
    train = {str(1000 + k): [3, 1, 4, 2, 2, 4, 1, 3, 3, 4][k] for k in range(10)}  # 1-based style ids
    test = {"2000": [0, 1, 0, 1], "2001": [0, 0, 1, 0], "2002": [1, 0, 0, 1]}
    for k, image_id in enumerate([*train, *test]):
        _png(root / "images" / f"{image_id}.jpg", k)
    (lists / "train.jpgl").write_text("\n".join(train) + "\n")
    (lists / "train.lab").write_text("\n".join(map(str, train.values())) + "\n")
    (lists / "test.jpgl").write_text("\n".join(test) + "\n")
    (lists / "test.multilab").write_text("\n".join(" ".join(map(str, v)) for v in test.values()) + "\n")
    ds = load_style_dataset("ava", data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    assert ds["train"].features["label"].names == styles
    seen = set()
    for split, path, label, labels in _rows(ds):
        image_id = path.stem
        seen.add(image_id)
        if split == "test":
            assert labels == test[image_id] and label == test[image_id].index(1), image_id
        else:
            assert label == train[image_id] - 1, image_id
    assert seen == {*train, *test}


def test_label_of_every_row_is_its_metadata_entry_flickr(tmp_path):
    root = tmp_path / "flickr"
    labels = [7, 0, 19, 3, 3, 12, 0, 7, 19, 5, 12, 3]
    lines = [",image_url,label,_split"]
    for k, label in enumerate(labels):
        name = f"{k}_x.jpg"
        _png(root / "images" / name, k)
        lines.append(f"{k},http://farm1.staticflickr.com/1/{name},{label},{'test' if k % 4 == 0 else 'train'}")
    (root / "flickr_style.csv.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    ds = load_style_dataset("flickr", data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    rows = list(_rows(ds))
    assert len(rows) == len(labels)
    for split, path, label, _ in rows:
        k = int(path.name.split("_")[0])
        assert label == labels[k] and split == ("test" if k % 4 == 0 else "train"), path
