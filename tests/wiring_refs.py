"""Hand references for the wiring tests (tests/test_wiring.py), written with plain float64 torch ops / numpy from
the modules' weights, read by their state-dict names. They never call the forward of the module they stand for, so a
wiring mistake in the model cannot cancel out in the comparison.

What they rely on (the spec, DESIGN.md §1): heads are Linear / BatchNorm1d / ReLU / GELU stacks (BatchNorm uses
batch statistics in training mode), per-layer MLPs hold ``weight1 [L, in, h]``, ``bias1``, ``weight2``, ``bias2``,
the fusion is "LayerNorm per layer + layer embedding → multi-head self-attention across layers → residual →
LayerNorm", then an attention pooling with a learned query.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

EPS = 1e-6  # LayerNorm eps of timm ViTs and of the fusion


def f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def layer_norm(x, weight=None, bias=None, eps=EPS):
    x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
    if weight is not None:
        x = x * f64(weight)
    if bias is not None:
        x = x + f64(bias)
    return x


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


# ---------------------------------------------------------------------------------------------- heads
def mlp_head(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A Linear/BatchNorm1d/ReLU/GELU stack, leaf by leaf, by hand (batch statistics when the BN is training)."""
    x = f64(x)
    leaves = [m for m in module.modules() if not list(m.children())]
    assert leaves, "head has no layers"
    for leaf in leaves:
        if isinstance(leaf, nn.Linear):
            x = x @ f64(leaf.weight).T + (f64(leaf.bias) if leaf.bias is not None else 0.0)
        elif isinstance(leaf, nn.BatchNorm1d):
            if leaf.training:
                mean, var = x.mean(0), x.var(0, unbiased=False)
            else:
                mean, var = f64(leaf.running_mean), f64(leaf.running_var)
            x = (x - mean) / torch.sqrt(var + leaf.eps)
            if leaf.affine:
                x = x * f64(leaf.weight) + f64(leaf.bias)
        elif isinstance(leaf, nn.ReLU):
            x = x.clamp_min(0.0)
        elif isinstance(leaf, nn.GELU):
            x = gelu(x)
        elif isinstance(leaf, (nn.Identity, nn.Dropout)):
            pass
        else:
            raise TypeError(f"no hand reference for head layer {type(leaf).__name__}")
    return x


