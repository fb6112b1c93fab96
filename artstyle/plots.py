"""Figures for evaluation reports: confusion matrix, per-class accuracy, search contact sheet.

All functions write a PNG with matplotlib's non-interactive Agg backend (no display needed) and
return the path written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    # A bare Figure uses the Agg canvas on savefig and never touches pyplot's global state.
    return Figure(figsize=(width, height), dpi=100)


def _check_matrix(confusion: Sequence[Sequence[int]], class_names: Sequence[str]) -> np.ndarray:
    matrix = np.asarray(confusion, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {matrix.shape}")
    if len(class_names) != matrix.shape[0]:
        raise ValueError(
            f"class_names has {len(class_names)} names but the confusion matrix has {matrix.shape[0]} classes"
        )
    return matrix


def per_class_accuracy(confusion: Sequence[Sequence[int]]) -> np.ndarray:
    """Recall of each class (diagonal / row sum); NaN for classes with no examples."""
    matrix = np.asarray(confusion, dtype=np.float64)
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / totals, np.nan)


def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: str | Path,
    *,
    normalize: bool = True,
    title: str = "Confusion matrix",
) -> Path:
    """Heat map of ``confusion`` (rows true, columns predicted); rows normalised to recall if ``normalize``.

    Cells are annotated with the value when there are at most 20 classes.
    """
    matrix = _check_matrix(confusion, class_names)
    shown = matrix
    if normalize:
        totals = matrix.sum(axis=1, keepdims=True)
        shown = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    size = max(4.0, 0.45 * len(class_names) + 2.5)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=list(class_names), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(ticks, labels=list(class_names), fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(class_names) <= 20:
        threshold = shown.max() / 2 if shown.size else 0
        for i in range(shown.shape[0]):
            for j in range(shown.shape[1]):
                text = f"{shown[i, j]:.2f}" if normalize else f"{int(matrix[i, j])}"
                color = "white" if shown[i, j] > threshold else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=6, color=color)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_per_class_accuracy(
    confusion: Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: str | Path,
    *,
    title: str = "Per-class accuracy",
) -> Path:
    """Horizontal bar chart of each class's accuracy (recall), with the mean as a dashed line."""
    _check_matrix(confusion, class_names)
    accuracy = per_class_accuracy(confusion)
    fig = _figure(6.0, max(2.5, 0.3 * len(class_names) + 1.2))
    ax = fig.add_subplot()
    positions = np.arange(len(class_names))
    ax.barh(positions, np.nan_to_num(accuracy), color="tab:blue")
    ax.set_yticks(positions, labels=list(class_names), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (recall)")
    if np.isfinite(accuracy).any():
        ax.axvline(np.nanmean(accuracy), color="tab:red", linestyle="--", label="mean")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_contact_sheet(
    query_image,
    neighbours: Sequence[tuple[object, str]],
    path: str | Path,
    *,
    query_title: str = "query",
    columns: int = 5,
) -> Path:
    """Query image, then its neighbours in a grid; ``neighbours`` are ``(PIL image, caption)`` pairs."""
    cells = [(query_image, query_title), *neighbours]
    columns = max(1, min(columns, len(cells)))
    rows = -(-len(cells) // columns)
    fig = _figure(2.2 * columns, 2.4 * rows)
    for index, (image, caption) in enumerate(cells):
        ax = fig.add_subplot(rows, columns, index + 1)
        ax.imshow(np.asarray(image))
        ax.set_title(caption, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


__all__ = ["per_class_accuracy", "plot_confusion_matrix", "plot_contact_sheet", "plot_per_class_accuracy"]
