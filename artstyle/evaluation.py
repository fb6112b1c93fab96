"""Evaluation of style representations: feature extraction, kNN, linear probe, layer-wise LR decay.

Used by ``run_finetune.py`` and importable on their own (tests, notebooks, benchmarks):

- `extract_features` runs a (frozen) encoder over a dataloader and returns ``pooler_output`` features.
- `knn_classify` is the weighted k-nearest-neighbour classifier of DINO (Caron et al. 2021): cosine
  similarity, the ``k`` nearest training features vote for their class with weight
  ``exp(similarity / temperature)``.
- `train_linear_probe` fits a linear classifier on frozen features and folds the feature
  standardisation into its weights, so the result can be copied into the classification head.
- `layer_decay_param_groups` builds optimizer groups with layer-wise learning-rate decay
  (BEiT / MAE fine-tuning) from timm's `param_groups_layer_decay` on the ViT backbone.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def get_encoder(model: nn.Module) -> nn.Module:
    """The `ArtStyleModel` inside ``model`` (a classifier or pretraining model), or ``model`` itself."""
    return getattr(model, "artstyle", model)


@torch.no_grad()
def extract_features(model: nn.Module, dataloader, accelerator=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the encoder over ``dataloader`` and return ``(features [N, D] float32, labels or None)``.

    ``model`` may be an `ArtStyleModel` or any model with an ``.artstyle`` encoder (unwrapped from
    DDP by ``accelerator``). Batches are dicts with ``pixel_values`` and optionally ``labels``;
    ``None`` batches (every image undecodable) are skipped. Under several processes, features are
    gathered with ``accelerator.gather_for_metrics`` so every process gets the whole set, in order.
    """
    encoder = get_encoder(accelerator.unwrap_model(model) if accelerator is not None else model)
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    features, labels = [], []
    for batch in dataloader:
        if batch is None:
            continue
        pixel_values = batch["pixel_values"].to(device)
        feats = encoder(pixel_values=pixel_values).pooler_output.float()
        batch_labels = batch.get("labels")
        if accelerator is not None:
            feats = accelerator.gather_for_metrics(feats)
            if batch_labels is not None:
                batch_labels = accelerator.gather_for_metrics(batch_labels.to(device))
        features.append(feats.cpu())
        if batch_labels is not None:
            labels.append(batch_labels.cpu())
    encoder.train(was_training)
    if not features:
        raise ValueError("extract_features: the dataloader gave no decodable images")
    return torch.cat(features), (torch.cat(labels) if labels else None)


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


def layer_decay_param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None) -> list[dict]:
    """Optimizer parameter groups with layer-wise LR decay; each group has an ``lr_scale``.

    Backbone parameters (``model.artstyle.backbone``, a timm ViT) are grouped by timm's
    `param_groups_layer_decay`: patch embedding and position embedding get
    ``layer_decay ** depth``, block ``i`` ``layer_decay ** (depth - 1 - i)``, the last block and the
    final norm 1.0. Every other trainable parameter (fusion, Gram, pooler, classifier) gets scale 1.0.
    1-d parameters and the backbone's ``no_weight_decay()`` set get no weight decay.
    ``layer_decay`` None or 1.0 gives plain weight-decay / no-decay groups.
    """
    from timm.optim import param_groups_layer_decay

    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    backbone = getattr(get_encoder(model), "backbone", None)
    groups: list[dict] = []
    seen: set[int] = set()
    if backbone is not None and layer_decay is not None and layer_decay < 1.0:
        no_decay = backbone.no_weight_decay() if hasattr(backbone, "no_weight_decay") else ()
        groups = param_groups_layer_decay(
            backbone, weight_decay=weight_decay, no_weight_decay_list=list(no_decay), layer_decay=layer_decay
        )
        seen = {id(p) for group in groups for p in group["params"]}
    decay, no_decay_params = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        is_no_decay = param.ndim <= 1 or name.endswith(("cls_token", "pos_embed", "reg_token"))
        (no_decay_params if is_no_decay else decay).append(param)
    for params, wd in ((decay, weight_decay), (no_decay_params, 0.0)):
        if params:
            groups.append({"params": params, "weight_decay": wd, "lr_scale": 1.0})
    return groups


def scores_from_logits(logits: torch.Tensor, multi_label: bool) -> np.ndarray:
    """Class scores for the metrics: sigmoid for multi-label heads, softmax otherwise."""
    logits = logits.float()
    probs = logits.sigmoid() if multi_label else logits.softmax(dim=-1)
    return probs.cpu().numpy()


__all__ = [
    "extract_features",
    "get_encoder",
    "knn_classify",
    "layer_decay_param_groups",
    "scores_from_logits",
    "train_linear_probe",
]
