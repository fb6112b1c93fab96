"""Weighted k-nearest-neighbour classification of frozen features (DINO, Caron et al. 2021), and the
kNN accuracy of an encoder used by the online monitor of ``run_pretrain.py --eval_every``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .features import extract_features

__all__ = ["knn_accuracy", "knn_classify", "knn_scores"]


@torch.no_grad()
def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Weighted kNN class scores ``[M, num_classes]`` for ``query_features`` (DINO's protocol).

    Features are L2-normalised; each query's ``k`` most similar training features (cosine) vote
    for their class with weight ``exp(cos / temperature)``. ``train_labels`` are class ids ``[N]``
    or multi-hot rows ``[N, num_classes]`` (a neighbour then votes for each of its classes).
    The scores are the summed votes, normalised to sum to one per query.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if len(train_features) != len(train_labels):
        raise ValueError(f"got {len(train_features)} train features but {len(train_labels)} train labels")
    train = F.normalize(train_features.float(), dim=1)
    if train_labels.ndim == 1:
        if train_labels.numel() and (train_labels.min() < 0 or train_labels.max() >= num_classes):
            raise ValueError(f"train_labels must be class ids in [0, {num_classes})")
        train_targets = F.one_hot(train_labels.long(), num_classes).float()
    else:
        train_targets = train_labels.float()
    k = min(k, len(train))
    scores = []
    for start in range(0, len(query_features), chunk_size):
        query = F.normalize(query_features[start : start + chunk_size].float(), dim=1)
        similarity, indices = (query @ train.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = (weights.unsqueeze(-1) * train_targets[indices]).sum(dim=1)
        scores.append(votes / votes.sum(dim=1, keepdim=True).clamp_min(1e-12))
    return torch.cat(scores) if scores else torch.zeros(0, num_classes)


def knn_accuracy(model: nn.Module, train_loader, eval_loader, num_classes: int, k: int = 20,
                 temperature: float = 0.07) -> float:
    """Top-1 accuracy of `knn_classify` on ``eval_loader``'s features against ``train_loader``'s
    (``pooler_output`` of ``model``'s encoder, in eval mode; the model's mode is restored). Uses no
    global random state, so calling it between training steps leaves training unchanged."""
    scores, labels = knn_scores(model, train_loader, eval_loader, num_classes, k=k, temperature=temperature)
    if labels is None:
        raise ValueError("knn_accuracy: the dataloaders must give labels")
    return float((scores.argmax(dim=1) == labels.long()).float().mean())


def knn_scores(model: nn.Module, train_loader, eval_loader, num_classes: int, accelerator=None, k: int = 20,
               temperature: float = 0.07) -> tuple[torch.Tensor, torch.Tensor]:
    """`knn_classify` scores of ``eval_loader``'s frozen ``pooler_output`` features against ``train_loader``'s,
    with the references: ``(scores [M, num_classes], labels [M] or [M, num_classes])``."""
    train_features, train_labels = extract_features(model, train_loader, accelerator)
    features, references = extract_features(model, eval_loader, accelerator)
    return knn_classify(train_features, train_labels, features, num_classes, k=k, temperature=temperature), references
