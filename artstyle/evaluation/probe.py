"""Linear probe: a linear classifier fitted on frozen features."""

from __future__ import annotations

import torch
from torch import nn

from .features import extract_features

__all__ = ["fit_linear_probe", "train_linear_probe"]


def train_linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int = 100,
    learning_rate: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    multi_label: bool = False,
    seed: int = 0,
) -> nn.Linear:
    """Fit a linear classifier on frozen ``features`` ``[N, D]``; return it acting on raw features.

    Training runs on standardised features (per-dimension mean/std of the training set), AdamW with
    a cosine learning rate; the standardisation is then folded into the returned layer's weight and
    bias, so ``layer(features)`` gives the trained logits and the layer can replace the
    classification head of the encoder that produced the features.
    Loss: cross-entropy for class ids, binary cross-entropy for multi-hot ``labels`` (``multi_label``).
    """
    if len(features) != len(labels):
        raise ValueError(f"got {len(features)} features but {len(labels)} labels")
    if len(features) == 0:
        raise ValueError("train_linear_probe needs at least one training feature")
    generator = torch.Generator().manual_seed(seed)
    features = features.float()
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False).clamp_min(1e-6)
    standardized = (features - mean) / std
    targets = labels.float() if multi_label else labels.long()

    layer = nn.Linear(features.shape[1], num_classes)
    nn.init.normal_(layer.weight, std=0.01, generator=generator)
    nn.init.zeros_(layer.bias)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=learning_rate, weight_decay=weight_decay)
    steps_per_epoch = -(-len(features) // batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    loss_fn = nn.BCEWithLogitsLoss() if multi_label else nn.CrossEntropyLoss()
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(features), batch_size):
            index = order[start : start + batch_size]
            loss = loss_fn(layer(standardized[index]), targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()

    folded = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        folded.weight.copy_(layer.weight / std)
        folded.bias.copy_(layer.bias - (layer.weight * (mean / std)).sum(dim=1))
    return folded


def fit_linear_probe(model: nn.Module, train_loader, accelerator, num_classes: int, *, multi_label: bool = False,
                     seed: int = 0, **probe_kwargs) -> nn.Linear:
    """Freeze ``model``, extract its training features once, fit `train_linear_probe` and copy the head into
    ``model.classifier`` (the encoder's weights stay unchanged); returns the head."""
    model.requires_grad_(False)
    features, labels = extract_features(model, train_loader, accelerator)
    head = train_linear_probe(features, labels, num_classes, multi_label=multi_label, seed=seed, **probe_kwargs)
    classifier = accelerator.unwrap_model(model).classifier
    with torch.no_grad():
        classifier.weight.copy_(head.weight.to(classifier.weight))
        classifier.bias.copy_(head.bias.to(classifier.bias))
    return head
