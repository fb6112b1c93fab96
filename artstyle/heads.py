"""Projection heads: the MoCo v3 projector/predictor and light per-layer MLPs for many blocks at once."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLPHead(nn.Sequential):
    """MoCo v3 MLP (Chen et al., 2021): ``num_layers`` Linear layers, BatchNorm + ReLU between them.

    ``last_bn=True`` ends with an affine-free BatchNorm (the MoCo v3 projector). Under multi-process training convert
    with ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` (single-process behaviour stays identical).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, last_bn: bool):
        layers: list[nn.Module] = []
        for index in range(num_layers):
            dim_in = in_dim if index == 0 else hidden_dim
            dim_out = out_dim if index == num_layers - 1 else hidden_dim
            layers.append(nn.Linear(dim_in, dim_out, bias=False))
            if index < num_layers - 1:
                layers += [nn.BatchNorm1d(dim_out), nn.ReLU(inplace=True)]
            elif last_bn:
                layers.append(nn.BatchNorm1d(dim_out, affine=False))
        super().__init__(*layers)


class ProjectorHead(MLPHead):
    """Projector G: 3 layers, last BatchNorm without affine."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(in_dim, hidden_dim, out_dim, num_layers=3, last_bn=True)


class PredictorHead(MLPHead):
    """Predictor h (student only): 2 layers."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__(dim, hidden_dim, dim, num_layers=2, last_bn=False)


class PerLayerMLP(nn.Module):
    """``L`` independent 2-layer MLPs (Linear → LayerNorm-free GELU → Linear) applied in one batched matmul.

    Input ``[L, B, in_dim]`` → output ``[L, B, out_dim]``. One einsum for all layers keeps heads for 12 blocks cheap
    (no Python loop of small kernels).
    """

    def __init__(self, num_layers: int, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.weight1 = nn.Parameter(torch.empty(num_layers, in_dim, hidden_dim))
        self.bias1 = nn.Parameter(torch.zeros(num_layers, 1, hidden_dim))
        self.weight2 = nn.Parameter(torch.empty(num_layers, hidden_dim, out_dim))
        self.bias2 = nn.Parameter(torch.zeros(num_layers, 1, out_dim))
        self.act = nn.GELU()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for weight in (self.weight1, self.weight2):
            nn.init.trunc_normal_(weight, std=1.0 / math.sqrt(weight.shape[1]))
        nn.init.zeros_(self.bias1)
        nn.init.zeros_(self.bias2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act(torch.baddbmm(self.bias1, x, self.weight1))
        return torch.baddbmm(self.bias2, hidden, self.weight2)
