"""Style search: embed an image collection once, then find the works closest in style to a query.

The style representation is the model's ``pooler_output`` (`ArtStyleModel`, see docs/method.md),
L2-normalised, so the inner product is the cosine similarity.

An index is a folder. ``index.json`` is its manifest and the only file that decides what is current::

    {"format_version": 2, "model_fingerprint", "root", "dim",
     "files": [{"file": "embeddings-<sha>.safetensors", "rows", "sha256"}],
     "entries": [{"path", "size", "mtime_ns"}], "failed": {path: {"size", "mtime_ns", "error"}}}

The rows of the listed ``files`` (each one tensor ``"embeddings"`` ``[rows, dim]`` float32), read in
order, are the entries in order. Paths are relative to the collection root (POSIX separators), so a
collection can be moved with its index.

Every file is written to a temporary file in the folder and renamed into place (`os.replace`), the
embeddings before the manifest, and embedding files are named by their checksum, never overwritten:
a crash at any point leaves either the previous manifest with its files or the new one with its
files. Files the manifest does not name are leftovers and are deleted by the next writer.

`update_index` re-embeds only files that are new or whose size / modification time changed, drops
files that disappeared, and starts from scratch when the model fingerprint differs. Files that cannot
be decoded are recorded under ``"failed"`` and not retried until they change. `build_index` does the
same for an index folder: it holds a `filelock.FileLock` on the folder (concurrent indexers wait),
saves its progress every ``save_every`` batches (a killed run resumes where it stopped), and treats an
unreadable or inconsistent index as absent: a warning naming the file, then a rebuild.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from filelock import FileLock, Timeout

from artstyle.data.common import IMAGE_EXTENSIONS, is_image_file
from artstyle.processing import keeps_uint8, normalize_batch, resize_uint8

logger = logging.getLogger(__name__)

INDEX_JSON = "index.json"
INDEX_LOCK = "index.lock"
DEFAULT_INDEX_DIR = ".artstyle-index"
FORMAT_VERSION = 2
_LEGACY_EMBEDDINGS = "embeddings.safetensors"  # format_version 1: one file, no checksum
_EMBEDDINGS_PREFIX = "embeddings"
_TEMP_PREFIX = ".tmp-"
# the files this module writes in an index folder (anything else there is left alone)
_OUR_FILE = re.compile(rf"{_EMBEDDINGS_PREFIX}-[0-9a-f]{{24}}\.safetensors|{re.escape(_TEMP_PREFIX)}.+\.part")


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
        if path.is_file() and is_image_file(path.name):
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

    def preprocess(self, image) -> torch.Tensor:
        """``[C, H, W]`` model input for one RGB PIL image (safe to call in DataLoader workers)."""
        return _preprocess(self.image_processor, image)

    @torch.no_grad()
    def embed_pixels(self, pixel_values: torch.Tensor) -> np.ndarray:
        """``[B, D]`` float32 unit vectors for a batch of preprocessed images ``[B, C, H, W]``: float pixel values,
        or uint8 ones from `artstyle.processing.resize_uint8`, rescaled and normalised here on the model's device."""
        if pixel_values.dtype == torch.uint8:
            pixel_values = normalize_batch(self.image_processor, pixel_values, self.device)
        pooled = self.model(pixel_values=pixel_values.to(self.device)).pooler_output.float()
        return torch.nn.functional.normalize(pooled, dim=1).cpu().numpy().astype(np.float32)

    def embed(self, images: Sequence) -> np.ndarray:
        """``[len(images), D]`` float32 unit vectors for a list of RGB PIL images."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = self.image_processor(images=list(images[start : start + self.batch_size]), return_tensors="pt")
            chunks.append(self.embed_pixels(batch["pixel_values"]))
        if not chunks:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(chunks)


def _preprocess(image_processor, image) -> torch.Tensor:
    return image_processor(images=image, return_tensors="pt")["pixel_values"][0]


MAX_AUTO_WORKERS = 8


def resolve_num_workers(num_workers: int | str | None, num_images: int, batch_size: int) -> int:
    """DataLoader workers decoding ``num_images`` images: an int is kept (``ValueError`` below 0); ``None`` / ``"auto"``
    gives 0 when the images fit in two batches (starting workers would cost more than decoding them here), else
    ``min(8, CPU cores - 1)``. Decoding in the main process held `artstyle-predict` to 386 images/s on an H200
    whose model ran at 8,000."""
    if num_workers is None or num_workers == "auto":
        if num_images <= 2 * batch_size:
            return 0
        return max(1, min(MAX_AUTO_WORKERS, (os.cpu_count() or 2) - 1))
    try:
        value = int(num_workers)
    except (TypeError, ValueError):
        raise ValueError(f"num_workers must be 'auto' or an integer >= 0, got {num_workers!r}") from None
    if value < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    return value


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
    """What `update_index` did; ``failed`` lists ``(relative path, error)`` of undecodable files.

    ``rebuilt``: the stored index was unusable (unreadable, inconsistent, or built with another model)
    and every image was embedded again.
    """

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

    def save(self, index_dir: str | Path, lock_timeout: float | None = 600.0) -> Path:
        """Write the index into ``index_dir`` (created) atomically, holding the folder's lock.

        Raises:
            TimeoutError: another process held the lock for more than ``lock_timeout`` seconds.
        """
        index_dir = Path(index_dir)
        index_dir.mkdir(parents=True, exist_ok=True)
        with index_lock(index_dir, lock_timeout):
            _save_unlocked(self, index_dir)
        return index_dir

    @classmethod
    def load(cls, index_dir: str | Path) -> StyleIndex:
        """Read an index written by `save`; raises FileNotFoundError / ValueError naming the file.

        Every check runs here: the manifest's structure, each embeddings file's checksum, shape and
        row count against the entries, and duplicate paths. `load_index` turns these errors into a
        warning for callers that rebuild instead.
        """
        return _read_index(Path(index_dir))[0]

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


# ----------------------------------------------------------------------------------------------
# on-disk format: checksummed embedding files + one manifest, all written by atomic rename
# ----------------------------------------------------------------------------------------------


def _parse_manifest(raw: bytes, meta_path: Path) -> dict:
    """The manifest as a dict of checked fields; ValueError naming ``meta_path`` for anything wrong."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{meta_path} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise ValueError(
            f"{meta_path}: format_version {version!r} is not supported (expected {FORMAT_VERSION}); "
            "delete the index folder to rebuild it"
        )
    try:
        entries = [
            {"path": _typed(e["path"], str), "size": _typed(e["size"], int), "mtime_ns": _typed(e["mtime_ns"], int)}
            for e in meta["entries"]
        ]
        failed = {_typed(path, str): dict(_typed(info, dict)) for path, info in meta.get("failed", {}).items()}
        if version == 1:
            files = [{"file": _LEGACY_EMBEDDINGS, "rows": len(entries), "sha256": None}]
        else:
            files = [
                {"file": _typed(f["file"], str), "rows": _typed(f["rows"], int), "sha256": _typed(f["sha256"], str)}
                for f in meta["files"]
            ]
        parsed = {
            "format_version": version,
            "model_fingerprint": _typed(meta["model_fingerprint"], str),
            "root": _typed(meta["root"], str),
            "dim": _typed(meta["dim"], int),
            "entries": entries,
            "failed": failed,
            "files": files,
        }
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{meta_path}: malformed manifest ({type(err).__name__}: {err})") from err
    for spec in files:
        name = spec["file"]
        if Path(name).name != name or not name.endswith(".safetensors") or spec["rows"] < 0:
            raise ValueError(f"{meta_path}: invalid embeddings file entry {spec}")
    rows = sum(spec["rows"] for spec in files)
    if rows != len(entries):
        raise ValueError(f"{meta_path}: {len(entries)} entries but its embeddings files hold {rows} rows")
    paths = [entry["path"] for entry in entries]
    if len(set(paths)) != len(paths):
        duplicate = next(path for path in paths if paths.count(path) > 1)
        raise ValueError(f"{meta_path}: path {duplicate!r} is listed more than once")
    return parsed


