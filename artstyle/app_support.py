"""The logic of the browser app (``app.py``): analyse one image, keep a searchable collection, build the page.

Everything the page shows comes from `StyleApp`, whose handlers never raise: bad input (not an image, a
decompression bomb, no index, a model without a classifier) becomes a readable message in the page, and the
server keeps serving. Gradio is imported only by `build_interface`, so the logic is testable without it.

One image costs ONE backbone pass (`ArtStyleModel.encode`): the classifier head, the fusion weights, the Gram
matrix and the search embedding all read that pass.
"""

from __future__ import annotations

import base64
import logging
import os
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from artstyle.data.images import BadImageError, open_image_rgb

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000  # larger uploads are refused before decoding (decompression bombs)
THUMBNAIL_SIZE = 256
INDEX_SUBDIR = ".artstyle-index"  # the `artstyle-similar` default, so the CLI and the app share an index


# ---------------------------------------------------------------------------------------------- input
def read_upload(upload, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """RGB PIL image from what the page sends: a file path, raw bytes, a PIL image or a numpy array.

    Raises ValueError with a message meant for the page (no upload, not an image, too many pixels).
    """
    if upload is None:
        raise ValueError("No image yet: upload a file, paste an image from the clipboard, or drop one on the box.")
    if isinstance(upload, np.ndarray):
        upload = Image.fromarray(upload)
    if isinstance(upload, Image.Image):
        width, height = upload.size
        if width * height > max_pixels:
            raise ValueError(f"The image is too large: {width}x{height} pixels exceeds the limit of {max_pixels:,}.")
        return upload.convert("RGB")
    name = Path(upload).name if isinstance(upload, (str, os.PathLike)) else "the pasted data"
    try:
        return open_image_rgb(upload, max_pixels=max_pixels)
    except BadImageError as err:
        detail = str(err).replace(os.fspath(upload), name) if isinstance(upload, (str, os.PathLike)) else str(err)
        if "exceeds the limit" in detail or "DecompressionBomb" in detail:
            reason = detail.split(": ", 1)[-1]
            raise ValueError(f"The image {name} is too large to analyse (limit {max_pixels:,} pixels): "
                             f"{reason}") from err
        raise ValueError(f"{name} is not an image this app can read ({detail.split(': ', 1)[-1]}).") from err


# ---------------------------------------------------------------------------------------------- model
@dataclass
class Analysis:
    """What the model says about one image.

    probabilities: ``{label: probability}`` sorted high to low, or None for an encoder without a classifier;
    embedding: the unit-norm style embedding ``[D]`` (`pooler_output`, as the search index stores it);
    fusion_weights: ``[L]`` attention over ``fusion_layers`` (see ``fusion_source``), or None without fusion;
    fusion_source: ``"pooling"`` (the pooler's attention over layers) or ``"cross-layer"`` (column mean of the
    cross-layer attention, for a non-fused pooler whose fusion only serves the layer-wise loss);
    gram: the normalised Gram matrix ``[C, C]``, or None without a Gram module.
    """

    probabilities: dict[str, float] | None
    embedding: np.ndarray
    fusion_weights: np.ndarray | None = None
    fusion_source: str | None = None
    fusion_layers: list[int] = field(default_factory=list)
    gram: np.ndarray | None = None


class StyleAnalyzer:
    """Loads an artstyle folder (or Hub id) once and analyses images with it.

    A fine-tuned folder (``ArtStyleForImageClassification``) gives style probabilities; a pretraining folder or a
    bare ``ArtStyleModel`` gives the embedding only (``has_classifier`` False).
    """

    def __init__(self, model_name_or_path: str | os.PathLike, device: str | torch.device = "cpu"):
        from transformers import AutoImageProcessor

        from artstyle import ArtStyleConfig, ArtStyleForImageClassification, ArtStyleModel, build_image_processor

        source = str(model_name_or_path)
        self.source = source
        if not Path(source).is_dir() and (os.path.sep in source or source.startswith(".")):
            raise FileNotFoundError(f"--model {source}: folder not found")
        if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
            raise ValueError(f"--model {source}: not an artstyle model folder (no config.json)")
        try:
            config = ArtStyleConfig.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise ValueError(f"--model {source}: not an artstyle model folder or Hub id ({err})") from err
        self.architecture = (config.architectures or ["ArtStyleModel"])[0]
        self.has_classifier = self.architecture == "ArtStyleForImageClassification" and config.num_labels > 0
        try:
            if self.has_classifier:
                classifier = ArtStyleForImageClassification.from_pretrained(source)
                self.encoder, self.head = classifier.artstyle, classifier.classifier
            else:
                self.encoder, self.head = ArtStyleModel.from_pretrained(source), None
        except OSError as err:
            raise ValueError(f"--model {source}: cannot load the weights ({err})") from err
        self.encoder.eval().to(device)
        if self.head is not None:
            self.head.eval().to(device)
        self.config = self.encoder.config
        try:
            self.image_processor = AutoImageProcessor.from_pretrained(source)
        except (OSError, ValueError):
            logger.warning("No image processor saved with %s; building one from its config", source)
            self.image_processor = build_image_processor(self.config)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def model_note(self) -> str:
        """One line for the page: what the loaded folder can do."""
        if self.has_classifier:
            return f"`{self.source}`: fine-tuned classifier, {self.config.num_labels} styles."
        return (f"`{self.source}` holds a `{self.architecture}` with **no classifier**: embedding only (fusion, "
                f"Gram and similar images are shown; fine-tune it with `run_finetune.py` to get style labels).")

    @torch.no_grad()
    def analyze(self, image: Image.Image) -> Analysis:
        """One backbone pass for ``image``: probabilities (if a classifier), embedding, fusion weights, Gram."""
        pixel_values = self.image_processor(images=[image], return_tensors="pt")["pixel_values"].to(self.device)
        output = self.encoder.encode(pixel_values).output
        pooled = output.pooler_output.float()
        probabilities = None
        if self.head is not None:
            logits = self.head(output.pooler_output)[0].float()
            multi_label = self.config.problem_type == "multi_label_classification"
            scores = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)
            order = torch.argsort(scores, descending=True).tolist()
            id2label = self.config.id2label
            probabilities = {str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))): float(scores[i])
                             for i in order}
        analysis = Analysis(probabilities=probabilities,
                            embedding=torch.nn.functional.normalize(pooled, dim=1)[0].cpu().numpy())
        if output.fusion_pool_weights is not None:
            analysis.fusion_weights = output.fusion_pool_weights[0].float().cpu().numpy()
            analysis.fusion_source = "pooling"
        elif output.fusion_weights is not None:
            analysis.fusion_weights = output.fusion_weights[0].float().mean(dim=0).cpu().numpy()
            analysis.fusion_source = "cross-layer"
        if analysis.fusion_weights is not None:
            analysis.fusion_layers = list(self.encoder.fusion_layers)
        if output.gram is not None:
            analysis.gram = output.gram[0].float().cpu().numpy()
        return analysis

    def embedder(self):
        """A `StyleEmbedder` sharing this model (no second copy); fingerprinted like ``artstyle-similar`` does."""
        from artstyle.search import StyleEmbedder, model_fingerprint

        embedder = StyleEmbedder(self.encoder, image_processor=self.image_processor, device=str(self.device))
        if Path(self.source).is_dir():
            embedder.fingerprint = model_fingerprint(model_dir=self.source)
        else:
            embedder.fingerprint = f"hub:{self.source}"
        return embedder


