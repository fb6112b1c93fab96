"""Shared pieces of the dataset builders: cache location, splits, folder scanning, base builder."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}
)

# Folder names accepted for each split in pre-split layouts.
SPLIT_FOLDER_NAMES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val"),
    "test": ("test", "testing"),
}


def default_cache_dir() -> str:
    """Default cache for the built datasets.

    ``$ARTSTYLE_CACHE`` if set, else ``$HF_DATASETS_CACHE`` if set, else ``~/.cache/artstyle/datasets``.
    """
    for var in ("ARTSTYLE_CACHE", "HF_DATASETS_CACHE"):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    return os.path.join(os.path.expanduser("~"), ".cache", "artstyle", "datasets")


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike) -> list[str]:
    """All image files under ``folder`` (recursively, symlinks followed), sorted, as strings."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in files if not f.startswith(".") and is_image_file(f))
    return sorted(found)


def sub_folders(folder: str | os.PathLike) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def find_split_folders(data_dir: str | os.PathLike) -> dict[str, Path]:
    """Map split name -> folder for the split folders present in ``data_dir`` (case-insensitive)."""
    present = {name.lower(): Path(data_dir) / name for name in sub_folders(data_dir)}
    found = {}
    for split, aliases in SPLIT_FOLDER_NAMES.items():
        for alias in aliases:
            if alias in present:
                found[split] = present[alias]
                break
    return found


def require_dir(data_dir: str | os.PathLike | None, dataset: str, layout: str) -> Path:
    """``data_dir`` as a Path, or FileNotFoundError showing the expected layout."""
    if data_dir is None:
        raise FileNotFoundError(f"{dataset}: data_dir is required. Expected layout:\n{layout}")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{dataset}: data_dir {str(path)!r} is not a directory. Expected layout:\n{layout}")
    return path


