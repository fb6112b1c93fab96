"""Figures: confusion matrix, per-class accuracy, search sheets, and what the model sees in one image.

``plot_*`` functions write a PNG with matplotlib's non-interactive Agg backend (no display needed) and
return the path written. The ``*_figure`` functions return the matplotlib ``Figure`` itself (the app
shows those without a file); a figure is never registered with pyplot, so nothing leaks between calls.

- `plot_fusion_weights`: which layers the attention fusion drew on for one image (bar chart);
- `plot_gram_matrix`: the learned Gram matrix of one image (heat map);
- `plot_embedding_map`: a collection's embeddings in 2-D (PCA or t-SNE), coloured by label;
- `plot_training_curves`: every loss term logged by ``run_pretrain.py`` (TensorBoard events);
- `plot_contact_sheet` / `plot_retrieval_sheet`: nearest neighbours of one or several queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

LOSS_TERMS = ("loss", "loss_contrastive", "loss_layerwise", "loss_distill", "loss_gram")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    # A bare Figure uses the Agg canvas on savefig and never touches pyplot's global state.
    return Figure(figsize=(width, height), dpi=100)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


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


def plot_retrieval_sheet(
    queries: Sequence[tuple[object, str, Sequence[tuple[object, str]]]],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """kNN retrieval sheet: one row per query, ``(query image, caption, [(neighbour image, caption), ...])``.

    The query sits in the first column (red frame), its neighbours follow in rank order.
    """
    if not queries:
        raise ValueError("plot_retrieval_sheet needs at least one query")
    columns = 1 + max(len(neighbours) for _, _, neighbours in queries)
    fig = _figure(2.0 * columns, 2.2 * len(queries) + (0.4 if title else 0.0))
    for row, (query, caption, neighbours) in enumerate(queries):
        cells = [(query, caption), *neighbours]
        for column, (image, text) in enumerate(cells):
            ax = fig.add_subplot(len(queries), columns, row * columns + column + 1)
            ax.imshow(np.asarray(image))
            ax.set_title(text, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:
                for spine in ax.spines.values():
                    spine.set_edgecolor("tab:red")
                    spine.set_linewidth(2.5)
            else:
                ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- one image
def _as_numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def fusion_weights_figure(weights, layers: Sequence[int] | None = None, *, title: str = "Attention fusion over layers"):
    """Bar chart of one image's fusion weights ``[L]`` (which layers the attention drew on); returns the Figure.

    ``layers``: the backbone block of each weight (``config.resolved_fusion_layers()``, 0-based); the axis shows
    them 1-based ("block 1" is the first block).
    """
    values = _as_numpy(weights)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"fusion weights must be a non-empty 1-D array (one image), got shape {values.shape}")
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError("fusion weights must be finite and non-negative (attention probabilities)")
    layers = list(range(len(values))) if layers is None else list(layers)
    if len(layers) != len(values):
        raise ValueError(f"{len(layers)} layer indices for {len(values)} fusion weights")
    fig = _figure(max(3.5, 0.35 * len(values) + 1.5), 2.8)
    ax = fig.add_subplot()
    positions = np.arange(len(values))
    ax.bar(positions, values, color="tab:purple")
    ax.set_xticks(positions, labels=[str(layer + 1) for layer in layers], fontsize=8)
    ax.set_xlabel("backbone block")
    ax.set_ylabel("attention weight")
    ax.set_ylim(0, max(1e-6, float(values.max())) * 1.15)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_fusion_weights(weights, path: str | Path, layers: Sequence[int] | None = None, **kwargs) -> Path:
    """`fusion_weights_figure` written to ``path``."""
    return _save(fusion_weights_figure(weights, layers, **kwargs), path)


def gram_matrix_figure(gram, *, title: str = "Learned Gram matrix"):
    """Heat map of one image's Gram matrix ``[C, C]`` (diverging colours, symmetric range); returns the Figure."""
    matrix = _as_numpy(gram)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.size == 0:
        raise ValueError(f"a Gram matrix must be square 2-D (one image), got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("the Gram matrix holds NaN or infinite values")
    limit = max(float(np.abs(matrix).max()), 1e-12)
    fig = _figure(3.6, 3.1)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xlabel("channel (B)")
    ax.set_ylabel("channel (A)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_gram_matrix(gram, path: str | Path, **kwargs) -> Path:
    """`gram_matrix_figure` written to ``path``."""
    return _save(gram_matrix_figure(gram, **kwargs), path)


# ---------------------------------------------------------------------------------------------- a collection
def embed_2d(embeddings, method: str = "pca", seed: int = 0) -> np.ndarray:
    """``[N, 2]`` coordinates of ``[N, D]`` embeddings by scikit-learn PCA or t-SNE (perplexity ≤ (N - 1) / 3)."""
    points = _as_numpy(embeddings)
    if points.ndim != 2 or points.shape[0] < 3 or points.shape[1] < 2:
        raise ValueError(f"embeddings must be [N >= 3, D >= 2], got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("embeddings hold NaN or infinite values")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(points)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, max(1.0, (points.shape[0] - 1) / 3))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)
    raise ValueError(f"`method` must be 'pca' or 'tsne', got {method!r}")


def embedding_map_figure(embeddings, labels, class_names: Sequence[str], *, method: str = "pca", seed: int = 0,
                         title: str | None = None):
    """Scatter of the 2-D map of ``embeddings`` coloured by integer ``labels``; returns ``(Figure, coords [N, 2])``."""
    labels = np.asarray(labels)
    points = _as_numpy(embeddings)
    if labels.ndim != 1 or len(labels) != len(points):
        raise ValueError(f"labels must be 1-D with one label per embedding ({len(points)}), got shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels must lie in [0, {len(class_names) - 1}] (one per class name)")
    coords = embed_2d(points, method=method, seed=seed)
    fig = _figure(6.0, 4.8)
    ax = fig.add_subplot()
    colours = _class_colours(len(class_names))
    for class_id, name in enumerate(class_names):
        chosen = labels == class_id
        if chosen.any():
            ax.scatter(coords[chosen, 0], coords[chosen, 1], s=14, color=colours[class_id], label=name, alpha=0.85)
    ax.legend(fontsize=7, loc="best", markerscale=1.5)
    ax.set_xticks([])
    ax.set_yticks([])
    method_name = {"pca": "PCA", "tsne": "t-SNE"}[method]
    ax.set_title(title or f"Style embeddings ({method_name}, {len(points)} images)", fontsize=10)
    fig.tight_layout()
    return fig, coords


def _class_colours(count: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def plot_embedding_map(embeddings, labels, class_names: Sequence[str], path: str | Path, *, method: str = "pca",
                       seed: int = 0, title: str | None = None) -> Path:
    """2-D map (PCA or t-SNE) of a collection's embeddings ``[N, D]`` coloured by ``labels``, written to ``path``."""
    fig, _ = embedding_map_figure(embeddings, labels, class_names, method=method, seed=seed, title=title)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- training
def read_logged_scalars(log_dir: str | Path, prefix: str = "train/") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scalars logged to TensorBoard under ``log_dir`` (searched recursively): ``{tag: (steps, values)}``.

    Event files of a resumed run are merged; where two files hold the same step, the later file wins.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise FileNotFoundError(f"log folder not found: {log_dir}")
    files = sorted(log_dir.rglob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {log_dir} (was the run started with "
                                f"--report_to tensorboard?)")
    merged: dict[str, dict[int, float]] = {}
    for path in files:
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            if tag.startswith(prefix):
                series = merged.setdefault(tag, {})
                for event in accumulator.Scalars(tag):
                    series[int(event.step)] = float(event.value)
    return {tag: (np.array(sorted(series)), np.array([series[s] for s in sorted(series)]))
            for tag, series in merged.items()}


def training_curves_figure(curves: dict[str, tuple[Sequence[float], Sequence[float]]], *,
                           title: str = "Pretraining losses"):
    """One panel per loss term of ``{name: (steps, values)}``; a term that stays 0 is marked "switched off"."""
    if not curves:
        raise ValueError("no loss curves to plot")
    names = list(curves)
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    fig = _figure(3.6 * columns, 2.6 * rows + 0.4)
    for index, name in enumerate(names):
        steps, values = (np.asarray(v, dtype=np.float64) for v in curves[name])
        if steps.shape != values.shape or steps.ndim != 1:
            raise ValueError(f"curve {name!r}: steps and values must be 1-D of the same length")
        ax = fig.add_subplot(rows, columns, index + 1)
        ax.plot(steps, values, marker="." if len(steps) < 50 else None, color="tab:blue" if index else "black")
        off = len(values) > 0 and np.all(values == 0)
        ax.set_title(name + (" (switched off)" if off else ""), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_training_curves(pretrain_output_dir: str | Path, path: str | Path, *,
                         terms: Sequence[str] = LOSS_TERMS) -> Path:
    """Every loss term ``run_pretrain.py`` logged (``train/loss``, ``train/loss_contrastive`` ...) against the step.

    Reads the TensorBoard events under ``pretrain_output_dir`` (``<output_dir>/runs/...``); terms never logged are
    left out; raises FileNotFoundError without event files, ValueError when none of ``terms`` was logged.
    """
    scalars = read_logged_scalars(pretrain_output_dir)
    curves = {term: scalars[f"train/{term}"] for term in terms if f"train/{term}" in scalars}
    if not curves:
        raise ValueError(f"no loss terms {tuple(terms)} logged under {pretrain_output_dir} "
                         f"(found: {sorted(scalars) or 'none'})")
    return _save(training_curves_figure(curves), path)


__all__ = [
    "LOSS_TERMS",
    "embed_2d",
    "embedding_map_figure",
    "fusion_weights_figure",
    "gram_matrix_figure",
    "per_class_accuracy",
    "plot_confusion_matrix",
    "plot_contact_sheet",
    "plot_embedding_map",
    "plot_fusion_weights",
    "plot_gram_matrix",
    "plot_per_class_accuracy",
    "plot_retrieval_sheet",
    "plot_training_curves",
    "read_logged_scalars",
    "training_curves_figure",
]
