"""Multi-layer self-distillation (see docs/method.md, "Multi-layer self-distillation").

Its two per-layer heads live at ``distill_projector.*`` and ``distill_predictor.*`` of [`ArtStyleForPretraining`]
(the checkpoint format fixes those paths), so the model registers the heads and passes them in; this module owns the
layer choice, the forward through the heads and the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .heads import PerLayerMLP
from .losses import InfoNCELoss


class MultiLayerSelfDistillation(nn.Module):
    """Multi-layer self-distillation: intermediate student blocks predict the final teacher key of the OTHER view.

    For every chosen block ``l`` the student CLS token ``c_l`` goes through a light projector and predictor,
    ``d_l = normalize(h_l(g_l(c_l)))``; the target is the momentum teacher's final key ``p`` of the other view (the
    same key the soft contrast uses), so ``L_distill = 1/L · Σ_l InfoNCE(d_l, p; τ_distill)`` with in-batch negatives
    gathered over processes. No parameters of its own: ``projector`` / ``predictor`` are [`PerLayerMLP`] heads with
    one MLP per entry of ``layers``.
    """

    def __init__(self, layers: list[int], temperature: float):
        super().__init__()
        self.layers = list(layers)
        self.nce = InfoNCELoss(temperature)

    @staticmethod
    def build_heads(num_layers: int, dim: int, hidden_dim: int, out_dim: int) -> tuple[PerLayerMLP, PerLayerMLP]:
        """The projector ``D → hidden → out`` and predictor ``out → hidden → out``, one MLP per distilled layer."""
        return PerLayerMLP(num_layers, dim, hidden_dim, out_dim), PerLayerMLP(num_layers, out_dim, hidden_dim, out_dim)

    def forward(self, layer_cls: dict[int, torch.Tensor], projector: PerLayerMLP,
                predictor: PerLayerMLP) -> torch.Tensor:
        """CLS tokens by block index (``[B, D]`` each) → normalised float32 predictions ``[L, B, P]``."""
        tokens = torch.stack([layer_cls[i] for i in self.layers], dim=0)
        return F.normalize(predictor(projector(tokens)).float(), dim=-1)

    def loss(self, predictions: torch.Tensor, teacher_keys: torch.Tensor, offset: int) -> torch.Tensor:
        """``predictions`` ``[L, B, P]``; ``teacher_keys`` ``[M, P]``: the gathered teacher keys of the other view,
        the positive of row ``i`` at ``offset + i`` (shared by every layer). Both halves at once: ``[2, L, B, P]``
        against ``[2, 1, M, P]``."""
        return self.nce(predictions, teacher_keys, offset)


__all__ = ["MultiLayerSelfDistillation"]