def tree_fingerprint(data_dir: str | os.PathLike) -> str:
    """Cheap fingerprint of a folder tree (paths, sizes, modification times) for cache keys."""
    digest = hashlib.sha1()
    for root, dirs, files in os.walk(data_dir, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            rel = os.path.relpath(os.path.join(root, name), data_dir)
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def stratified_split(
    labels: Sequence[int],
    fractions: dict[str, float],
    seed: int = 0,
) -> dict[str, list[int]]:
    """Deterministic stratified split of indices ``0..len(labels)-1``.

    ``fractions`` maps split name -> fraction (summing to 1, the first split takes the rounding
    remainder). Per class, indices are shuffled with ``numpy.random.default_rng(seed)`` (classes in
    sorted order) and cut by rounded fractions; each later split gets at least one item of a class
    that has at least as many items as there are splits. Returned index lists are sorted.
    """
    names = list(fractions)
    values = np.array([fractions[n] for n in names], dtype=float)
    if (values < 0).any() or not np.isclose(values.sum(), 1.0):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {n: [] for n in names}
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        counts = [int(round(v * n)) for v in values[1:]]
        if n >= len(names):
            counts = [max(c, 1) if v > 0 else 0 for c, v in zip(counts, values[1:])]
        while sum(counts) > n - (1 if values[0] > 0 and n > 0 else 0) and any(counts):
            counts[int(np.argmax(counts))] -= 1
        start = n - sum(counts)
        out[names[0]].extend(idx[:start].tolist())
        for name, c in zip(names[1:], counts):
            out[name].extend(idx[start:start + c].tolist())
            start += c
    return {n: sorted(v) for n, v in out.items()}


def split_fractions(test_size: float, validation_size: float) -> dict[str, float]:
    """``{"train", "validation"?, "test"?}`` fractions from test/validation sizes in [0, 1)."""
    for name, value in (("test_size", test_size), ("validation_size", validation_size)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if test_size + validation_size >= 1.0:
        raise ValueError(f"test_size + validation_size must be < 1, got {test_size} + {validation_size}")
    fractions = {"train": 1.0 - test_size - validation_size}
    if validation_size > 0:
        fractions["validation"] = validation_size
    if test_size > 0:
        fractions["test"] = test_size
    return fractions


@dataclass
class Example:
    """One row of a local dataset before it is written: an image path and its label(s)."""

    path: str
    label: int
    labels: list[int] | None = None


@dataclass
class LocalBuilderConfig(datasets.BuilderConfig):
    """Options shared by the local-folder builders.

    Attributes:
        seed: seed of the deterministic stratified splits.
        test_size: fraction held out as test when the layout has no test split.
        validation_size: fraction of the training data held out as validation (0: none).
        image_dir: folder of the images when it is not found in the standard place (AVA, Flickr).
        metadata_file: the list/CSV file when it is not found in the standard place (Flickr).
        fingerprint: filled automatically from the data folder so that the cache follows its content.
    """

    seed: int = 0
    test_size: float = 0.2
    validation_size: float = 0.0
    image_dir: str | None = None
    metadata_file: str | None = None
    fingerprint: str = ""


class LocalImageBuilder(datasets.GeneratorBasedBuilder):
    """Base of the local builders: subclasses implement `_scan` -> (class names, split -> Examples).

    Images are stored as paths without being decoded (``datasets.Image``), so bad files never stop
    a build; `artstyle.data.StyleImageDataset` decodes them robustly at training time.
    """

    BUILDER_CONFIG_CLASS = LocalBuilderConfig
    DATASET_NAME = "local"
    LAYOUT = ""
    MULTI_LABEL = False

    def __init__(self, *args, data_dir: str | os.PathLike | None = None, **kwargs):
        path = require_dir(data_dir, self.DATASET_NAME, self.LAYOUT)
        kwargs.setdefault("cache_dir", default_cache_dir())
        kwargs.setdefault("dataset_name", self.DATASET_NAME)
        kwargs.setdefault("fingerprint", tree_fingerprint(path))
        self._scan_result = None
        super().__init__(*args, data_dir=str(path.resolve()), **kwargs)

    def _scanned(self):
        if self._scan_result is None:
            self._scan_result = self._scan(Path(self.config.data_dir))
        return self._scan_result

    def _scan(self, data_dir: Path) -> tuple[list[str], dict[str, list[Example]]]:
        raise NotImplementedError

    def _features(self, class_names: list[str]) -> datasets.Features:
        features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=class_names)}
        if self.MULTI_LABEL:
            features["labels"] = datasets.Sequence(datasets.Value("int8"), length=len(class_names))
        return datasets.Features(features)

    def _info(self) -> datasets.DatasetInfo:
        class_names, _ = self._scanned()
        return datasets.DatasetInfo(description=self.__doc__ or "", features=self._features(class_names))

    def _split_generators(self, dl_manager):
        _, splits = self._scanned()
        empty = [name for name, examples in splits.items() if not examples]
        if empty:
            logger.warning("%s: split(s) %s would be empty and are left out", self.DATASET_NAME, empty)
        return [
            datasets.SplitGenerator(name=name, gen_kwargs={"examples": examples})
            for name, examples in splits.items()
            if examples
        ]

    def _generate_examples(self, examples: Iterable[Example]):
        for i, ex in enumerate(examples):
            row = {"image": ex.path, "label": ex.label}
            if self.MULTI_LABEL:
                num_classes = self.info.features["label"].num_classes
                row["labels"] = ex.labels if ex.labels is not None else _one_hot(ex.label, num_classes)
            yield i, row


def _one_hot(label: int, num_classes: int) -> list[int]:
    out = [0] * num_classes
    out[label] = 1
    return out


def split_examples(
    examples: list[Example], test_size: float, validation_size: float, seed: int
) -> dict[str, list[Example]]:
    """Stratified train/validation/test split of ``examples`` by label (deterministic by seed)."""
    fractions = split_fractions(test_size, validation_size)
    parts = stratified_split([e.label for e in examples], fractions, seed=seed)
    return {name: [examples[i] for i in idx] for name, idx in parts.items()}


def carve_validation(
    splits: dict[str, list[Example]], validation_size: float, seed: int
) -> dict[str, list[Example]]:
    """Carve a stratified validation split out of ``splits["train"]`` when none exists."""
    if validation_size <= 0 or "validation" in splits:
        return splits
    parts = split_examples(splits["train"], test_size=0.0, validation_size=validation_size, seed=seed)
    out = dict(splits)
    out["train"], out["validation"] = parts["train"], parts["validation"]
    return out


def scan_class_folders(
    folder: Path, class_names: list[str] | None = None, recursive: bool = True
) -> tuple[list[str], list[Example]]:
    """Examples of a class-per-folder tree (images searched recursively inside each class folder)."""
    names = class_names if class_names is not None else sub_folders(folder)
    index = {n: i for i, n in enumerate(names)}
    examples = []
    for name in sub_folders(folder):
        if name not in index:
            raise ValueError(f"class folder {str(folder / name)!r} is not one of the classes {names}")
        files = list_images(folder / name) if recursive else sorted(
            str(folder / name / f) for f in os.listdir(folder / name) if is_image_file(f)
        )
        examples.extend(Example(path=p, label=index[name]) for p in files)
    return names, examples
