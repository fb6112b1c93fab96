"""Class-per-folder datasets: Pandora18k (18 art movements) and any local image folder."""

from __future__ import annotations

import logging
from pathlib import Path

from .common import (
    LocalImageBuilder,
    carve_validation,
    find_split_folders,
    scan_class_folders,
    split_examples,
    sub_folders,
)

logger = logging.getLogger(__name__)

FOLDER_LAYOUT = """\
  Class-per-folder layout (images searched recursively inside each class folder):
    <class_a>/**/*.jpg   <class_b>/**/*.jpg   ...        split deterministically (stratified)
  or pre-split:
    train/<class>/**/*.jpg   [validation|valid|val/<class>/...]   test/<class>/**/*.jpg"""

PANDORA_LAYOUT = """\
  Pandora18k layout: one folder per art movement, artist sub-folders inside (searched recursively):
    <movement>/<artist>/*.jpg      e.g. Baroque/Caravaggio/0001.jpg   (18 movement folders)
    split deterministically: stratified 80/20 train/test (test_size, validation_size, seed)
  or pre-split:
    train/<movement>/**/*.jpg   [validation|valid|val/<movement>/...]   test/<movement>/**/*.jpg"""


class ImageFolderStyle(LocalImageBuilder):
    """Any local class-per-folder image tree (class names = folder names)."""

    DATASET_NAME = "imagefolder_style"
    LAYOUT = FOLDER_LAYOUT
    EXPECTED_NUM_CLASSES: int | None = None

    def _scan(self, data_dir: Path):
        name = type(self).DATASET_NAME
        folders = find_split_folders(data_dir)
        if folders:
            if "train" not in folders:
                raise ValueError(
                    f"{name}: {str(data_dir)!r} has split folders {sorted(folders)} but no train/. "
                    f"Expected layout:\n{self.LAYOUT}"
                )
            class_names = sorted({c for folder in folders.values() for c in sub_folders(folder)})
            splits = {split: scan_class_folders(folder, class_names)[1] for split, folder in folders.items()}
            splits = carve_validation(splits, self.config.validation_size, self.config.seed)
        else:
            class_names, examples = scan_class_folders(data_dir)
            if not class_names:
                raise ValueError(f"{name}: no class folders in {str(data_dir)!r}. Expected layout:\n{self.LAYOUT}")
            splits = split_examples(examples, self.config.test_size, self.config.validation_size, self.config.seed)
        if not splits.get("train"):
            raise ValueError(f"{name}: no images found under {str(data_dir)!r}. Expected layout:\n{self.LAYOUT}")
        if self.EXPECTED_NUM_CLASSES and len(class_names) != self.EXPECTED_NUM_CLASSES:
            logger.warning(
                "%s: found %d classes (expected %d): %s",
                name, len(class_names), self.EXPECTED_NUM_CLASSES, class_names,
            )
        return class_names, splits


class Pandora18k(ImageFolderStyle):
    """Pandora18k: 18 art movements, one folder per movement with artist sub-folders."""

    DATASET_NAME = "pandora18k"
    LAYOUT = PANDORA_LAYOUT
    EXPECTED_NUM_CLASSES = 18
