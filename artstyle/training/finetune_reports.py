"""Evaluation and reports of ``run_finetune.py``.

The metrics of a split (classifier head, or weighted kNN on frozen features), flattened for
``all_results.json`` with the per-class average precision named by class; the training transform with the
script's flip option; ``all_results.json`` and the charts (confusion matrix, per-class accuracy, the 2-D
embedding map of the test split coloured by label).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..evaluation import StyleData, compute_metrics, extract_features, knn_scores, predict_scores, scalar_metrics
from ..plots import plot_confusion_matrix, plot_embedding_map, plot_per_class_accuracy

__all__ = [
    "evaluate",
    "knn_evaluate",
    "per_class_average_precision",
    "split_results",
    "write_embedding_map",
    "write_reports",
]

logger = logging.getLogger(__name__)


def evaluate(model, loaders: dict[str, DataLoader], accelerator: Accelerator, data: StyleData,
             split: str = "eval") -> dict[str, Any]:
    """Metrics of ``model`` on ``loaders[split]`` (multi-label protocol where that split is multi-hot)."""
    scores, references = predict_scores(model, loaders[split], accelerator, data.multi_label_train)
    return compute_metrics(scores, references, data.eval_columns[split][1])


def knn_evaluate(model, loaders: dict[str, DataLoader], accelerator: Accelerator, data: StyleData,
                 train_args, split: str = "eval") -> dict[str, Any]:
    """Weighted kNN of the frozen ``pooler_output`` features of ``split`` against the training features."""
    scores, references = knn_scores(model, loaders["train_features"], loaders[split], len(data.label_names),
                                    accelerator, k=train_args.knn_k, temperature=train_args.knn_temperature)
    return compute_metrics(scores.numpy(), references.numpy(), data.eval_columns[split][1])


def per_class_average_precision(metrics: dict[str, Any], label_names: list[str]) -> dict[str, float | None] | None:
    """``{class name: AP}`` from the metrics' per-class ``average_precision`` (None for a class without a
    positive); None when the metric module returned none. Classes beyond ``label_names`` are named by index."""
    values = metrics.get("average_precision")
    if values is None:
        return None
    names = [label_names[i] if i < len(label_names) else str(i) for i in range(len(values))]
    return {name: None if value is None else float(value) for name, value in zip(names, values)}


def split_results(metrics: dict[str, Any], prefix: str, data: StyleData) -> dict[str, Any]:
    """What ``all_results.json`` holds for one split: ``<prefix>_<scalar metric>``, ``<prefix>_average_precision``
    (per class, when computed) and ``<prefix>_details`` (every metric)."""
    results: dict[str, Any] = dict(scalar_metrics(metrics, prefix))
    per_class = per_class_average_precision(metrics, data.label_names)
    if per_class is not None:
        results[f"{prefix}_average_precision"] = per_class
    results[f"{prefix}_details"] = metrics
    return results


def write_embedding_map(model, loaders: dict[str, DataLoader], accelerator: Accelerator, data: StyleData,
                        output_dir: str | Path, split: str = "test") -> Path | None:
    """``embedding_map_<split>.png``: PCA map of the encoder's ``pooler_output`` features of ``split``,
    coloured by label. Call on every process (the features are gathered); the main process draws it.

    Skipped (None) when ``split`` has no loader or is scored multi-label (AVA style tags); rows without a
    class (label < 0) are left out.
    """
    if split not in loaders or data.eval_columns[split][1]:
        return None
    with accelerator.autocast():
        features, labels = extract_features(model, loaders[split], accelerator)
    if not accelerator.is_main_process or labels is None:
        return None
    keep = labels >= 0
    path = Path(output_dir) / f"embedding_map_{split}.png"
    try:
        plot_embedding_map(features[keep].float(), labels[keep].to(torch.long).numpy(), data.label_names, path,
                           title=f"{split} split: {int(keep.sum())} images, pooler_output (PCA)")
    except ValueError as err:  # too few images or non-finite features: no map, the run's results stand
        logger.warning("No embedding map of the %s split: %s", split, err)
        return None
    return path


def write_reports(output_dir: Path, results: dict[str, Any], final_metrics: dict[str, Any], data: StyleData,
                  save_plots: bool = True) -> None:
    """``all_results.json`` and, for single-label evaluation, the two charts (main process)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "all_results.json", "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    if save_plots and final_metrics.get("confusion_matrix") is not None:
        plot_confusion_matrix(final_metrics["confusion_matrix"], data.label_names, output_dir / "confusion_matrix.png")
        plot_per_class_accuracy(final_metrics["confusion_matrix"], data.label_names,
                                output_dir / "per_class_accuracy.png")
