"""AVA style (14 photographic styles): the official ``style_image_lists`` layout or class folders."""

from __future__ import annotations

import logging
from pathlib import Path

from .common import (
    Example,
    LocalImageBuilder,
    carve_validation,
    find_split_folders,
    scan_class_folders,
    sub_folders,
)

logger = logging.getLogger(__name__)

AVA_STYLE_NAMES = [
    "Complementary_Colors", "Duotones", "HDR", "Image_Grain", "Light_On_White", "Long_Exposure",
    "Macro", "Motion_Blur", "Negative_Image", "Rule_of_Thirds", "Shallow_DOF", "Silhouettes",
    "Soft_Focus", "Vanishing_Point",
]

AVA_LAYOUT = """\
  Official AVA layout (data_dir, or data_dir/AVA_dataset):
    images/<id>.jpg                      the AVA image folder (or pass image_dir=...)
    style_image_lists/styles.txt         "1 Complementary_Colors" ... one style per line
    style_image_lists/train.jpgl         one image id per line
    style_image_lists/train.lab          one 1-based style label per line (same order)
    style_image_lists/test.jpgl          one image id per line
    style_image_lists/test.multilab      one line of 14 space-separated 0/1 per test image (all zeros allowed)
  or class-per-folder:
    train/<style>/*.jpg   [valid/<style>/*.jpg]   test/<style>/*.jpg"""

_LIST_FILES = ("styles.txt", "train.jpgl", "train.lab", "test.jpgl", "test.multilab")


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]


def _find_lists_dir(data_dir: Path) -> Path | None:
    for candidate in (data_dir / "style_image_lists", data_dir / "AVA_dataset" / "style_image_lists", data_dir):
        if (candidate / "train.jpgl").is_file() or (candidate / "styles.txt").is_file():
            return candidate
    return None


def _parse_styles(path: Path) -> list[str]:
    entries = []
    for n, line in enumerate(_read_lines(path), 1):
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{n}: expected '<number> <style name>', got {line!r}\n{AVA_LAYOUT}")
        entries.append((int(parts[0]), parts[1].strip()))
    return [name for _, name in sorted(entries)]


def _image_index(image_dir: Path) -> dict[str, str]:
    """Image id (file stem) -> path, for the images directly inside ``image_dir``."""
    index = {}
    for entry in sorted(image_dir.iterdir()):
        if entry.is_file():
            index.setdefault(entry.stem, str(entry))
    return index


class AVAStyle(LocalImageBuilder):
    """AVA style: 14 photographic styles. Train is single-label; the official test split is
    multi-label and kept whole, as published (2,809 images): ``labels`` is the multi-hot evaluation
    target over the 14 styles (all zeros for the 236 images without a positive style, negatives of every
    class in the mean AP); ``label`` is the first positive style, or -1 where there is none (use
    `single_label_view` for a single-label view, which drops and counts those rows).
    In every split ``labels`` exists (one-hot outside the official test split)."""

    DATASET_NAME = "ava_style"
    LAYOUT = AVA_LAYOUT
    MULTI_LABEL = True

    def _scan(self, data_dir: Path):
        lists_dir = _find_lists_dir(data_dir)
        if lists_dir is not None:
            return self._scan_official(data_dir, lists_dir)
        if find_split_folders(data_dir):
            return self._scan_folders(data_dir)
        raise ValueError(
            f"AVA style: {str(data_dir)!r} has neither style_image_lists/ nor train/ test/ class folders "
            f"(found: {sub_folders(data_dir)}). Expected layout:\n{AVA_LAYOUT}"
        )

    def _scan_official(self, data_dir: Path, lists_dir: Path):
        missing = [name for name in _LIST_FILES if not (lists_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"AVA style: missing {missing} in {str(lists_dir)!r}. Expected layout:\n{AVA_LAYOUT}"
            )
        class_names = _parse_styles(lists_dir / "styles.txt")
        k = len(class_names)
        image_dir = Path(self.config.image_dir) if self.config.image_dir else None
        if image_dir is None:
            for candidate in (lists_dir.parent / "images", data_dir / "images", data_dir / "image"):
                if candidate.is_dir():
                    image_dir = candidate
                    break
        if image_dir is None or not image_dir.is_dir():
            raise FileNotFoundError(
                f"AVA style: image folder not found (looked for images/ next to {str(lists_dir)!r}; "
                f"pass image_dir=...). Expected layout:\n{AVA_LAYOUT}"
            )
        index = _image_index(image_dir)

        train_ids = _read_lines(lists_dir / "train.jpgl")
        train_lab = _read_lines(lists_dir / "train.lab")
        if len(train_ids) != len(train_lab):
            raise ValueError(
                f"AVA style: train.jpgl has {len(train_ids)} ids but train.lab has {len(train_lab)} labels"
            )
        test_ids = _read_lines(lists_dir / "test.jpgl")
        test_rows = _read_lines(lists_dir / "test.multilab")
        if len(test_ids) != len(test_rows):
            raise ValueError(
                f"AVA style: test.jpgl has {len(test_ids)} ids but test.multilab has {len(test_rows)} rows"
            )

        missing_images: list[str] = []
        train = []
        for n, (image_id, lab) in enumerate(zip(train_ids, train_lab), 1):
            if not lab.isdigit() or not 1 <= int(lab) <= k:
                raise ValueError(f"AVA style: train.lab line {n}: expected a label in 1..{k}, got {lab!r}")
            path = index.get(Path(image_id).stem)
            if path is None:
                missing_images.append(image_id)
                continue
            train.append(Example(path=path, label=int(lab) - 1))
        test = []
        unlabeled = 0
        for n, (image_id, row) in enumerate(zip(test_ids, test_rows), 1):
            values = row.split()
            if len(values) != k or any(v not in ("0", "1") for v in values):
                raise ValueError(
                    f"AVA style: test.multilab line {n}: expected {k} space-separated 0/1, got {row!r}"
                )
            multi_hot = [int(v) for v in values]
            path = index.get(Path(image_id).stem)
            if path is None:
                missing_images.append(image_id)
                continue
            # Kept as published: a row without a positive style is a negative of every class (label -1,
            # the `datasets` ClassLabel value for "no label"; `labels` is the evaluation target).
            unlabeled += not any(multi_hot)
            test.append(Example(path=path, label=multi_hot.index(1) if any(multi_hot) else -1, labels=multi_hot))
        if missing_images:
            logger.warning(
                "AVA style: %d listed image(s) not found in %s and left out (e.g. %s)",
                len(missing_images), image_dir, ", ".join(missing_images[:5]),
            )
        if unlabeled:
            logger.info(
                "AVA style: %d of %d test images have no positive style; kept (negatives of every class, label -1)",
                unlabeled, len(test),
            )
        self.missing_images = missing_images
        self.num_missing_images = len(missing_images)
        self.num_unlabeled_test_images = unlabeled
        splits = carve_validation({"train": train, "test": test}, self.config.validation_size, self.config.seed)
        return class_names, splits

    def _scan_folders(self, data_dir: Path):
        folders = find_split_folders(data_dir)
        if "train" not in folders:
            raise ValueError(f"AVA style: no train/ folder in {str(data_dir)!r}. Expected layout:\n{AVA_LAYOUT}")
        class_names = sorted({c for folder in folders.values() for c in sub_folders(folder)})
        splits = {split: scan_class_folders(folder, class_names)[1] for split, folder in folders.items()}
        self.missing_images, self.num_missing_images, self.num_unlabeled_test_images = [], 0, 0
        return class_names, carve_validation(splits, self.config.validation_size, self.config.seed)
