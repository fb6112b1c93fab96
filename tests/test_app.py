"""The browser app's logic (artstyle.app_support, app.py): what the page shows, and bad input as messages."""

import importlib.util
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
STYLES = ["pointillist", "flat_poster", "pixel_mosaic"]


def save_model(folder: Path, kind: str = "classifier", **overrides) -> Path:
    """A tiny artstyle folder with fusion and Gram modules: classifier, pretraining model, or bare encoder."""
    from artstyle import ArtStyleForImageClassification, ArtStyleForPretraining, ArtStyleModel, build_image_processor

    config = tiny_config(**{"pooler": "fused_style", **overrides})
    if kind == "classifier":
        config.id2label = dict(enumerate(STYLES))
        config.label2id = {name: i for i, name in enumerate(STYLES)}
        model = ArtStyleForImageClassification(config)
    else:
        model = {"pretraining": ArtStyleForPretraining, "encoder": ArtStyleModel}[kind](config)
    model.save_pretrained(folder)
    build_image_processor(config).save_pretrained(folder)
    return folder


def make_collection(folder: Path, per_style: int = 2) -> Path:
    from artstyle.data.demo import render_demo_image

    for style in STYLES:
        (folder / style).mkdir(parents=True, exist_ok=True)
        for index in range(per_style):
            render_demo_image(style, seed=1, index=index, image_size=48).save(folder / style / f"{index}.png")
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "classifier": save_model(root / "classifier"),
        "pretraining": save_model(root / "pretraining", "pretraining"),
        "cls": save_model(root / "cls", "classifier", pooler="cls"),
    }


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("collection"))


def reference_outputs(model_dir: Path, image: Image.Image):
    """Probabilities and encoder outputs computed the plain transformers way (independently of the app)."""
    from transformers import AutoImageProcessor

    from artstyle import ArtStyleForImageClassification

    model = ArtStyleForImageClassification.from_pretrained(model_dir).eval()
    pixels = AutoImageProcessor.from_pretrained(model_dir)(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probabilities = model(pixel_values=pixels).logits.softmax(-1)[0]
        encoder_output = model.artstyle(pixel_values=pixels)
    return probabilities, encoder_output


def test_classifier_page_shows_probabilities_fusion_gram_and_neighbours(models, collection):
    from artstyle.app_support import StyleApp

    app, report = StyleApp.from_paths(str(models["classifier"]), str(collection))
    assert "6 images (6 added" in report
    query = collection / "pixel_mosaic" / "1.png"
    result = app.analyze(str(query), top_k=2, neighbours=3)

    image = Image.open(query).convert("RGB")
    probabilities, encoder_output = reference_outputs(models["classifier"], image)
    order = torch.argsort(probabilities, descending=True).tolist()
    expected = {STYLES[i]: float(probabilities[i]) for i in order[:2]}
    assert list(result.label) == list(expected)
    assert list(result.label.values()) == pytest.approx(list(expected.values()), abs=1e-6)
    assert f"Predicted style: **{STYLES[order[0]]}**" in result.status

    heights = [patch.get_height() for patch in result.fusion.axes[0].patches]
    np.testing.assert_allclose(heights, encoder_output.fusion_pool_weights[0].numpy(), atol=1e-6)
    drawn = np.asarray(result.gram.axes[0].get_images()[0].get_array())
    np.testing.assert_allclose(drawn, encoder_output.gram[0].numpy(), atol=1e-6)

    assert len(result.gallery) == 3
    thumbnail, caption = result.gallery[0]
    assert caption == "1.000 · pixel_mosaic · pixel_mosaic/1.png"  # the query itself is in the collection
    np.testing.assert_array_equal(np.asarray(thumbnail), np.asarray(image))
    scores = [float(c.split(" · ")[0]) for _, c in result.gallery]
    assert scores == sorted(scores, reverse=True)


def test_pretraining_folder_is_embedding_only(models, collection):
    from artstyle.app_support import StyleApp

    app, _ = StyleApp.from_paths(str(models["pretraining"]), str(collection))
    result = app.analyze(Image.new("RGB", (40, 30), (200, 30, 30)))
    assert result.label is None
    assert "**Embedding only**" in result.status and "ArtStyleForPretraining" in result.status
    assert "no classifier" in result.status
    assert result.fusion is not None and result.gram is not None and len(result.gallery) == 6


def test_cls_pooler_shows_the_cross_layer_attention(models):
    from artstyle.app_support import StyleAnalyzer

    analyzer = StyleAnalyzer(models["cls"])
    image = Image.new("RGB", (32, 32), (10, 120, 200))
    analysis = analyzer.analyze(image)
    _, encoder_output = reference_outputs(models["cls"], image)
    assert encoder_output.fusion_pool_weights is None  # a "cls" pooler has no attention pooling
    assert analysis.fusion_source == "cross-layer"
    np.testing.assert_allclose(analysis.fusion_weights, encoder_output.fusion_weights[0].mean(0).numpy(), atol=1e-6)
    assert analysis.fusion_weights.sum() == pytest.approx(1.0, abs=1e-5)


def test_model_without_fusion_or_gram_says_so(tmp_path):
    from artstyle.app_support import Collection, StyleAnalyzer, StyleApp

    folder = save_model(tmp_path / "baseline", pooler="cls", weight_layerwise=0.0, weight_gram=0.0)
    analyzer = StyleAnalyzer(folder)
    result = StyleApp(analyzer, Collection(analyzer.embedder())).analyze(Image.new("RGB", (32, 32)))
    assert result.fusion is None and result.gram is None
    assert "no attention fusion" in result.status and "no Gram module" in result.status
    assert result.label is not None


def test_non_image_upload_gives_a_message(models, tmp_path):
    from artstyle.app_support import StyleApp

    app, _ = StyleApp.from_paths(str(models["classifier"]))
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a picture")
    result = app.analyze(str(text_file))
    assert result.status.startswith("⚠️ notes.txt is not an image this app can read")
    assert result.label is None and result.fusion is None and result.gram is None and result.gallery == []
    assert app.analyze(b"\x89PNG\r\n\x1a\n truncated").status.startswith("⚠️ the pasted data is not an image")
    assert app.analyze(None).status.startswith("⚠️ No image yet")
    assert app.analyze(Image.new("RGB", (32, 32))).label is not None  # and the next request is served


def _png_with_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IHDR")
    data[start + 4:start + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[start:start + 17]))
    data[start + 17:start + 21] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("width, height", [(10_000, 5_000), (100_000, 100_000)])
