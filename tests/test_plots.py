"""artstyle.plots: files written, the drawn values equal the inputs, clear errors."""

import numpy as np
import pytest
from PIL import Image

from artstyle import plots


def _bar_heights(fig):
    return np.array([patch.get_height() for patch in fig.axes[0].patches])


def test_fusion_weights_bars_match_input_and_file(tmp_path):
    weights = np.array([0.1, 0.5, 0.15, 0.25])
    fig = plots.fusion_weights_figure(weights, layers=[2, 5, 8, 11])
    np.testing.assert_allclose(_bar_heights(fig), weights)
    labels = [tick.get_text() for tick in fig.axes[0].get_xticklabels()]
    assert labels == ["3", "6", "9", "12"]  # 0-based block indices shown 1-based
    path = plots.plot_fusion_weights(weights, tmp_path / "sub" / "fusion.png")
    assert path.is_file() and Image.open(path).size[0] > 100


def test_fusion_weights_accepts_a_torch_tensor():
    import torch

    fig = plots.fusion_weights_figure(torch.tensor([0.25, 0.75]))
    np.testing.assert_allclose(_bar_heights(fig), [0.25, 0.75])


@pytest.mark.parametrize(
    "weights, layers, message",
    [
        (np.ones((2, 3)), None, "1-D"),
        (np.array([]), None, "1-D"),
        (np.array([0.5, -0.1]), None, "non-negative"),
        (np.array([0.5, np.nan]), None, "finite"),
        (np.array([0.5, 0.5]), [1, 2, 3], "3 layer indices for 2"),
    ],
)
def test_fusion_weights_errors(weights, layers, message):
    with pytest.raises(ValueError, match=message):
        plots.fusion_weights_figure(weights, layers)


def test_gram_heatmap_shows_the_matrix_with_a_symmetric_range(tmp_path):
    gram = np.array([[0.5, -0.2, 0.0], [-0.2, 0.3, 0.1], [0.0, 0.1, -0.8]])
    fig = plots.gram_matrix_figure(gram)
    image = fig.axes[0].get_images()[0]
    np.testing.assert_allclose(np.asarray(image.get_array()), gram)
    assert image.get_clim() == pytest.approx((-0.8, 0.8))
    assert plots.plot_gram_matrix(gram, tmp_path / "gram.png").is_file()


@pytest.mark.parametrize("gram", [np.ones((2, 3)), np.ones(4), np.ones((1, 2, 2)), np.full((2, 2), np.inf)])
def test_gram_errors(gram):
    with pytest.raises(ValueError, match="Gram matrix"):
        plots.gram_matrix_figure(gram)


def _clusters(seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 5.0, 0]])
    labels = np.repeat(np.arange(3), 10)
    return centres[labels] + 0.1 * rng.standard_normal((30, 4)), labels


def test_embedding_map_pca_points_are_the_pca_coordinates_coloured_by_label(tmp_path):
    from sklearn.decomposition import PCA

    embeddings, labels = _clusters()
    fig, coords = plots.embedding_map_figure(embeddings, labels, ["a", "b", "c"], method="pca")
    np.testing.assert_allclose(coords, PCA(n_components=2).fit_transform(embeddings), atol=1e-8)
    collections = fig.axes[0].collections
    assert len(collections) == 3  # one scatter per class, in class order
    for class_id, collection in enumerate(collections):
        np.testing.assert_allclose(collection.get_offsets(), coords[labels == class_id])
        assert collection.get_label() == "abc"[class_id]
    colours = {tuple(np.round(c.get_facecolor()[0], 4)) for c in collections}
    assert len(colours) == 3
    assert plots.plot_embedding_map(embeddings, labels, ["a", "b", "c"], tmp_path / "map.png").is_file()


