"""Attention-guided layer fusion and the layer-wise contrast (see docs/method.md, "Layer fusion").

The fusion's parameters live at ``artstyle.fusion.*`` (inside [`ArtStyleModel`]); the per-layer projector of the
layer-wise contrast at ``layer_projector.*`` / ``teacher.layer_projector.*`` (inside [`ArtStyleForPretraining`]):
those attribute paths are the checkpoint format, so this module provides the classes and the loss, and the model
registers them there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .heads import PerLayerMLP
from .losses import InfoNCELoss, gather_from_all


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
    """Attention-guided layer fusion: the CLS tokens of ``L`` blocks attend to each other.

    ``x_l = LN_l(c_l) + e_l`` (a LayerNorm and a learned embedding per layer), then one multi-head self-attention
    across the layer sequence with a residual: ``F = LN(X + MHA(X, X, X))`` — every fused token ``F_l`` is an
    attention-weighted mix of all chosen layers. With ``with_pooling``, a learned query ``u`` pools them into the
    multi-scale vector ``f = LN(MHA(u, F, F))``.

    Input ``[B, L, D]`` (one CLS token per chosen block). Returns ``(fused [B, L, D], layer_weights [B, L, L],
    f [B, D] | None, pool_weights [B, L] | None)``; the weights are averaged over heads (row = the layer that attends).
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


class LayerwiseContrast(PerLayerMLP):
    """Layer-wise contrast: one light projector ``g_l`` per fused layer token and an InfoNCE per layer.

    ``z_l = normalize(g_l(F_l))`` for the student and (twin projector, no gradient) ``k_l`` for the momentum teacher of
    the other view; ``L_layer = 1/L · Σ_l InfoNCE(z_l, k_l; τ_layerwise)`` with in-batch negatives gathered over
    processes (the positive of sample ``i`` is the teacher token of the same image at the same layer).
    Parameters: those of [`PerLayerMLP`] (``L`` two-layer MLPs ``D → layer_head_dim → projection_dim``).
    """

    def __init__(self, num_layers: int, dim: int, hidden_dim: int, out_dim: int, temperature: float):
        super().__init__(num_layers, dim, hidden_dim, out_dim)
        self.nce = InfoNCELoss(temperature)

    def embed(self, fused: torch.Tensor) -> torch.Tensor:
        """Fused tokens ``[B, L, D]`` → normalised float32 embeddings ``[L, B, P]``."""
        return F.normalize(self(fused.transpose(0, 1)).float(), dim=-1)

    def loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``student`` ``[L, B, P]`` against the teacher embeddings ``[L, B, P]`` of the other view."""
        gathered, offset = gather_from_all(teacher.transpose(0, 1))
        return self.nce(student, gathered.transpose(0, 1), offset)


__all__ = ["AttentionLayerFusion", "LayerNormPerLayer", "LayerwiseContrast"]
