"""Flickr Style (20 photographic styles): the published CSV over a folder of downloaded images."""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
from pathlib import Path
from urllib.parse import urlparse

from .common import Example, LocalImageBuilder, carve_validation, split_examples

logger = logging.getLogger(__name__)

# Order of the label indices of the published CSV (caffe examples/finetune_flickr_style/style_names.txt).
FLICKR_STYLE_NAMES = [
    "Detailed", "Pastel", "Melancholy", "Noir", "HDR", "Vintage", "Long Exposure", "Horror", "Sunny",
    "Bright", "Hazy", "Bokeh", "Serene", "Texture", "Ethereal", "Macro", "Depth of Field",
    "Geometric Composition", "Minimal", "Romantic",
]

FLICKR_LAYOUT = """\
  Flickr Style layout:
    flickr_style.csv[.gz]     the published CSV (or pass metadata_file=...), columns:
                              image_url, label (0-19 index or style name), _split (train/test) [optional]
    images/<url basename>     the downloaded images (or pass image_dir=...)
    [style_names.txt]         optional class names, one per line, in label-index order
  Without a split column the split is stratified 60/20/20 train/validation/test (seed)."""

_URL_COLUMNS = ("image_url", "url", "image", "flickr_url")
_LABEL_COLUMNS = ("label", "style", "label_name")
_SPLIT_COLUMNS = ("_split", "split", "set")
_SPLIT_NAMES = {"train": "train", "training": "train", "test": "test", "testing": "test",
                "val": "validation", "valid": "validation", "validation": "validation"}


def _find_csv(data_dir: Path) -> Path | None:
    for name in ("flickr_style.csv.gz", "flickr_style.csv", "flickr_df_mar2014.csv", "flickr_df_mar2014.csv.gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    candidates = sorted(
        p for p in data_dir.iterdir()
        if p.name.endswith((".csv", ".csv.gz")) and not p.name.endswith("_download_report.csv")
    )
    return candidates[0] if len(candidates) == 1 else None


def _read_csv(path: Path) -> list[dict[str, str]]:
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"))))


def _pick(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    lower = {c.lower().strip(): c for c in columns}
    for name in candidates:
        if name in lower:
            return lower[name]
    return None


class FlickrStyle(LocalImageBuilder):
    """Flickr Style: 20 photographic styles from the published CSV; images missing on disk are
    counted (``num_missing_images``) and reported, never fatal."""

    DATASET_NAME = "flickr_style"
    LAYOUT = FLICKR_LAYOUT

    def _scan(self, data_dir: Path):
        csv_path = Path(self.config.metadata_file) if self.config.metadata_file else _find_csv(data_dir)
        if csv_path is None or not csv_path.is_file():
            raise FileNotFoundError(
                f"Flickr Style: CSV not found in {str(data_dir)!r}. Expected layout:\n{FLICKR_LAYOUT}"
            )
        rows = _read_csv(csv_path)
        columns = list(rows[0]) if rows else []
        url_col, label_col = _pick(columns, _URL_COLUMNS), _pick(columns, _LABEL_COLUMNS)
        split_col = _pick(columns, _SPLIT_COLUMNS)
        if url_col is None or label_col is None:
            raise ValueError(
                f"Flickr Style: {str(csv_path)!r} needs an image URL column {_URL_COLUMNS} and a label column "
                f"{_LABEL_COLUMNS}; found {columns}. Expected layout:\n{FLICKR_LAYOUT}"
            )
        image_dir = Path(self.config.image_dir) if self.config.image_dir else data_dir / "images"
        if not image_dir.is_dir():
            raise FileNotFoundError(
                f"Flickr Style: image folder {str(image_dir)!r} not found. Expected layout:\n{FLICKR_LAYOUT}"
            )

        raw_labels = [row[label_col].strip() for row in rows]
        names_file = data_dir / "style_names.txt"
        if names_file.is_file():  # caffe's examples/finetune_flickr_style/style_names.txt, one name per line
            class_names = [n.strip() for n in names_file.read_text(encoding="utf-8").splitlines() if n.strip()]
        else:
            class_names = self._class_names(raw_labels, csv_path)
        index = {name: i for i, name in enumerate(class_names)}
        on_disk = set(os.listdir(image_dir))
        examples, example_splits, missing = [], [], []
        for n, (row, raw) in enumerate(zip(rows, raw_labels), 2):
            label = int(raw) if raw.lstrip("-").isdigit() else index.get(raw, -1)
            if not 0 <= label < len(class_names):
                raise ValueError(f"Flickr Style: {csv_path.name} line {n}: unknown label {raw!r}")
            file_name = os.path.basename(urlparse(row[url_col].strip()).path)
            if not file_name or file_name not in on_disk:
                missing.append(file_name or row[url_col])
                continue
            split = None
            if split_col is not None:
                value = row[split_col].strip().lower()
                split = _SPLIT_NAMES.get(value)
                if split is None:
                    raise ValueError(f"Flickr Style: {csv_path.name} line {n}: unknown split {value!r}")
            examples.append(Example(path=str(image_dir / file_name), label=label))
            example_splits.append(split)

        self.missing_images = missing
        self.num_missing_images = len(missing)
        self.num_available_images = len(examples)
        if missing:
            logger.warning(
                "Flickr Style: %d of %d images listed in %s are missing from %s (left out; %d available), e.g. %s",
                len(missing), len(rows), csv_path.name, image_dir, len(examples), ", ".join(missing[:5]),
            )
        if not examples:
            raise ValueError(
                f"Flickr Style: none of the {len(rows)} images of {csv_path.name} is in {str(image_dir)!r}. "
                f"Expected layout:\n{FLICKR_LAYOUT}"
            )
        if split_col is None:
            return class_names, split_examples(examples, 0.2, 0.2, self.config.seed)
        splits: dict[str, list[Example]] = {}
        for example, split in zip(examples, example_splits):
            splits.setdefault(split, []).append(example)
        if "train" not in splits:
            raise ValueError(f"Flickr Style: no available image is in the train split of {csv_path.name}")
        return class_names, carve_validation(splits, self.config.validation_size, self.config.seed)

    @staticmethod
    def _class_names(raw_labels: list[str], csv_path: Path) -> list[str]:
        if all(r.lstrip("-").isdigit() for r in raw_labels):
            top = max((int(r) for r in raw_labels), default=-1)
            if top >= len(FLICKR_STYLE_NAMES):
                raise ValueError(f"Flickr Style: {csv_path.name}: label index {top} >= {len(FLICKR_STYLE_NAMES)}")
            return list(FLICKR_STYLE_NAMES)
        names = set(raw_labels)
        if names <= set(FLICKR_STYLE_NAMES):
            return list(FLICKR_STYLE_NAMES)
        return sorted(names)


__all__ = ["FLICKR_STYLE_NAMES", "FlickrStyle"]