def test_huge_image_is_refused_before_decoding(models, tmp_path, width, height):
    from artstyle.app_support import DEFAULT_MAX_PIXELS, StyleApp

    app, _ = StyleApp.from_paths(str(models["classifier"]))
    bomb = _png_with_size(tmp_path / "bomb.png", width, height)
    assert bomb.stat().st_size < 200 and width * height > DEFAULT_MAX_PIXELS
    result = app.analyze(str(bomb))
    assert result.status.startswith("⚠️ The image bomb.png is too large to analyse (limit 40,000,000 pixels)")
    assert result.label is None
    small_limit = StyleApp(app.analyzer, app.collection, max_pixels=100)
    assert "too large" in small_limit.analyze(Image.new("RGB", (20, 20))).status


def test_empty_missing_and_absent_index_messages(models, tmp_path):
    from artstyle.app_support import StyleApp

    app, report = StyleApp.from_paths(str(models["classifier"]))
    assert report == "No collection indexed yet."
    image = Image.new("RGB", (32, 32), (0, 200, 0))
    assert app.analyze(image).gallery_note.startswith("⚠️ No collection indexed yet")

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    assert "is **empty**: no readable images found" in app.refresh_index(str(empty))
    result = app.analyze(image)
    assert result.gallery == [] and "is empty: add images" in result.gallery_note
    assert result.label is not None  # the rest of the page still works

    assert app.refresh_index(str(tmp_path / "missing")).startswith("⚠️ Folder not found")
    assert app.refresh_index("  ").startswith("⚠️ Type the path")