def _read_index(index_dir: Path) -> tuple[StyleIndex, dict]:
    """`StyleIndex.load`, also returning the parsed manifest."""
    meta_path = index_dir / INDEX_JSON
    for _attempt in range(3):
        if not meta_path.is_file():
            raise FileNotFoundError(f"style index file not found: {meta_path}")
        raw = meta_path.read_bytes()
        meta = _parse_manifest(raw, meta_path)
        try:
            embeddings = _read_embeddings(index_dir, meta)
        except FileNotFoundError:
            # a writer replaced the manifest and removed the files it named: read the new one
            if meta_path.is_file() and meta_path.read_bytes() != raw:
                continue
            raise
        index = StyleIndex(
            root=Path(meta["root"]),
            paths=[entry["path"] for entry in meta["entries"]],
            embeddings=embeddings,
            stats=[(entry["size"], entry["mtime_ns"]) for entry in meta["entries"]],
            model_fingerprint=meta["model_fingerprint"],
            failed=meta["failed"],
        )
        return index, meta
    raise ValueError(f"{meta_path} kept changing while it was read; is another process rewriting it?")


def _typed(value, kind: type):
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__}, got {value!r}")
    return value


def _read_embeddings(index_dir: Path, meta: dict) -> np.ndarray:
    """The manifest's embedding files, checked against their checksum and shape, concatenated."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    parts = []
    for spec in meta["files"]:
        path = index_dir / spec["file"]
        try:
            data = path.read_bytes()
        except FileNotFoundError as err:
            raise FileNotFoundError(f"style index file not found: {path} (named in {INDEX_JSON})") from err
        if spec["sha256"] is not None and hashlib.sha256(data).hexdigest() != spec["sha256"]:
            raise ValueError(f"{path}: checksum does not match {INDEX_JSON} (file damaged or replaced)")
        try:
            tensors = load(data)
        except SafetensorError as err:
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
        array = tensors.get("embeddings")
        if array is None or array.dtype != np.float32 or array.ndim != 2:
            raise ValueError(f"{path}: expected one float32 [N, D] tensor 'embeddings'")
        if array.shape[0] != spec["rows"] or (spec["rows"] and array.shape[1] != meta["dim"]):
            raise ValueError(
                f"{path}: holds {tuple(array.shape)} embeddings but {INDEX_JSON} says {spec['rows']} x {meta['dim']}"
            )
        parts.append(array)
    if not meta["entries"]:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, flush it to disk, rename it to ``path``."""
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=_TEMP_PREFIX, suffix=".part", delete=False)
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_embeddings(index_dir: Path, embeddings: np.ndarray) -> dict:
    """One embeddings file named by its checksum; returns its manifest entry."""
    from safetensors.numpy import save

    data = save({"embeddings": np.ascontiguousarray(embeddings, dtype=np.float32)})
    digest = hashlib.sha256(data).hexdigest()
    name = f"{_EMBEDDINGS_PREFIX}-{digest[:24]}.safetensors"
    _write_atomic(index_dir / name, data)  # even if the name exists: that file may be the damaged one
    return {"file": name, "rows": int(len(embeddings)), "sha256": digest}