# ---------------------------------------------------------------------------------------------- collection
class Collection:
    """A folder of images indexed with `artstyle.search.update_index` (kept in ``<folder>/.artstyle-index``)."""

    def __init__(self, embedder, index_dir: str | os.PathLike | None = None):
        self.embedder = embedder
        self.index_dir_override = Path(index_dir) if index_dir else None
        self.folder: Path | None = None
        self.index = None

    def refresh(self, folder: str | os.PathLike) -> str:
        """Build or update the index of ``folder``; returns a one-line report. Raises ValueError/FileNotFoundError."""
        from artstyle.search import StyleIndex, update_index

        text = str(folder).strip()
        if not text:
            raise ValueError("Type the path of a folder of images to index.")
        folder = Path(text).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"Folder not found: {folder}")
        index_dir = self.index_dir_override or folder / INDEX_SUBDIR
        previous = None
        if (index_dir / "index.json").is_file():
            try:
                previous = StyleIndex.load(index_dir)
            except (OSError, ValueError) as err:
                logger.warning("Ignoring the unreadable index at %s: %s", index_dir, err)
        index, report = update_index(folder, self.embedder, previous)
        saved = ""
        try:
            index.save(index_dir)
        except OSError as err:
            saved = f" (not saved: cannot write {index_dir}: {err.strerror or err})"
        self.folder, self.index = folder, index  # as typed: the page shows no more of the server's paths
        failed = f", {len(report.failed)} unreadable files skipped" if report.failed else ""
        if len(index) == 0:
            return f"The index of `{folder}` is **empty**: no readable images found{failed}."
        return (f"Indexed `{folder}`: {len(index)} images ({report.added} added, {report.updated} updated, "
                f"{report.removed} removed, {report.unchanged} unchanged{failed}){saved}.")

    def search(self, embedding: np.ndarray, k: int) -> list[tuple[Image.Image, str]]:
        """Gallery items ``(thumbnail, "label · path · similarity")`` of the ``k`` nearest images. Raises ValueError."""
        if self.index is None:
            raise ValueError("No collection indexed yet: type a folder of images below and press "
                             "**Build / refresh index** (or start the app with `--index FOLDER`).")
        if len(self.index) == 0:
            raise ValueError(f"The index of `{self.folder}` is empty: add images to the folder and refresh it.")
        items = []
        for relative, score in self.index.search(embedding, k=k):
            try:
                thumbnail = open_image_rgb(Path(self.index.root) / relative)
            except BadImageError as err:  # changed or removed since indexing
                logger.warning("Cannot show %s: %s", relative, err)
                continue
            thumbnail.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            items.append((thumbnail, caption_for(relative, score)))
        return items


