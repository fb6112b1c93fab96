import pytest
import torch
from torch import nn

from artstyle.training import (
    LARS,
    build_optimizer,
    param_groups_no_decay,
    set_optimizer_values,
    split_decay_parameters,
)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.bn = nn.BatchNorm1d(8)
        self.layer_embed = nn.Parameter(torch.zeros(3, 8))
        self.teacher = nn.Linear(8, 8)
        self.teacher.requires_grad_(False)


def test_no_decay_on_bias_norm_tokens_and_frozen_teacher_excluded():
    decay, no_decay = split_decay_parameters(Toy())
    assert decay == ["proj.weight"]
    assert set(no_decay) == {"pos_embed", "cls_token", "proj.bias", "norm.weight", "norm.bias", "bn.weight",
                             "bn.bias", "layer_embed"}
    groups = param_groups_no_decay(Toy(), 0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert [len(g["params"]) for g in groups] == [1, 8]
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups_no_decay(Toy(), -1.0)


def test_timm_no_weight_decay_is_respected():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1)
    decay, no_decay = split_decay_parameters(vit)
    assert "pos_embed" in no_decay and "cls_token" in no_decay
    assert "blocks.0.attn.qkv.weight" in decay and "blocks.0.attn.qkv.bias" in no_decay
    assert "blocks.0.norm1.weight" in no_decay


def test_set_optimizer_values_keeps_no_decay_group_at_zero():
    opt = build_optimizer(param_groups_no_decay(Toy(), 0.05), "adamw", lr=1.0)
    opt.param_groups[1]["lr_scale"] = 0.5
    set_optimizer_values(opt, lr=0.1, weight_decay=0.3)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.05]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.0]
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer(param_groups_no_decay(Toy(), 0.0), "sgdx")


def test_lars_step_matches_hand_reference():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w, b], "weight_decay": 0.1}], lr=0.5, momentum=0.9, trust_coefficient=0.01)
    w.grad = torch.tensor([[0.7, 0.6]])
    b.grad = torch.tensor([2.0])
    opt.step()
    update = torch.tensor([[0.7, 0.6]]) + 0.1 * torch.tensor([[3.0, 4.0]])  # [[1.0, 1.0]]
    ratio = 0.01 * 5.0 / update.norm()
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0, 4.0]]) - 0.5 * ratio * update)
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 0.5 * 2.0]))  # 1-d: plain SGD, no decay
    b.grad = torch.tensor([2.0])
    opt.step()  # momentum: mu = 0.9 * 2 + 2
    torch.testing.assert_close(b.detach(), torch.tensor([0.0 - 0.5 * 3.8]))