def _write_manifest(index_dir: Path, index: StyleIndex, files: list[dict]) -> None:
    meta = {
        "format_version": FORMAT_VERSION,
        "model_fingerprint": index.model_fingerprint,
        "root": str(index.root),
        "dim": int(index.embeddings.shape[1]) if index.embeddings.ndim == 2 and len(index) else 0,
        "files": files,
        "entries": [
            {"path": path, "size": size, "mtime_ns": mtime} for path, (size, mtime) in zip(index.paths, index.stats)
        ],
        "failed": index.failed,
    }
    _write_atomic(index_dir / INDEX_JSON, json.dumps(meta, indent=1).encode("utf-8"))


def _remove_leftovers(index_dir: Path, current: Iterable[str]) -> None:
    """Delete embedding files the manifest does not name and temporary files of interrupted writes."""
    current = set(current)
    for path in index_dir.iterdir():
        ours = _OUR_FILE.fullmatch(path.name) is not None or path.name == _LEGACY_EMBEDDINGS
        if ours and path.name not in current:
            with contextlib.suppress(OSError):
                path.unlink()


def _save_unlocked(index: StyleIndex, index_dir: Path) -> None:
    files = [_write_embeddings(index_dir, index.embeddings)] if len(index) else []
    _write_manifest(index_dir, index, files)
    _remove_leftovers(index_dir, [spec["file"] for spec in files])


