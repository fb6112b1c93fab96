"""InfoNCE and the distributed gather shared by the contrastive terms; the losses of every component, re-exported.

Each component's own loss lives with the component (see docs/method.md): [`SoftContrastiveLoss`] in
``soft_contrast.py``, [`GramMSELoss`] in ``gram.py``; the layer-wise contrast and the multi-layer self-distillation
are InfoNCE losses (below) wrapped in ``layer_fusion.py`` / ``distillation.py``. Every loss takes L2-normalised
embeddings (except the Gram MSE) and is computed in float32, whatever the autocast dtype: small temperatures overflow
in half precision.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .gram import GramMSELoss
from .soft_contrast import SoftContrastiveLoss


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


# ---------------------------------------------------------------------------------------------- InfoNCE
class InfoNCELoss(nn.Module):
    """InfoNCE (van den Oord et al., 2018; MoCo v3, Chen et al., 2021) with in-batch negatives.

    ``query``: ``[B, D]`` or ``[..., B, D]`` (one InfoNCE per leading index, averaged);
    ``keys``: the gathered keys ``[M, D]`` or ``[..., M, D]`` from every process, broadcast against the query's
    leading dimensions (``[V, 1, M, D]`` keys serve all ``L`` layers of ``[V, L, B, D]`` queries without a copy); the
    positive of query ``i`` is key ``offset + i``. Inputs are L2-normalised.
    """

    def __init__(self, temperature: float):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, query: torch.Tensor, keys: torch.Tensor, offset: int = 0) -> torch.Tensor:
        query, keys = query.float(), keys.float()
        logits = query @ keys.transpose(-1, -2) / self.temperature
        targets = torch.arange(query.shape[-2], device=query.device) + offset
        if logits.dim() == 2:
            return F.cross_entropy(logits, targets)
        terms = logits.numel() // (logits.shape[-2] * logits.shape[-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.repeat(terms))


__all__ = ["InfoNCELoss", "SoftContrastiveLoss", "GramMSELoss", "gather_from_all"]
