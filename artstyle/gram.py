"""Learnable Gram matrix and its loss (see docs/method.md, "Learnable Gram matrix").

The module's parameters live at ``artstyle.gram.*`` (inside [`ArtStyleModel`]); the student/teacher Gram loss is
[`GramMSELoss`] below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LearnableGram(nn.Module):
    """Learnable Gram matrix of patch tokens (the paper's LGSE).

    Patch tokens ``P`` (``[B, N, D]``): ``A = P·W_a``, ``B = P·W_b`` (``C`` channels each), ``G = Aᵀ·B / N``
    (``[B, C, C]``), then signed square root ``sign(G)·sqrt(|G| + 1e-12)`` and L2 normalisation over the flattened
    matrix. ``style_dim`` given: also a linear projection ``s = W_s·vec(G)`` of the flattened matrix (the style vector
    of the ``"fused_style"`` pooler).
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


class GramMSELoss(nn.Module):
    """Squared error between a student Gram matrix and a (stop-gradient) teacher Gram matrix, ``[B, C, C]``.

    ``L_gram = 1/B · Σ_b ‖G_student,b − sg(G_teacher,b)‖²_F`` (float32): summed over the ``C×C`` entries and averaged
    over the batch. With L2-normalised Gram matrices this is ``2 − 2·cos`` and lies in [0, 4] whatever ``C`` (a
    per-entry mean would shrink it by ``C²``). Gram matrices for style: Gatys et al., 2016; the paper's L_LGSE.
    """

    def forward(self, student_gram: torch.Tensor, teacher_gram: torch.Tensor) -> torch.Tensor:
        student_gram, teacher_gram = student_gram.float(), teacher_gram.detach().float()
        return (student_gram - teacher_gram).pow(2).flatten(1).sum(1).mean()


class GramContrastiveLoss(nn.Module):
    """InfoNCE between student and (stop-gradient) teacher Gram matrices: the Gram term with negatives.

    ``g_b = vec(G_student,b)``, ``k_j = vec(sg(G_teacher,j))`` (both already L2-normalised by [`LearnableGram`]);
    ``L = −1/B · Σ_b log softmax_j(g_b·k_j / τ)[offset + b]`` over the teacher Gram matrices ``k`` of the whole
    (gathered) batch. Unlike [`GramMSELoss`], whose minimum is reached when every image has the same Gram matrix,
    this term is lowest when an image's Gram matrix is closer to its other view's than to any other image's, so the
    learned style statistics cannot collapse to a constant. ``config.gram_loss = "infonce"`` (our departure from
    the paper's MSE; see docs/method.md).
    """

    def __init__(self, temperature: float):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, student_gram: torch.Tensor, teacher_grams: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """``student_gram`` ``[B, C, C]``; ``teacher_grams`` ``[M, C, C]`` gathered over processes (``M >= B``).
        Or stacked ``[V, B, C, C]`` / ``[V, M, C, C]``: ``V`` independent InfoNCE terms (each against its own keys)
        in one batched call, averaged."""
        query = student_gram.flatten(-2).float()
        keys = teacher_grams.detach().flatten(-2).float()
        logits = query @ keys.transpose(-1, -2) / self.temperature
        targets = torch.arange(query.shape[-2], device=query.device) + offset
        if logits.dim() == 2:
            return F.cross_entropy(logits, targets)
        return F.cross_entropy(logits.flatten(0, 1), targets.repeat(logits.shape[0]))


__all__ = ["LearnableGram", "GramMSELoss", "GramContrastiveLoss"]
