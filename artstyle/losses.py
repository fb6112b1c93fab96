"""Losses of the artstyle method, one ``nn.Module`` each, plus the distributed gather they share.

Every loss takes already L2-normalised embeddings (except the Gram MSE) and is computed in float32, whatever the
autocast dtype: small temperatures overflow in half precision.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------------------------------------- distributed helpers
def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def gather_from_all(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``tensor`` (``[n_i, ...]``) from every process, in rank order, without gradient.

    Works with different ``n_i`` per process (short last batches). Returns the gathered tensor and the offset of this
    process's rows in it. Single process (or no process group): returns the tensor itself and 0.
    """
    rank, world = _world()
    if world == 1:
        return tensor, 0
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    max_size = max(sizes)
    padded = tensor.new_zeros((max_size, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    chunks = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(chunks, padded.contiguous())
    gathered = torch.cat([chunk[:n] for chunk, n in zip(chunks, sizes)], dim=0)
    return gathered, sum(sizes[:rank])


def _float32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.float() for t in tensors]


# ---------------------------------------------------------------------------------------------- InfoNCE
class InfoNCELoss(nn.Module):
    """InfoNCE (van den Oord et al., 2018; MoCo v3, Chen et al., 2021) with in-batch negatives.

    ``query``: ``[B, D]`` or ``[L, B, D]`` (one InfoNCE per leading index ``L``, averaged);
    ``keys``: the gathered keys ``[M, D]`` / ``[L, M, D]`` from every process; the positive of query ``i`` is key
    ``offset + i``. Inputs are L2-normalised.
    """

    def __init__(self, temperature: float):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, query: torch.Tensor, keys: torch.Tensor, offset: int = 0) -> torch.Tensor:
        query, keys = _float32(query, keys)
        logits = query @ keys.transpose(-1, -2) / self.temperature
        targets = torch.arange(query.shape[-2], device=query.device) + offset
        if logits.dim() == 2:
            return F.cross_entropy(logits, targets)
        num_layers = logits.shape[0]
        return F.cross_entropy(logits.flatten(0, 1), targets.repeat(num_layers))


# ---------------------------------------------------------------------------------------------- soft contrastive
class SoftContrastiveLoss(nn.Module):
    """Similarity-aware soft contrastive loss with a queue (SCL/ASCL: Feng & Patras, 2022; MoCo v2 queue).

    ``q``: student predictions ``[B, D]``; ``p``: teacher keys of the other view ``[B, D]`` (positives);
    ``negatives``: queue ``[K, D]``. Student logits ``[q·p, q·negativesᵀ] / tau_student``. Soft target:
    ``normalize_L1(alpha·onehot(0) + (1 - alpha)·w·softmax(p·negativesᵀ / tau_teacher))`` where the positive slot is
    left out of the softmax, ``w = 1`` (``mode="soft"``) or the teacher confidence ``1 - H/log K`` (``mode="ascl"``).
    Loss: cross-entropy between the soft target and the student softmax. ``alpha = 1`` is InfoNCE with a queue.

    Without a queue (``negatives=None``) the negatives are the gathered teacher keys of the batch (MoCo v3):
    ``keys [M, D]`` with the positive of row ``i`` at ``offset + i``.
    """

    def __init__(self, tau_student: float, tau_teacher: float, alpha: float, mode: str = "soft"):
        super().__init__()
        if tau_student <= 0 or tau_teacher <= 0:
            raise ValueError("tau_student and tau_teacher must be positive")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if mode not in ("soft", "ascl"):
            raise ValueError(f"mode must be 'soft' or 'ascl', got {mode!r}")
        self.tau_student, self.tau_teacher, self.alpha, self.mode = tau_student, tau_teacher, alpha, mode

    def forward(self, q: torch.Tensor, p: torch.Tensor, negatives: torch.Tensor | None = None,
                keys: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
        q, p = _float32(q, p)
        if negatives is not None and negatives.shape[0] > 0:
            negatives = negatives.float()
            logits = torch.cat([(q * p).sum(-1, keepdim=True), q @ negatives.T], dim=1) / self.tau_student
            positive = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
            teacher_sim = torch.cat([p.new_zeros(p.shape[0], 1), p @ negatives.T], dim=1) / self.tau_teacher
        else:
            keys = p if keys is None else keys.float()
            logits = q @ keys.T / self.tau_student
            positive = torch.arange(q.shape[0], device=q.device) + offset
            teacher_sim = p @ keys.T / self.tau_teacher
        if self.alpha == 1.0:
            return F.cross_entropy(logits, positive)
        onehot = F.one_hot(positive, logits.shape[1]).float()
        teacher_sim = teacher_sim.masked_fill(onehot.bool(), float("-inf"))  # the positive slot is not a neighbour
        neighbours = teacher_sim.softmax(dim=1)
        if self.mode == "ascl":
            num_neighbours = logits.shape[1] - 1
            entropy = -(neighbours * neighbours.clamp_min(1e-12).log()).sum(1, keepdim=True)
            neighbours = neighbours * (1.0 - entropy / math.log(max(num_neighbours, 2)))
        target = self.alpha * onehot + (1.0 - self.alpha) * neighbours
        target = target / target.sum(1, keepdim=True)
        return -(target * logits.log_softmax(dim=1)).sum(1).mean()


# ---------------------------------------------------------------------------------------------- Gram
class GramMSELoss(nn.Module):
    """Squared error between a student Gram matrix and a (stop-gradient) teacher Gram matrix, ``[B, C, C]``.

    Summed over the ``C×C`` entries and averaged over the batch: with L2-normalised Gram matrices this is
    ``2 - 2·cos`` and lies in [0, 4] whatever ``C`` (a per-entry mean would shrink it by ``C²``).
    Gram matrices for style: Gatys et al., 2016; the paper's L_LGSE.
    """

    def forward(self, student_gram: torch.Tensor, teacher_gram: torch.Tensor) -> torch.Tensor:
        student_gram, teacher_gram = _float32(student_gram, teacher_gram.detach())
        return (student_gram - teacher_gram).pow(2).flatten(1).sum(1).mean()


__all__ = ["InfoNCELoss", "SoftContrastiveLoss", "GramMSELoss", "gather_from_all"]