class _ProgressWriter:
    """Saves a growing index as append-only embedding files, so each checkpoint writes only new rows.

    Called with the partial index (rows: entries kept from the previous index, then the new ones in
    order); the manifest written after each call names exactly the files holding those rows.
    """

    def __init__(self, index_dir: Path):
        self.index_dir = index_dir
        self.files: list[dict] = []
        self.rows = 0

    def __call__(self, index: StyleIndex) -> None:
        if len(index) > self.rows:
            self.files.append(_write_embeddings(self.index_dir, index.embeddings[self.rows :]))
            self.rows = len(index)
        _write_manifest(self.index_dir, index, self.files)
        _remove_leftovers(self.index_dir, [spec["file"] for spec in self.files])


@contextlib.contextmanager
def index_lock(index_dir: str | Path, timeout: float | None = 600.0) -> Iterator[None]:
    """Hold the index folder's ``index.lock`` (`filelock.FileLock`); other processes wait for it.

    Raises:
        TimeoutError: the lock was held by someone else for more than ``timeout`` seconds
            (``None``: wait forever).
    """
    lock_path = Path(index_dir) / INDEX_LOCK
    lock = FileLock(str(lock_path), timeout=-1 if timeout is None else timeout)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.warning("Waiting for another process that is updating the style index (lock %s)", lock_path)
        try:
            lock.acquire()
        except Timeout as err:
            raise TimeoutError(
                f"the style index lock {lock_path} was held by another process for more than {timeout} s; "
                "wait for that indexer to finish, or delete the lock file if no indexer is running"
            ) from err
    try:
        yield
    finally:
        lock.release()


def load_index(index_dir: str | Path) -> StyleIndex | None:
    """The index stored in ``index_dir``, or None when there is none or it cannot be used.

    An unreadable or inconsistent index (garbage or truncated file, missing file, row count that
    does not match the manifest...) gives a warning naming the file and None: callers rebuild it.
    """
    return _load_or_warn(Path(index_dir))[0]


def _load_or_warn(index_dir: Path) -> tuple[StyleIndex | None, dict | None]:
    if not (index_dir / INDEX_JSON).is_file():
        return None, None
    try:
        return _read_index(index_dir)
    except (ValueError, OSError) as err:
        logger.warning("Ignoring the style index in %s, it will be rebuilt: %s", index_dir, err)
        return None, None


# ----------------------------------------------------------------------------------------------
# updating an index
# ----------------------------------------------------------------------------------------------


