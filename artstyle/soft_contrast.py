"""Similarity-aware soft contrast with a queue of teacher keys (see docs/method.md, "Soft contrast").

[`SoftContrastiveLoss`] is the loss; [`KeyQueue`] the FIFO queue of negatives. [`ArtStyleForPretraining`] keeps its
queue as its own buffers ``queue`` / ``queue_ptr`` (the checkpoint format fixes those names, and a child module would
prefix them) and writes them with the same [`enqueue_keys`] that `KeyQueue.enqueue` uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SoftContrastiveLoss(nn.Module):
    """Similarity-aware soft contrastive loss with a queue (SCL/ASCL: Feng & Patras, 2022; MoCo v2 queue).

    ``q``: student predictions ``[B, D]``; ``p``: teacher keys of the other view ``[B, D]`` (positives);
    ``negatives``: queue ``[K, D]``. Student logits ``[q·p, q·negativesᵀ] / tau_student``. Soft target:
    ``normalize_L1(alpha·onehot(0) + (1 - alpha)·w·softmax(p·negativesᵀ / tau_teacher))`` where the positive slot is
    left out of the softmax, ``w = 1`` (``mode="soft"``) or the teacher confidence ``1 - H/log K`` (``mode="ascl"``).
    Loss: cross-entropy between the soft target and the student softmax. ``alpha = 1`` is InfoNCE with a queue.

    Without a queue (``negatives=None``) the negatives are the gathered teacher keys of the batch (MoCo v3):
    ``keys [M, D]`` with the positive of row ``i`` at ``offset + i``. Inputs are L2-normalised; computed in float32.
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
        q, p = q.float(), p.float()
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
        if self.alpha == 1.0 or logits.shape[1] == 1:  # no neighbour left besides the positive: one-hot target
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


@torch.no_grad()
def enqueue_keys(queue: torch.Tensor, queue_ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """Ring-buffer write of ``keys`` ``[n, D]`` into ``queue`` ``[K, D]`` at ``queue_ptr``, in place.

    Slot of key ``j``: ``(ptr + j) mod K``; the pointer advances to ``(ptr + n) mod K``. Any ``n`` (no divisibility
    assumption); ``n > K`` keeps the last ``K`` keys, written as if all ``n`` had been enqueued one by one.
    The pointer stays on the device (no read into Python: no synchronisation per step on a GPU).
    """
    size = queue.shape[0]
    count = keys.shape[0]
    pointer = queue_ptr.to(keys.device)
    if count > size:
        pointer = (pointer + (count - size)) % size
        keys, count = keys[-size:], size
    index = (pointer + torch.arange(count, device=keys.device)) % size
    queue.index_copy_(0, index.to(queue.device), keys.to(queue.dtype))
    queue_ptr.copy_((pointer + count) % size)


class KeyQueue(nn.Module):
    """FIFO queue of ``size`` L2-normalised teacher keys (MoCo v2): the negatives of the soft contrast.

    Buffers: ``queue`` ``[size, dim]`` (random unit rows at start) and ``queue_ptr`` (next slot to write).
    ``enqueue(keys)`` writes the gathered keys of the global batch after both symmetric loss terms (so the keys of
    a batch are never its own negatives); identical on every process.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"KeyQueue size must be a positive integer, got {size!r}")
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def enqueue(self, keys: torch.Tensor) -> None:
        enqueue_keys(self.queue, self.queue_ptr, keys)

    def negatives(self) -> torch.Tensor:
        """A detached copy of the queue (the loss must not see the in-place update that follows it)."""
        return queue_snapshot(self.queue)


@torch.compiler.disable
def queue_snapshot(queue: torch.Tensor) -> torch.Tensor:
    """A detached copy of ``queue``, made outside any compiled graph.

    The loss reads the copy; the in-place enqueue after the loss writes the buffer. Under ``torch.compile`` a copy made
    inside the graph may be rematerialised in the backward from the buffer itself, which the enqueue has changed by
    then ("modified by an inplace operation"); a copy made eagerly is a separate graph input that nothing mutates.
    """
    return queue.detach().clone()


__all__ = ["SoftContrastiveLoss", "KeyQueue", "enqueue_keys", "queue_snapshot"]
