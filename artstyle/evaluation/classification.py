"""Scoring a classifier and the metrics plumbing of ``run_finetune.py``.

`predict_scores` runs a classifier over a dataloader (gathered over processes), `compute_metrics` applies the
style metrics (`artstyle.metrics`: accuracy, top-5, macro-F1, mAP, confusion matrix; multi-label protocol
for multi-hot references) and `scalar_metrics` flattens them into ``<prefix>_<name>`` floats.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from ..metrics import load_style_metrics

__all__ = ["SCALAR_METRICS", "compute_metrics", "predict_scores", "scalar_metrics", "scores_from_logits"]

SCALAR_METRICS = ("accuracy", "top5_accuracy", "macro_f1", "mean_average_precision")


def scores_from_logits(logits: torch.Tensor, multi_label: bool) -> np.ndarray:
    """Class scores for the metrics: sigmoid for multi-label heads, softmax otherwise."""
    logits = logits.float()
    probs = logits.sigmoid() if multi_label else logits.softmax(dim=-1)
    return probs.cpu().numpy()


@torch.no_grad()
def predict_scores(model, dataloader, accelerator, multi_label_model: bool) -> tuple[np.ndarray, np.ndarray]:
    """Class scores (softmax, or sigmoid for a multi-label model) and references over ``dataloader``,
    gathered from every process with ``accelerator.gather_for_metrics``; all-bad (``None``) batches skipped."""
    model.eval()
    scores, references = [], []
    for batch in dataloader:
        if batch is None:
            continue
        logits = model(pixel_values=batch["pixel_values"]).logits
        logits, labels = accelerator.gather_for_metrics((logits, batch["labels"]))
        scores.append(scores_from_logits(logits, multi_label_model))
        references.append(labels.cpu().numpy())
    if not scores:
        raise ValueError("the evaluation split gave no decodable images")
    return np.concatenate(scores), np.concatenate(references)


@functools.lru_cache(maxsize=2)
def _style_metric(multi_label: bool):
    return load_style_metrics(multi_label=multi_label, keep_in_memory=True)


def compute_metrics(scores: np.ndarray, references: np.ndarray, multi_label: bool, metric=None) -> dict[str, Any]:
    """The style metrics of ``scores`` ``[N, K]`` against ``references`` (class ids, or multi-hot rows
    when ``multi_label``)."""
    metric = metric or _style_metric(multi_label)
    if multi_label:
        references = (np.asarray(references) > 0.5).astype(np.int32)
    else:
        references = np.asarray(references).astype(np.int64)
    return metric.compute(predictions=scores.astype(np.float32), references=references)


def scalar_metrics(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """``{"<prefix>_accuracy": ..., ...}`` for the scalar metrics present in ``metrics``."""
    return {f"{prefix}_{key}": float(metrics[key]) for key in SCALAR_METRICS if metrics.get(key) is not None}
