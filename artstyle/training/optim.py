"""Optimiser construction: parameter groups (no weight decay on biases/norms/tokens; layer-wise LR decay),
AdamW or LARS, and the per-step `set_learning_rate`.

Only parameters with ``requires_grad`` are optimised (the teacher inside
`ArtStyleForPretraining` is frozen and follows the student by EMA). Biases, normalisation
weights (every 1-d parameter), position embeddings, class/register tokens, layer embeddings and
learned queries get no weight decay, as in timm, MoCo v3 and DINO.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from timm.optim import param_groups_layer_decay
from torch import nn

__all__ = ["LARS", "NO_DECAY_KEYWORDS", "build_optimizer", "layer_decay_param_groups", "param_groups_no_decay",
           "set_learning_rate", "set_optimizer_values", "split_decay_parameters"]

# Substrings of parameter names that are tokens/embeddings rather than weights.
NO_DECAY_KEYWORDS = ("pos_embed", "cls_token", "reg_token", "dist_token", "layer_embed", "query")


def _module_no_weight_decay(model: nn.Module) -> set[str]:
    """Full names listed by modules' own ``no_weight_decay()`` (timm's convention)."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        method = getattr(module, "no_weight_decay", None)
        if callable(method) and not isinstance(module, torch.optim.Optimizer):
            try:
                listed = method()
            except TypeError:
                continue
            names.update(f"{prefix}.{n}" if prefix else n for n in listed)
    return names


def split_decay_parameters(
    model: nn.Module, no_decay_keywords: Iterable[str] = NO_DECAY_KEYWORDS
) -> tuple[list[str], list[str]]:
    """Names of trainable parameters (``requires_grad``) with and without weight decay."""
    listed = _module_no_weight_decay(model)
    keywords = tuple(no_decay_keywords)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if param.ndim <= 1 or leaf == "bias" or name in listed or any(k in name for k in keywords):
            no_decay.append(name)
        else:
            decay.append(name)
    return decay, no_decay


def param_groups_no_decay(
    model: nn.Module, weight_decay: float, no_decay_keywords: Iterable[str] = NO_DECAY_KEYWORDS
) -> list[dict]:
    """Two optimiser groups of the trainable parameters: with ``weight_decay`` and with 0.

    Each group carries ``apply_weight_decay`` (bool) and ``lr_scale`` (1.0) so that
    `set_optimizer_values` can apply per-step schedules.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    decay, no_decay = split_decay_parameters(model, no_decay_keywords)
    if not decay and not no_decay:
        raise ValueError("the model has no parameter with requires_grad=True to optimise")
    params = dict(model.named_parameters())
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay, "apply_weight_decay": True,
         "lr_scale": 1.0},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0, "apply_weight_decay": False,
         "lr_scale": 1.0},
    ]
    return [g for g in groups if g["params"]]


class LARS(torch.optim.Optimizer):
    """LARS (You et al., 2017) as used by MoCo v3 for ViTs: SGD with momentum and a layer-wise
    trust ratio ``eta * ||w|| / ||g + wd * w||``. Parameters of dimension 1 (biases, norms) get
    neither weight decay nor the trust ratio.
    """

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or trust_coefficient <= 0:
            raise ValueError(
                f"invalid LARS settings: lr={lr}, weight_decay={weight_decay}, momentum={momentum}, "
                f"trust_coefficient={trust_coefficient}"
            )
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                    "trust_coefficient": trust_coefficient}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    param_norm = torch.linalg.vector_norm(p)
                    update_norm = torch.linalg.vector_norm(update)
                    one = torch.ones_like(param_norm)
                    ratio = torch.where(
                        param_norm > 0,
                        torch.where(update_norm > 0, group["trust_coefficient"] * param_norm / update_norm, one),
                        one,
                    )
                    update = update.mul(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
        return loss


def build_optimizer(param_groups: list[dict], name: str = "adamw", lr: float = 1.5e-4,
                    betas: tuple[float, float] = (0.9, 0.95), momentum: float = 0.9) -> torch.optim.Optimizer:
    """``"adamw"`` (torch AdamW, ``fused=True``: one kernel for every parameter instead of a Python loop over them and
    a handful of kernels each, on CUDA and CPU alike) or ``"lars"`` (`LARS`) over the given groups."""
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, fused=True)
    if name == "lars":
        return LARS(param_groups, lr=lr, momentum=momentum)
    raise ValueError(f"optimizer must be 'adamw' or 'lars', got {name!r}")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None = None) -> None:
    """Apply this step's learning rate (times each group's ``lr_scale``) and, if given, weight decay (to the
    groups with ``apply_weight_decay``; the others keep theirs)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if weight_decay is not None and group.get("apply_weight_decay", True):
            group["weight_decay"] = weight_decay


set_optimizer_values = set_learning_rate  # former name


def layer_decay_param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None) -> list[dict]:
    """Optimizer parameter groups with layer-wise LR decay (BEiT / MAE fine-tuning); each group has an ``lr_scale``.

    Backbone parameters (``model.artstyle.backbone``, a timm ViT) are grouped by timm's
    `param_groups_layer_decay`: patch embedding and position embedding get
    ``layer_decay ** depth``, block ``i`` ``layer_decay ** (depth - 1 - i)``, the last block and the
    final norm 1.0. Every other trainable parameter (fusion, Gram, pooler, classifier) gets scale 1.0.
    1-d parameters and the backbone's ``no_weight_decay()`` set get no weight decay.
    ``layer_decay`` None or 1.0 gives plain weight-decay / no-decay groups.
    """
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    backbone = getattr(getattr(model, "artstyle", model), "backbone", None)
    groups: list[dict] = []
    seen: set[int] = set()
    if backbone is not None and layer_decay is not None and layer_decay < 1.0:
        no_decay = backbone.no_weight_decay() if hasattr(backbone, "no_weight_decay") else ()
        groups = param_groups_layer_decay(
            backbone, weight_decay=weight_decay, no_weight_decay_list=list(no_decay), layer_decay=layer_decay
        )
        seen = {id(p) for group in groups for p in group["params"]}
    decay, no_decay_params = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        is_no_decay = param.ndim <= 1 or name.endswith(("cls_token", "pos_embed", "reg_token"))
        (no_decay_params if is_no_decay else decay).append(param)
    for params, wd in ((decay, weight_decay), (no_decay_params, 0.0)):
        if params:
            groups.append({"params": params, "weight_decay": wd, "lr_scale": 1.0})
    return groups