def test_refresh_is_incremental_and_shares_the_cli_index(models, tmp_path):
    from artstyle.app_support import StyleApp
    from artstyle.search import StyleIndex, model_fingerprint

    folder = make_collection(tmp_path / "works", per_style=1)
    (folder / "broken.png").write_bytes(b"not really a png")
    app, report = StyleApp.from_paths(str(models["classifier"]), str(folder))
    assert "3 images (3 added, 0 updated, 0 removed, 0 unchanged, 1 unreadable files skipped)" in report
    stored = StyleIndex.load(folder / ".artstyle-index")  # where `artstyle-similar --index folder` looks
    assert stored.model_fingerprint == model_fingerprint(model_dir=models["classifier"])
    assert sorted(stored.paths) == ["flat_poster/0.png", "pixel_mosaic/0.png", "pointillist/0.png"]
    Image.new("RGB", (40, 40), (255, 255, 0)).save(folder / "pointillist" / "new.png")
    assert "4 images (1 added, 0 updated, 0 removed, 3 unchanged" in app.refresh_index(str(folder))


def test_stored_embeddings_match_the_query_embedding(models, collection):
    from artstyle.app_support import StyleApp

    app, _ = StyleApp.from_paths(str(models["classifier"]), str(collection))
    index = app.collection.index
    for relative in index.paths[:2]:
        analysis = app.analyzer.analyze(Image.open(Path(index.root) / relative).convert("RGB"))
        np.testing.assert_allclose(index.embeddings[index.paths.index(relative)], analysis.embedding, atol=1e-5)


def load_app_module():
    spec = importlib.util.spec_from_file_location("artstyle_app_script", REPO / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_app_script_refuses_a_folder_that_is_not_a_model(tmp_path, capsys):
    app_script = load_app_module()
    assert app_script.main(["--model", str(tmp_path / "nowhere")]) == 2
    assert "folder not found" in capsys.readouterr().err
    assert app_script.main(["--model", str(tmp_path)]) == 2
    assert "not an artstyle model folder" in capsys.readouterr().err


def test_interface_builds_with_the_stock_image_front_end(models):
    import gradio as gr

    from artstyle.app_support import StyleApp, build_interface

    app, report = StyleApp.from_paths(str(models["classifier"]))
    page = build_interface(app, report)
    assert isinstance(page, gr.Blocks)
    blocks = {getattr(block, "elem_id", None): block for block in page.blocks.values()}
    for elem_id in ("query-image", "prediction", "fusion-plot", "gram-plot", "gallery", "index-folder"):
        assert elem_id in blocks
    image_input = blocks["query-image"]
    assert image_input.get_block_name() == "image"
    assert image_input.preprocess(None) is None
    assert not (REPO / "artstyle" / "app_support.pyi").exists()  # no Gradio stub written next to the source
    locked = build_interface(app, report, editable_index=False)
    locked_blocks = {getattr(block, "elem_id", None): block for block in locked.blocks.values()}
    assert locked_blocks["index-controls"].visible is False and blocks["index-controls"].visible is True


def test_demo_collection_is_written_once_per_style(tmp_path):
    from artstyle.app_support import write_demo_collection
    from artstyle.data.demo import DEMO_STYLES, render_demo_image

    folder = tmp_path / "demo"
    assert write_demo_collection(folder, per_style=2, image_size=40) == 2 * len(DEMO_STYLES)
    assert sorted(p.name for p in folder.iterdir()) == sorted(DEMO_STYLES)
    expected = render_demo_image(DEMO_STYLES[1], seed=123, index=1, image_size=40)
    np.testing.assert_array_equal(np.asarray(Image.open(folder / DEMO_STYLES[1] / "01.png")), np.asarray(expected))
    assert write_demo_collection(folder, per_style=2) == 0  # a folder with images is left alone
    with pytest.raises(ValueError, match="per_style"):
        write_demo_collection(tmp_path / "other", per_style=0)


def test_space_entry_point_builds_a_locked_page(models, collection, monkeypatch):
    import gradio as gr

    monkeypatch.setenv("ARTSTYLE_MODEL", str(models["pretraining"]))
    monkeypatch.setenv("ARTSTYLE_INDEX", str(collection))
    spec = importlib.util.spec_from_file_location("artstyle_space_app", REPO / "spaces" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # builds the page; launching happens only under __main__
    assert isinstance(module.demo, gr.Blocks)
    assert "6 images" in module.report
    blocks = {getattr(block, "elem_id", None): block for block in module.demo.blocks.values()}
    assert blocks["index-controls"].visible is False
    front = (REPO / "spaces" / "README.md").read_text().split("---")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front