def caption_for(relative_path: str, score: float) -> str:
    """``"0.93 · label · path"``: the label is the image's parent folder (class-per-folder collections)."""
    parts = Path(relative_path).parts
    label = parts[-2] if len(parts) > 1 else "—"
    return f"{score:.3f} · {label} · {relative_path}"


def write_demo_collection(folder: str | os.PathLike, per_style: int = 8, seed: int = 123,
                          image_size: int = 96) -> int:
    """Fill ``folder/<style>/`` with generated demo images (`artstyle.data.demo`; seed 123, not the demo dataset's
    seed 0, so these are new images) unless it already holds images; returns the number written."""
    from artstyle.data.demo import DEMO_STYLES, render_demo_image
    from artstyle.search import list_images

    folder = Path(folder)
    if per_style < 1:
        raise ValueError(f"per_style must be >= 1, got {per_style}")
    if folder.is_dir() and list_images(folder):
        return 0
    for style in DEMO_STYLES:
        (folder / style).mkdir(parents=True, exist_ok=True)
        for index in range(per_style):
            image = render_demo_image(style, seed=seed, index=index, image_size=image_size)
            image.save(folder / style / f"{index:02d}.png")
    return per_style * len(DEMO_STYLES)


# ---------------------------------------------------------------------------------------------- page logic
@dataclass
class PageResult:
    """The values `StyleApp.analyze` sends to the page, in `StyleApp.OUTPUTS` order."""

    status: str
    label: dict[str, float] | None = None
    fusion: object | None = None  # matplotlib Figure
    gram: object | None = None
    gallery: list[tuple[Image.Image, str]] = field(default_factory=list)
    gallery_note: str = ""

    def as_tuple(self) -> tuple:
        return self.status, self.label, self.fusion, self.gram, self.gallery, self.gallery_note