def per_layer_mlp(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``L`` independent 2-layer MLPs (GELU between), input ``[L, B, in]``."""
    p = {name: f64(value) for name, value in module.named_parameters()}
    hidden = gelu(f64(x) @ p["weight1"] + p["bias1"])
    return hidden @ p["weight2"] + p["bias2"]


# ---------------------------------------------------------------------------------------------- fusion
def multi_head_attention(attention: nn.MultiheadAttention, query, key_value, num_heads: int):
    """``nn.MultiheadAttention`` (batch first, packed in-projection) by hand: (output, weights averaged over heads)."""
    w, b = f64(attention.in_proj_weight), f64(attention.in_proj_bias)
    dim = w.shape[1]
    q = query @ w[:dim].T + b[:dim]
    k = key_value @ w[dim:2 * dim].T + b[dim:2 * dim]
    v = key_value @ w[2 * dim:].T + b[2 * dim:]
    head = dim // num_heads

    def split(t):  # [B, T, D] -> [B, H, T, d]
        return t.view(t.shape[0], t.shape[1], num_heads, head).transpose(1, 2)

    weights = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(head)).softmax(-1)
    out = (weights @ split(v)).transpose(1, 2).reshape(query.shape[0], query.shape[1], dim)
    out = out @ f64(attention.out_proj.weight).T + f64(attention.out_proj.bias)
    return out, weights.mean(1)


def fusion(module: nn.Module, layer_tokens: torch.Tensor, num_heads: int, residual: bool = True) -> dict:
    """The attention-guided layer fusion of DESIGN §1.1 from ``module``'s weights; ``layer_tokens`` ``[B, L, D]``.

    Returns ``fused [B, L, D]``, ``layer_weights [B, L, L]`` and, when the module pools, ``pooled [B, D]`` and
    ``pool_weights [B, L]``. ``residual=False`` is the known bug, to show the test can tell them apart.
    """
    p = dict(module.named_parameters())
    x = layer_norm(f64(layer_tokens), p["input_norm.weight"], p["input_norm.bias"]) + f64(p["layer_embedding"])
    attended, layer_weights = multi_head_attention(module.attention, x, x, num_heads)
    fused = layer_norm(x + attended if residual else attended, p["output_norm.weight"], p["output_norm.bias"])
    out = {"fused": fused, "layer_weights": layer_weights}
    if "pool_query" in p:
        query = f64(p["pool_query"]).expand(fused.shape[0], -1, -1)
        pooled, pool_weights = multi_head_attention(module.pool_attention, query, fused, num_heads)
        out["pooled"] = layer_norm(pooled[:, 0], p["pool_norm.weight"], p["pool_norm.bias"])
        out["pool_weights"] = pool_weights[:, 0]
    return out


# ---------------------------------------------------------------------------------------------- Gram
def gram(module: nn.Module, patch_tokens: torch.Tensor) -> torch.Tensor:
    """``A = P·Wa``, ``B = P·Wb``, ``G = AᵀB / N``, signed square root, L2 over the flattened matrix."""
    p = dict(module.named_parameters())
    tokens = f64(patch_tokens)
    a, b = tokens @ f64(p["proj_a.weight"]).T, tokens @ f64(p["proj_b.weight"]).T
    g = a.transpose(1, 2) @ b / tokens.shape[1]
    g = torch.sign(g) * torch.sqrt(g.abs())
    return (g.flatten(1) / g.flatten(1).norm(dim=1, keepdim=True)).view_as(g)


# ---------------------------------------------------------------------------------------------- losses (numpy)
def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def infonce(query: np.ndarray, keys: np.ndarray, tau: float, offset: int = 0) -> float:
    """InfoNCE, positive of row ``i`` = key ``offset + i``; ``[L, B, D]`` queries: mean over ``L``."""
    if query.ndim == 3:
        keys = keys if keys.ndim == 3 else np.broadcast_to(keys, (query.shape[0], *keys.shape))
        return float(np.mean([infonce(q, k, tau, offset) for q, k in zip(query, keys)]))
    log_prob = _log_softmax(query @ keys.T / tau)
    return float(-np.mean([log_prob[i, offset + i] for i in range(len(query))]))


def soft_in_batch(q: np.ndarray, p: np.ndarray, keys: np.ndarray, offset: int, tau_s: float, tau_t: float,
                  alpha: float, mode: str) -> float:
    """Soft contrast without a queue, row by row: positive of row ``i`` = column ``offset + i`` of the gathered keys,
    the other gathered keys are the neighbours (teacher softmax over them only; ASCL scales by 1 - H/log(M-1))."""
    losses = []
    for i in range(len(q)):
        positive = offset + i
        others = np.delete(np.arange(len(keys)), positive)
        sims = keys[others] @ p[i] / tau_t
        neighbours = np.exp(sims - sims.max())
        neighbours /= neighbours.sum()
        if mode == "ascl":
            entropy = -(neighbours * np.log(neighbours)).sum()
            neighbours = neighbours * (1.0 - entropy / math.log(max(len(others), 2)))
        target = np.zeros(len(keys))
        target[positive] = alpha
        target[others] = (1.0 - alpha) * neighbours
        target /= target.sum()
        losses.append(-(target * _log_softmax(keys @ q[i] / tau_s)).sum())
    return float(np.mean(losses))


def gram_mse(student: torch.Tensor, teacher: torch.Tensor) -> float:
    return float((f64(student) - f64(teacher)).pow(2).flatten(1).sum(1).mean())
