"""Attention-guided layer fusion (DESIGN §1.1) and the learnable Gram style module (§1.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNormPerLayer(nn.Module):
    """A separate LayerNorm for each of ``L`` layer tokens, ``[B, L, D]`` → ``[B, L, D]``, in one call."""

    def __init__(self, num_layers: int, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_layers, dim))
        self.bias = nn.Parameter(torch.zeros(num_layers, dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight + self.bias


class AttentionLayerFusion(nn.Module):
    """Fuse the CLS tokens of several blocks by self-attention across the layer sequence.

    Input ``[B, L, D]`` (one CLS token per chosen block). Each token gets its own LayerNorm and a learned layer
    embedding, then multi-head self-attention over the ``L`` layers (residual + LayerNorm): every output token is an
    attention-weighted fusion of all chosen layers. An attention pooling with a learned query (``with_pooling``) turns
    the fused tokens into one multi-scale vector ``f``.

    Returns ``(fused [B, L, D], layer_weights [B, L, L], f [B, D] | None, pool_weights [B, L] | None)``; the weights
    are averaged over heads (row = the layer that attends).
    """

    def __init__(self, num_layers: int, dim: int, num_heads: int, with_pooling: bool):
        super().__init__()
        self.input_norm = LayerNormPerLayer(num_layers, dim)
        self.layer_embedding = nn.Parameter(torch.zeros(1, num_layers, dim))
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.output_norm = nn.LayerNorm(dim, eps=1e-6)
        if with_pooling:
            self.pool_query = nn.Parameter(torch.zeros(1, 1, dim))
            self.pool_attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
            self.pool_norm = nn.LayerNorm(dim, eps=1e-6)
        else:
            self.pool_query = None

    def forward(self, layer_tokens: torch.Tensor):
        x = self.input_norm(layer_tokens) + self.layer_embedding
        attended, layer_weights = self.attention(x, x, x, need_weights=True, average_attn_weights=True)
        fused = self.output_norm(x + attended)
        if self.pool_query is None:
            return fused, layer_weights, None, None
        query = self.pool_query.expand(fused.shape[0], -1, -1)
        pooled, pool_weights = self.pool_attention(query, fused, fused, need_weights=True, average_attn_weights=True)
        return fused, layer_weights, self.pool_norm(pooled[:, 0]), pool_weights[:, 0]


class LearnableGram(nn.Module):
    """Learnable Gram matrix of patch tokens (the paper's LGSE).

    ``A = P·Wa``, ``B = P·Wb`` (``C`` channels each), ``G = Aᵀ·B / N`` (``[B, C, C]``), then signed square root and
    L2 normalisation over the flattened matrix. ``style_dim`` given: also a linear projection of the flattened Gram
    matrix to a style vector ``s``.
    """

    def __init__(self, dim: int, gram_dim: int, style_dim: int | None):
        super().__init__()
        self.proj_a = nn.Linear(dim, gram_dim, bias=False)
        self.proj_b = nn.Linear(dim, gram_dim, bias=False)
        self.style_proj = nn.Linear(gram_dim * gram_dim, style_dim) if style_dim else None

    def gram(self, tokens: torch.Tensor) -> torch.Tensor:
        a, b = self.proj_a(tokens).float(), self.proj_b(tokens).float()
        gram = a.transpose(1, 2) @ b / tokens.shape[1]
        gram = gram.sign() * (gram.abs() + 1e-12).sqrt()
        return F.normalize(gram.flatten(1), dim=1).view_as(gram)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        gram = self.gram(tokens)
        if self.style_proj is None:
            return gram, None
        return gram, self.style_proj(gram.flatten(1).to(self.style_proj.weight.dtype))