class StyleApp:
    """Handlers of the page; each returns displayable values and never raises."""

    def __init__(self, analyzer: StyleAnalyzer, collection: Collection, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.analyzer = analyzer
        self.collection = collection
        self.max_pixels = max_pixels

    @classmethod
    def from_paths(cls, model: str, index: str | None = None, index_dir: str | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[StyleApp, str]:
        """Load the model (errors raise: the app cannot start without one) and index ``index`` if given.

        Returns the app and the index report (a message if indexing failed: the page still starts).
        """
        analyzer = StyleAnalyzer(model)
        app = cls(analyzer, Collection(analyzer.embedder(), index_dir=index_dir), max_pixels=max_pixels)
        report = app.refresh_index(index) if index else "No collection indexed yet."
        return app, report

    def warm_up(self) -> None:
        """Analyse a blank image once (lazy imports, first-call allocations), so the first visitor waits less."""
        self.analyze(Image.new("RGB", (64, 64), (128, 128, 128)))

    def refresh_index(self, folder: str | None) -> str:
        try:
            return self.collection.refresh(folder or "")
        except (OSError, ValueError) as err:
            return f"⚠️ {err}"

    def analyze(self, upload, top_k: int = 5, neighbours: int = 8) -> PageResult:
        from artstyle.plots import fusion_weights_figure, gram_matrix_figure

        try:
            image = read_upload(upload, self.max_pixels)
        except ValueError as err:
            return PageResult(status=f"⚠️ {err}")
        try:
            analysis = self.analyzer.analyze(image)
        except Exception as err:  # keep serving whatever the model does; the log has the traceback
            logger.exception("analysis failed")
            return PageResult(status=f"⚠️ The model failed on this image: {type(err).__name__}: {err}")
        notes = []
        label = None
        if analysis.probabilities is None:
            notes.append(f"**Embedding only**: `{self.analyzer.source}` holds a `{self.analyzer.architecture}` "
                         f"with no classifier.")
        else:
            label = dict(list(analysis.probabilities.items())[: max(1, int(top_k))])
            best, probability = next(iter(analysis.probabilities.items()))
            notes.append(f"Predicted style: **{best}** ({probability:.1%}).")
        fusion = gram = None
        if analysis.fusion_weights is None:
            notes.append("This model has no attention fusion (a non-fused pooler with the layer-wise loss off): "
                         "no fusion chart.")
        else:
            title = ("Attention pooling over layers" if analysis.fusion_source == "pooling"
                     else "Cross-layer attention received (non-fused pooler)")
            fusion = fusion_weights_figure(analysis.fusion_weights, analysis.fusion_layers, title=title)
        if analysis.gram is None:
            notes.append("This model has no Gram module (`weight_gram` 0, pooler not `fused_style`): no heat map.")
        else:
            gram = gram_matrix_figure(analysis.gram)
        try:
            gallery = self.collection.search(analysis.embedding, int(neighbours))
            gallery_note = f"{len(gallery)} most similar images of `{self.collection.folder}` (cosine similarity)."
        except ValueError as err:
            gallery, gallery_note = [], f"⚠️ {err}"
        return PageResult(status=" ".join(notes), label=label, fusion=fusion, gram=gram, gallery=gallery,
                          gallery_note=gallery_note)


# ---------------------------------------------------------------------------------------------- gradio page
def _raw_upload(component, payload):
    """``preprocess`` of the page's image box: the uploaded file's path, or the bytes of a pasted data URL."""
    if payload is None:
        return None
    if payload.url and payload.url.startswith("data:"):
        return base64.b64decode(payload.url.split(",", 1)[1])
    return payload.path


def _image_input(gr, **kwargs):
    """A stock ``gr.Image`` whose raw upload (path or pasted bytes) goes to `read_upload` without being decoded.

    Gradio's own decoding would fail with a generic error on a non-image file or a decompression bomb; this way
    the page shows our message. (Patched on the instance: a subclass would make Gradio write a ``.pyi`` stub.)
    """
    image = gr.Image(**kwargs)
    image.preprocess = types.MethodType(_raw_upload, image)
    return image


def build_interface(app: StyleApp, index_report: str = "", index_folder: str | None = None,
                    editable_index: bool = True):
    """The Gradio page (``gr.Blocks``) wired to ``app``'s handlers.

    ``editable_index`` False hides the folder box and the refresh button (a public Space should not let visitors
    index arbitrary folders of the server).
    """
    import gradio as gr

    with gr.Blocks(title="artstyle: see style") as page:
        gr.Markdown("# artstyle: see style\nUpload or paste an image: its style, which layers the model leans on, "
                    "its learned Gram matrix, and the closest works of your collection. " + app.analyzer.model_note)
        with gr.Row():
            with gr.Column(scale=1):
                image = _image_input(gr, label="Image", sources=["upload", "clipboard"], type="filepath",
                                     elem_id="query-image", height=260)
                with gr.Row():
                    top_k = gr.Slider(1, 20, value=5, step=1, label="top-k styles")
                    neighbours = gr.Slider(1, 24, value=8, step=1, label="similar images")
                button = gr.Button("Analyse", variant="primary", elem_id="analyse")
                status = gr.Markdown(elem_id="status")
                label = gr.Label(label="Style", elem_id="prediction")
            with gr.Column(scale=1):
                fusion = gr.Plot(label="Attention fusion over layers", elem_id="fusion-plot", format="png")
                gram = gr.Plot(label="Learned Gram matrix", elem_id="gram-plot", format="png")
        gallery_note = gr.Markdown(elem_id="gallery-note")
        gallery = gr.Gallery(label="Most similar in the collection (similarity · label · path)", elem_id="gallery",
                             columns=8, height=250)
        with gr.Row(visible=editable_index, elem_id="index-controls"):
            folder = gr.Textbox(value=index_folder or "", label="Collection folder (indexed recursively)", scale=4,
                                elem_id="index-folder")
            refresh = gr.Button("Build / refresh index", scale=1, elem_id="refresh-index")
        index_status = gr.Markdown(index_report, elem_id="index-status")

        outputs = [status, label, fusion, gram, gallery, gallery_note]

        def on_analyse(upload, k, n):
            return app.analyze(upload, k, n).as_tuple()

        button.click(on_analyse, [image, top_k, neighbours], outputs)
        image.change(on_analyse, [image, top_k, neighbours], outputs)
        refresh.click(app.refresh_index, [folder], [index_status])
    return page


__all__ = [
    "Analysis",
    "Collection",
    "DEFAULT_MAX_PIXELS",
    "PageResult",
    "StyleAnalyzer",
    "StyleApp",
    "build_interface",
    "caption_for",
    "read_upload",
    "write_demo_collection",
]