def _file_stat(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return int(stat.st_size), int(stat.st_mtime_ns)


class _ImageFiles(torch.utils.data.Dataset):
    """Decodes images for a DataLoader; a bad file gives its error instead. With a torchvision-backend processor the
    workers only resize to uint8 (`resize_uint8`) and `StyleEmbedder.embed_pixels` normalises the batch on the
    model's device; otherwise they run the whole processor."""

    def __init__(self, root: Path, relatives: Sequence[str], image_processor):
        self.root, self.relatives, self.image_processor = root, list(relatives), image_processor
        self.uint8 = keeps_uint8(image_processor)

    def __len__(self) -> int:
        return len(self.relatives)

    def __getitem__(self, i: int):
        try:
            image = load_image(self.root / self.relatives[i])
            if self.uint8:
                return i, resize_uint8(self.image_processor, image), None
            return i, _preprocess(self.image_processor, image), None
        except (ValueError, OSError) as err:
            return i, None, str(err)


def _collate_images(items):
    good = [(i, pixels) for i, pixels, error in items if error is None]
    pixels = torch.stack([pixels for _, pixels in good]) if good else None
    return [i for i, _ in good], pixels, [(i, error) for i, _, error in items if error is not None]


def _progress_bar(progress, total: int):
    """A context yielding ``update(n)`` for ``progress``: bool / None for tqdm, or a callable wrapper."""
    if callable(progress):  # legacy: a function wrapping an iterable (e.g. of batches)

        @contextlib.contextmanager
        def wrapped():
            ticks = iter(progress(range(total)))
            yield SimpleNamespace(update=lambda n: [next(ticks, None) for _ in range(n)])
            for _ in ticks:  # run the wrapper to its end (a tqdm bar closes there)
                pass

        return wrapped()
    from tqdm.auto import tqdm

    # None: a bar only on a terminal (tqdm's disable=None); False: none; True: always
    disable = None if progress is None else not progress
    return contextlib.closing(tqdm(total=total, desc="indexing", unit="img", disable=disable))


def update_index(
    root: str | Path,
    embedder: StyleEmbedder,
    index: StyleIndex | None = None,
    *,
    recursive: bool = True,
    progress: bool | Callable[[Iterable], Iterable] | None = None,
    num_workers: int | str | None = 0,
    save_every: int = 0,
    checkpoint: Callable[[StyleIndex], None] | None = None,
) -> tuple[StyleIndex, UpdateReport]:
    """Bring ``index`` up to date with the images under ``root``; return the new index and a report.

    Only new and changed files (size or mtime) are embedded; vanished files are dropped. An index
    built with another model (fingerprint) is rebuilt from scratch. Entries are matched by their path
    relative to ``root``, so an index follows its collection when both are moved; the returned
    entries are sorted by path.

    Args:
        progress: True / False shows / hides a tqdm bar, None shows it only on a terminal; a
            callable wrapping an iterable is also accepted (it is advanced once per image).
        num_workers: DataLoader worker processes decoding images (0: in this process; ``"auto"``: see
            `resolve_num_workers`, from the number of images to embed).
        save_every: call ``checkpoint`` with the partial index every this many batches (0: never).
        checkpoint: receives the index so far (entries kept from ``index``, then the new ones in
            embedding order); `build_index` uses it to save progress.
    """
    resolve_num_workers(num_workers, 0, 1)  # a bad value fails here, before any work
    if save_every < 0:
        raise ValueError(f"save_every must be >= 0, got {save_every}")
    root = Path(root).resolve()
    report = UpdateReport()
    if index is None or index.model_fingerprint != embedder.fingerprint:
        if index is not None and len(index):
            logger.warning("The index was built with another model; re-embedding every image")
            report.rebuilt = True
        index = StyleIndex.empty(root, embedder.fingerprint)

    known = {path: (i, stat) for i, (path, stat) in enumerate(zip(index.paths, index.stats))}
    keep_rows, paths, stats = [], [], []
    to_embed: list[tuple[str, tuple[int, int], bool]] = []
    failed: dict[str, dict] = {}
    for path in list_images(root, recursive=recursive):
        relative = path.relative_to(root).as_posix()
        stat = _file_stat(path)
        previous_failure = index.failed.get(relative)
        if previous_failure and (previous_failure.get("size"), previous_failure.get("mtime_ns")) == stat:
            failed[relative] = previous_failure
            report.failed.append((relative, str(previous_failure.get("error"))))
            continue
        if relative in known and known[relative][1] == stat:
            keep_rows.append(known[relative][0])
            paths.append(relative)
            stats.append(stat)
            report.unchanged += 1
        else:
            to_embed.append((relative, stat, relative in known))
    current = {p for p, _, _ in to_embed} | set(paths) | set(failed)
    report.removed = sum(1 for path in index.paths if path not in current)

    vectors = [index.embeddings[keep_rows]] if keep_rows else []

    def snapshot() -> StyleIndex:
        embeddings = np.concatenate(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
        return StyleIndex(root, list(paths), embeddings, list(stats), embedder.fingerprint, dict(failed))

    loader = torch.utils.data.DataLoader(
        _ImageFiles(root, [relative for relative, _, _ in to_embed], embedder.image_processor),
        batch_size=embedder.batch_size,
        num_workers=resolve_num_workers(num_workers, len(to_embed), embedder.batch_size),
        collate_fn=_collate_images,
    )
    skipped = 0
    with _progress_bar(progress, len(to_embed)) as bar:
        for batch_number, (rows, pixel_values, errors) in enumerate(loader, start=1):
            for i, error in errors:
                relative, stat, _ = to_embed[i]
                failed[relative] = {"size": stat[0], "mtime_ns": stat[1], "error": error}
                report.failed.append((relative, error))
                skipped += 1
            if rows:
                vectors.append(embedder.embed_pixels(pixel_values))
                for i in rows:
                    relative, stat, existed = to_embed[i]
                    paths.append(relative)
                    stats.append(stat)
                    if existed:
                        report.updated += 1
                    else:
                        report.added += 1
            bar.update(len(rows) + len(errors))
            if checkpoint is not None and save_every and batch_number % save_every == 0:
                checkpoint(snapshot())
    if skipped:
        logger.warning("Skipped %d unreadable image(s) under %s: %s", skipped, root, _first_errors(report.failed))

    updated = snapshot()
    order = sorted(range(len(updated)), key=updated.paths.__getitem__)
    if order != list(range(len(updated))):
        updated.paths = [updated.paths[i] for i in order]
        updated.stats = [updated.stats[i] for i in order]
        updated.embeddings = updated.embeddings[order]
    return updated, report


def _first_errors(failed: list[tuple[str, str]], limit: int = 3) -> str:
    shown = "; ".join(error for _, error in failed[:limit])
    return shown + (f"; ... ({len(failed) - limit} more)" if len(failed) > limit else "")


def build_index(
    root: str | Path,
    embedder: StyleEmbedder,
    index_dir: str | Path | None = None,
    *,
    recursive: bool = True,
    progress: bool | Callable[[Iterable], Iterable] | None = None,
    num_workers: int | str | None = 0,
    save_every: int = 20,
    lock_timeout: float | None = 600.0,
) -> tuple[StyleIndex, UpdateReport]:
    """Bring the index stored in ``index_dir`` up to date with ``root`` and save it; fault tolerant.

    - holds the folder's lock (`index_lock`) from reading to the last write: a second indexer of
      the same folder waits, then finds the work done;
    - an unreadable or inconsistent stored index gives a warning naming the file and is rebuilt
      (``report.rebuilt``);
    - progress is saved every ``save_every`` batches (0: only at the end), so a run that is killed
      resumes where it stopped on the next call; nothing is written when nothing changed.

    Args:
        index_dir: default ``<root>/.artstyle-index`` (hidden folders are not indexed).
        progress, num_workers: as in `update_index`.
        lock_timeout: seconds to wait for another indexer (None: forever), then TimeoutError.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    index_dir = Path(index_dir) if index_dir is not None else root / DEFAULT_INDEX_DIR
    index_dir.mkdir(parents=True, exist_ok=True)
    with index_lock(index_dir, lock_timeout):
        unusable = (index_dir / INDEX_JSON).is_file()
        stored, meta = _load_or_warn(index_dir)
        if stored is not None and stored.model_fingerprint != embedder.fingerprint:
            logger.warning(
                "%s was built with another model (fingerprint %s..., this model %s...); it will be rebuilt",
                index_dir / INDEX_JSON,
                stored.model_fingerprint[:12],
                embedder.fingerprint[:12],
            )
            stored = None
        unusable = unusable and stored is None
        index, report = update_index(
            root,
            embedder,
            stored,
            recursive=recursive,
            progress=progress,
            num_workers=num_workers,
            save_every=save_every,
            checkpoint=_ProgressWriter(index_dir),
        )
        report.rebuilt = report.rebuilt or unusable
        unchanged = (
            stored is not None
            and not report.rebuilt
            and meta["format_version"] == FORMAT_VERSION
            and len(meta["files"]) <= 1  # else compact the files of an interrupted run into one
            and index.paths == stored.paths
            and index.stats == stored.stats
            and index.failed == stored.failed
            and str(index.root) == str(stored.root)
        )
        if unchanged:  # still remove what an interrupted writer may have left
            _remove_leftovers(index_dir, [spec["file"] for spec in meta["files"]])
        else:
            _save_unlocked(index, index_dir)
    return index, report


__all__ = [
    "DEFAULT_INDEX_DIR",
    "IMAGE_EXTENSIONS",
    "StyleEmbedder",
    "StyleIndex",
    "UpdateReport",
    "build_index",
    "default_device",
    "index_lock",
    "list_images",
    "load_image",
    "load_index",
    "model_fingerprint",
    "update_index",
]
