"""Frozen features of an artstyle encoder: `get_encoder`, `extract_features`."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["extract_features", "get_encoder"]


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