def test_embedding_map_tsne_keeps_clusters_apart(tmp_path):
    embeddings, labels = _clusters()
    path = plots.plot_embedding_map(embeddings, labels, ["a", "b", "c"], tmp_path / "tsne.png", method="tsne")
    assert path.is_file()
    coords = plots.embed_2d(embeddings, method="tsne")
    centroids = np.stack([coords[labels == c].mean(0) for c in range(3)])
    spread = max(np.linalg.norm(coords[labels == c] - centroids[c], axis=1).max() for c in range(3))
    gaps = [np.linalg.norm(centroids[i] - centroids[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > spread  # well-separated input clusters stay separated


@pytest.mark.parametrize(
    "embeddings, labels, names, method, message",
    [
        (np.ones((2, 4)), [0, 1], ["a", "b"], "pca", r"N >= 3"),
        (np.ones((5, 4)), [0, 1], ["a", "b"], "pca", "one label per embedding"),
        (np.ones((3, 4)), [0, 1, 2], ["a", "b"], "pca", r"\[0, 1\]"),
        (np.random.rand(4, 4), [0, 1, 0, 1], ["a", "b"], "umap", "'pca' or 'tsne'"),
    ],
)
def test_embedding_map_errors(embeddings, labels, names, method, message):
    with pytest.raises(ValueError, match=message):
        plots.embedding_map_figure(embeddings, labels, names, method=method)


def _write_events(log_dir, steps, scale, terms=plots.LOSS_TERMS):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(log_dir))
    for step in steps:
        for offset, term in enumerate(terms):
            writer.add_scalar(f"train/{term}", scale * step + offset, global_step=step)
        writer.add_scalar("train/lr", 1e-4, global_step=step)
    writer.close()


def test_training_curves_plot_every_logged_loss_term(tmp_path):
    _write_events(tmp_path / "runs" / "artstyle_pretrain", steps=[1, 2, 3], scale=1.0,
                  terms=("loss", "loss_contrastive", "loss_gram"))
    scalars = plots.read_logged_scalars(tmp_path)
    assert set(scalars) == {"train/loss", "train/loss_contrastive", "train/loss_gram", "train/lr"}
    np.testing.assert_array_equal(scalars["train/loss_gram"][0], [1, 2, 3])
    np.testing.assert_allclose(scalars["train/loss_gram"][1], [3.0, 4.0, 5.0])

    path = plots.plot_training_curves(tmp_path, tmp_path / "curves.png")
    assert path.is_file()
    fig = plots.training_curves_figure({term: scalars[f"train/{term}"] for term in ("loss", "loss_gram")})
    assert [ax.get_title() for ax in fig.axes] == ["loss", "loss_gram"]
    x, y = fig.axes[1].get_lines()[0].get_data()
    np.testing.assert_array_equal(x, [1, 2, 3])
    np.testing.assert_allclose(y, [3.0, 4.0, 5.0])


def test_training_curves_merge_a_resumed_run_and_mark_switched_off_terms(tmp_path):
    import os
    import time

    _write_events(tmp_path / "runs" / "a", steps=[1, 2, 3], scale=1.0, terms=("loss",))
    time.sleep(0.01)
    _write_events(tmp_path / "runs" / "b", steps=[3, 4], scale=10.0, terms=("loss",))
    first, second = sorted((tmp_path / "runs").rglob("events.out.tfevents.*"))
    os.utime(second, ns=(first.stat().st_mtime_ns + 10**9,) * 2)  # the resumed run is the newer file
    steps, values = plots.read_logged_scalars(tmp_path)["train/loss"]
    np.testing.assert_array_equal(steps, [1, 2, 3, 4])
    np.testing.assert_allclose(values, [1.0, 2.0, 30.0, 40.0])  # step 3 from the later file

    fig = plots.training_curves_figure({"loss": (steps, values), "loss_gram": (steps, np.zeros(4))})
    assert fig.axes[1].get_title() == "loss_gram (switched off)"


def test_training_curves_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="log folder not found"):
        plots.plot_training_curves(tmp_path / "missing", tmp_path / "c.png")
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        plots.plot_training_curves(tmp_path, tmp_path / "c.png")
    _write_events(tmp_path / "runs", steps=[1], scale=1.0, terms=("other",))
    with pytest.raises(ValueError, match="no loss terms"):
        plots.plot_training_curves(tmp_path, tmp_path / "c.png")
    with pytest.raises(ValueError, match="no loss curves"):
        plots.training_curves_figure({})


def test_retrieval_sheet_draws_queries_then_neighbours_in_order(tmp_path):
    from matplotlib.image import AxesImage

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(5)]
    rows = [(images[0], "query 1", [(images[1], "n1 0.9"), (images[2], "n2 0.8")]),
            (images[3], "query 2", [(images[4], "n1 0.7")])]
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    captured = []
    original = Figure.savefig

    def spy(self, *args, **kwargs):
        captured.append(self)
        return original(self, *args, **kwargs)

    Figure.savefig = spy
    try:
        path = plots.plot_retrieval_sheet(rows, tmp_path / "sheet.png", title="kNN")
    finally:
        Figure.savefig = original
    assert path.is_file()
    axes = captured[0].axes
    assert len(axes) == 5  # the short second row leaves its last cell empty
    drawn = [ax.get_images()[0] for ax in axes]
    assert all(isinstance(image, AxesImage) for image in drawn)
    for image, expected in zip(drawn, [images[0], images[1], images[2], images[3], images[4]]):
        np.testing.assert_array_equal(np.asarray(image.get_array()), expected)
    assert [ax.get_title() for ax in axes] == ["query 1", "n1 0.9", "n2 0.8", "query 2", "n1 0.7"]
    with pytest.raises(ValueError, match="at least one query"):
        plots.plot_retrieval_sheet([], tmp_path / "empty.png")
