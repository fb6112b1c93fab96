"""Style search: embed an image collection once, then find the works closest in style to a query.

The style representation is the model's ``pooler_output`` (`ArtStyleModel`, see DESIGN §1.3),
L2-normalised, so the inner product is the cosine similarity.

An index is a folder with two files:

- ``embeddings.safetensors``: one tensor ``"embeddings"`` ``[N, D]`` float32 (row ``i`` = entry ``i``);
- ``index.json``: ``{"format_version", "model_fingerprint", "root", "dim", "entries": [{"path",
  "size", "mtime_ns"}], "failed": {path: {"size", "mtime_ns", "error"}}}`` with paths relative to
  the collection root (POSIX separators), so a collection can be moved with its index.

`update_index` re-embeds only files that are new or whose size / modification time changed, drops
files that disappeared, and starts from scratch when the model fingerprint differs. Files that cannot
be decoded are recorded under ``"failed"`` and not retried until they change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
INDEX_JSON = "index.json"
INDEX_EMBEDDINGS = "embeddings.safetensors"
FORMAT_VERSION = 1


def list_images(root: str | Path, recursive: bool = True) -> list[Path]:
    """Image files (by extension, case-insensitive) under ``root``, sorted; hidden folders skipped."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    pattern = "**/*" if recursive else "*"
    found = []
    for path in root.glob(pattern):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            found.append(path)
    return sorted(found)


def model_fingerprint(model_dir: str | Path | None = None, model: torch.nn.Module | None = None) -> str:
    """SHA-256 identifying a model: its folder's ``config.json`` and weight files, or its state dict."""
    digest = hashlib.sha256()
    if model_dir is not None and Path(model_dir).is_dir():
        model_dir = Path(model_dir)
        files = [model_dir / "config.json", *sorted(model_dir.glob("*.safetensors"))]
        for path in files:
            if path.is_file():
                digest.update(path.name.encode())
                with open(path, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
        return digest.hexdigest()
    if model is None:
        raise ValueError("model_fingerprint needs a model folder or a model")
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()


class StyleEmbedder:
    """Embeds PIL images with a model's style representation (L2-normalised ``pooler_output``).

    Args:
        model: a folder / Hub id of an artstyle checkpoint (pretraining or classifier), or a loaded
            `ArtStyleModel` (or a model with an ``.artstyle`` encoder).
        image_processor: defaults to the one saved with the checkpoint, else
            `artstyle.build_image_processor` of the model's config.
        batch_size: images per forward pass.
        device: torch device; default: the available accelerator, else CPU.
    """

    def __init__(self, model, image_processor=None, batch_size: int = 32, device: str | None = None):
        from artstyle.evaluation import get_encoder

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        if isinstance(model, (str, os.PathLike)):
            self.fingerprint = model_fingerprint(model_dir=model) if Path(model).is_dir() else f"hub:{model}"
            model, loaded_processor = _load_encoder(str(model))
            image_processor = image_processor or loaded_processor
        else:
            model = get_encoder(model)
            self.fingerprint = model_fingerprint(model=model)
        if image_processor is None:
            from artstyle import build_image_processor

            image_processor = build_image_processor(model.config)
        self.model = model.eval().to(device or default_device())
        self.image_processor = image_processor

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed(self, images: Sequence) -> np.ndarray:
        """``[len(images), D]`` float32 unit vectors for a list of RGB PIL images."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = self.image_processor(images=list(images[start : start + self.batch_size]), return_tensors="pt")
            pixel_values = batch["pixel_values"].to(self.device)
            pooled = self.model(pixel_values=pixel_values).pooler_output.float()
            chunks.append(torch.nn.functional.normalize(pooled, dim=1).cpu().numpy())
        if not chunks:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32)


def default_device() -> torch.device:
    """The current accelerator (CUDA, MPS, XPU...) if there is one, else CPU."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.is_available():
        return torch.device(accelerator.current_accelerator())
    return torch.device("cpu")


def _load_encoder(model_name_or_path: str):
    from transformers import AutoImageProcessor

    from artstyle import ArtStyleModel

    model = ArtStyleModel.from_pretrained(model_name_or_path)
    try:
        processor = AutoImageProcessor.from_pretrained(model_name_or_path)
    except (OSError, ValueError):
        logger.warning("No image processor saved with %s; building one from its config", model_name_or_path)
        processor = None
    return model, processor


def load_image(source: str | Path):
    """RGB PIL image from a local file or an http(s) URL; raises ValueError naming the source."""
    from artstyle.data import open_image_rgb

    text = str(source)
    if text.startswith(("http://", "https://")):
        from transformers.image_utils import load_image as load_url

        try:
            return load_url(text).convert("RGB")
        except Exception as err:  # network and decoding errors of all kinds
            raise ValueError(f"cannot load image from {text}: {type(err).__name__}: {err}") from err
    if not Path(text).is_file():
        raise FileNotFoundError(f"image not found: {text}")
    return open_image_rgb(text)


@dataclass
class UpdateReport:
    """What `update_index` did; ``failed`` lists ``(relative path, error)`` of undecodable files."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    rebuilt: bool = False

    @property
    def embedded(self) -> int:
        return self.added + self.updated


@dataclass
class StyleIndex:
    """Unit-norm style embeddings of a collection (``paths`` relative to ``root``) and file stats."""

    root: Path
    paths: list[str]
    embeddings: np.ndarray
    stats: list[tuple[int, int]]
    model_fingerprint: str
    failed: dict[str, dict] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def empty(cls, root: str | Path, fingerprint: str) -> StyleIndex:
        return cls(Path(root), [], np.zeros((0, 0), dtype=np.float32), [], fingerprint)

    def save(self, index_dir: str | Path) -> Path:
        """Write ``embeddings.safetensors`` and ``index.json`` into ``index_dir`` (created)."""
        from safetensors.numpy import save_file

        index_dir = Path(index_dir)
        index_dir.mkdir(parents=True, exist_ok=True)
        save_file(
            {"embeddings": np.ascontiguousarray(self.embeddings, dtype=np.float32)}, str(index_dir / INDEX_EMBEDDINGS)
        )
        meta = {
            "format_version": FORMAT_VERSION,
            "model_fingerprint": self.model_fingerprint,
            "root": str(self.root),
            "dim": int(self.embeddings.shape[1]) if self.embeddings.ndim == 2 else 0,
            "entries": [
                {"path": path, "size": size, "mtime_ns": mtime} for path, (size, mtime) in zip(self.paths, self.stats)
            ],
            "failed": self.failed,
        }
        (index_dir / INDEX_JSON).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return index_dir

    @classmethod
    def load(cls, index_dir: str | Path) -> StyleIndex:
        """Read an index written by `save`; raises FileNotFoundError / ValueError naming the file."""
        from safetensors.numpy import load_file

        index_dir = Path(index_dir)
        meta_path, tensor_path = index_dir / INDEX_JSON, index_dir / INDEX_EMBEDDINGS
        for path in (meta_path, tensor_path):
            if not path.is_file():
                raise FileNotFoundError(f"style index file not found: {path}")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{meta_path} is not valid JSON: {err}") from err
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: format_version {meta.get('format_version')!r} is not supported "
                f"(expected {FORMAT_VERSION}); delete the index folder to rebuild it"
            )
        embeddings = load_file(str(tensor_path))["embeddings"]
        entries = meta["entries"]
        if len(entries) != len(embeddings):
            raise ValueError(f"{index_dir}: {len(entries)} entries in {INDEX_JSON} but {len(embeddings)} embeddings")
        return cls(
            root=Path(meta["root"]),
            paths=[entry["path"] for entry in entries],
            embeddings=embeddings,
            stats=[(int(entry["size"]), int(entry["mtime_ns"])) for entry in entries],
            model_fingerprint=meta["model_fingerprint"],
            failed=meta.get("failed", {}),
        )

    def search(self, query: np.ndarray, k: int = 5, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """The ``k`` entries most similar (cosine) to the unit vector ``query``: ``[(path, score)]``."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if len(self) == 0:
            return []
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.embeddings.shape[1]:
            raise ValueError(
                f"query embedding has dimension {query.shape[0]} but the index has {self.embeddings.shape[1]}"
            )
        scores = self.embeddings @ query
        excluded = set(exclude)
        order = np.argsort(-scores, kind="stable")
        results = [(self.paths[i], float(scores[i])) for i in order if self.paths[i] not in excluded]
        return results[:k]


def _file_stat(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return int(stat.st_size), int(stat.st_mtime_ns)


def update_index(
    root: str | Path,
    embedder: StyleEmbedder,
    index: StyleIndex | None = None,
    *,
    recursive: bool = True,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> tuple[StyleIndex, UpdateReport]:
    """Bring ``index`` up to date with the images under ``root``; return the new index and a report.

    Only new and changed files (size or mtime) are embedded; vanished files are dropped. An index
    built with another model (fingerprint) is rebuilt from scratch. Entries are matched by their path
    relative to ``root``, so an index follows its collection when both are moved.
    """
    root = Path(root).resolve()
    report = UpdateReport()
    if index is None or index.model_fingerprint != embedder.fingerprint:
        if index is not None and len(index):
            logger.warning("The index was built with another model; re-embedding every image")
            report.rebuilt = True
        index = StyleIndex.empty(root, embedder.fingerprint)

    known = {path: (i, stat) for i, (path, stat) in enumerate(zip(index.paths, index.stats))}
    keep_rows, keep_paths, keep_stats = [], [], []
    to_embed: list[tuple[str, tuple[int, int], bool]] = []
    failed: dict[str, dict] = {}
    for path in list_images(root, recursive=recursive):
        relative = path.relative_to(root).as_posix()
        stat = _file_stat(path)
        previous_failure = index.failed.get(relative)
        if previous_failure and (previous_failure["size"], previous_failure["mtime_ns"]) == stat:
            failed[relative] = previous_failure
            report.failed.append((relative, previous_failure["error"]))
            continue
        if relative in known and known[relative][1] == stat:
            keep_rows.append(known[relative][0])
            keep_paths.append(relative)
            keep_stats.append(stat)
            report.unchanged += 1
        else:
            to_embed.append((relative, stat, relative in known))
    current = {p for p, _, _ in to_embed} | set(keep_paths) | set(failed)
    report.removed = sum(1 for path in index.paths if path not in current)

    new_paths, new_stats, new_vectors = [], [], []
    batches = range(0, len(to_embed), embedder.batch_size)
    for start in progress(batches) if progress is not None else batches:
        images, accepted = [], []
        for relative, stat, existed in to_embed[start : start + embedder.batch_size]:
            try:
                images.append(load_image(root / relative))
                accepted.append((relative, stat, existed))
            except (ValueError, OSError) as err:
                logger.warning("Skipping %s: %s", relative, err)
                failed[relative] = {"size": stat[0], "mtime_ns": stat[1], "error": str(err)}
                report.failed.append((relative, str(err)))
        if not images:
            continue
        new_vectors.append(embedder.embed(images))
        for relative, stat, existed in accepted:
            new_paths.append(relative)
            new_stats.append(stat)
            if existed:
                report.updated += 1
            else:
                report.added += 1

    parts = []
    if keep_rows:
        parts.append(index.embeddings[keep_rows])
    parts.extend(new_vectors)
    embeddings = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), dtype=np.float32)
    updated = StyleIndex(
        root=root,
        paths=keep_paths + new_paths,
        embeddings=embeddings,
        stats=keep_stats + new_stats,
        model_fingerprint=embedder.fingerprint,
        failed=failed,
    )
    return updated, report


__all__ = [
    "IMAGE_EXTENSIONS",
    "StyleEmbedder",
    "StyleIndex",
    "UpdateReport",
    "default_device",
    "list_images",
    "load_image",
    "model_fingerprint",
    "update_index",
]
