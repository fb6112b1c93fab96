"""`load_style_dataset`: one entry point for every dataset of the project."""

from __future__ import annotations

import logging
import os
from typing import Any

import datasets

from .ava import AVAStyle
from .common import LocalImageBuilder, default_cache_dir, split_fractions, stratified_split
from .demo import DemoStyle
from .flickr import FlickrStyle
from .folders import ImageFolderStyle, Pandora18k

logger = logging.getLogger(__name__)

BUILDERS: dict[str, type[datasets.GeneratorBasedBuilder]] = {
    "demo": DemoStyle,
    "ava": AVAStyle,
    "ava_style": AVAStyle,
    "pandora18k": Pandora18k,
    "pandora": Pandora18k,
    "flickr": FlickrStyle,
    "flickr_style": FlickrStyle,
    "imagefolder": ImageFolderStyle,
}

_SPLIT_ORDER = ("train", "validation", "test")
_SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation", "testing": "test"}


def _ordered(dataset_dict: datasets.DatasetDict) -> datasets.DatasetDict:
    keys = [k for k in _SPLIT_ORDER if k in dataset_dict] + [k for k in dataset_dict if k not in _SPLIT_ORDER]
    return datasets.DatasetDict({k: dataset_dict[k] for k in keys})


def build_dataset(builder: datasets.GeneratorBasedBuilder) -> datasets.DatasetDict:
    """``download_and_prepare`` (offline; reuses the on-disk cache) then ``as_dataset``."""
    builder.download_and_prepare()
    return _ordered(builder.as_dataset())


def load_style_dataset(
    name: str = "demo", data_dir: str | os.PathLike | None = None, **options: Any
) -> datasets.DatasetDict:
    """Load a style dataset as a ``DatasetDict`` with an ``image`` column and a ``label`` ClassLabel.

    Args:
        name: ``"demo"`` (built-in, procedurally generated), ``"ava"`` (AVA style),
            ``"pandora18k"``, ``"flickr"`` (Flickr Style), ``"imagefolder"`` (a local class-per-folder
            tree in ``data_dir``), a local folder path, or a Hub dataset id.
        data_dir: the dataset folder (required for ava / pandora18k / flickr / imagefolder).
        **options: builder options. All: ``cache_dir`` (default `default_cache_dir()`), ``seed``.
            demo: ``num_images=1200``, ``image_size=64``, ``validation_size=0.15``, ``test_size=0.15``.
            local datasets: ``test_size`` (default 0.2, used when the layout has no test split),
            ``validation_size`` (default 0), ``image_dir`` and ``metadata_file`` (AVA, Flickr).
            Hub / imagefolder-by-Hub: ``image_column``, ``label_column``, ``test_size``, plus any
            ``datasets.load_dataset`` keyword.

    Returns:
        splits ``train``, ``test`` and optionally ``validation``. AVA's ``test`` split keeps all the
        listed images found on disk (2,809 in the official lists) and also has ``labels`` (multi-hot
        over the 14 styles, the evaluation target; ``label`` is -1 on the rows without a positive
        style, see `single_label_view`). AVA and Flickr results have ``num_missing_images`` and
        ``missing_images`` (listed but not on disk); AVA's has ``num_unlabeled_test_images``.

    Raises:
        FileNotFoundError: ``data_dir`` is missing (the message shows the expected layout).
        ValueError: the folder does not have the expected layout, or an option is invalid.
    """
    key = name.lower().replace("-", "_")
    if key in BUILDERS:
        builder_cls = BUILDERS[key]
        if builder_cls is DemoStyle:
            if data_dir is not None:
                raise ValueError("the demo dataset is generated; data_dir must be None (use cache_dir to place it)")
            builder = DemoStyle(**options)
        else:
            builder = builder_cls(data_dir=data_dir, **options)
        dataset_dict = build_dataset(builder)
        if builder_cls is AVAStyle:
            for split in dataset_dict:
                if split != "test":
                    dataset_dict[split] = dataset_dict[split].remove_columns("labels")
        if isinstance(builder, LocalImageBuilder):
            for attribute in ("num_missing_images", "missing_images", "num_unlabeled_test_images"):
                if hasattr(builder, attribute):
                    setattr(dataset_dict, attribute, getattr(builder, attribute))
        return dataset_dict
    if data_dir is None and os.path.isdir(os.path.expanduser(name)) and not _has_data_files(name):
        return build_dataset(ImageFolderStyle(data_dir=name, **options))
    return load_hub_dataset(name, data_dir=data_dir, **options)


_DATA_FILE_SUFFIXES = (".parquet", ".arrow", ".csv", ".json", ".jsonl", ".tsv")


def _has_data_files(folder: str) -> bool:
    """Whether a local folder holds data files (e.g. parquet, or an imagefolder ``metadata.csv``) at its
    top level or one level down: such folders go to ``datasets.load_dataset``."""
    top = os.path.expanduser(folder)
    candidates = [top] + [e.path for e in os.scandir(top) if e.is_dir()]
    return any(
        f.endswith(_DATA_FILE_SUFFIXES) for c in candidates for f in os.listdir(c) if os.path.isfile(os.path.join(c, f))
    )


def single_label_view(split: datasets.Dataset, label_column: str = "label") -> datasets.Dataset:
    """The rows of ``split`` that have a class in ``label_column`` (ClassLabel value >= 0).

    The AVA style test split is multi-label and keeps the rows without a positive style (``label``
    -1); a single-label consumer (accuracy, confusion matrix, a cross-entropy loss) must use this
    view, which logs a warning with the number of rows it dropped and stores it in
    ``view.info.description``. The published AVA style protocol is the mean AP on all rows of
    ``labels``, not this view.
    """
    if label_column not in split.column_names:
        raise ValueError(f"label_column={label_column!r} is not a column of the split ({split.column_names})")
    keep = [i for i, value in enumerate(split[label_column]) if value is not None and value >= 0]
    dropped = split.num_rows - len(keep)
    if not dropped:
        return split
    logger.warning(
        "single-label view: dropped %d of %d rows without a class in %r (multi-label rows with no positive); "
        "%d rows kept", dropped, split.num_rows, label_column, len(keep),
    )
    view = split.select(keep)
    view.info.description = (
        f"{view.info.description}\nsingle-label view: {dropped} of {split.num_rows} rows without a class dropped"
    ).strip()
    return view


def load_hub_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    image_column: str = "image",
    label_column: str = "label",
    test_size: float = 0.2,
    seed: int = 0,
    cache_dir: str | None = None,
    **load_kwargs: Any,
) -> datasets.DatasetDict:
    """A Hub dataset (from the local cache when offline) with ``image``/``label`` columns.

    ``image_column`` / ``label_column`` are renamed to ``image`` / ``label``; a string or plain int
    label is encoded as a ClassLabel; ``valid``/``val`` splits are renamed ``validation``; without a
    test split a stratified ``test_size`` test split is carved from train (``seed``).
    """
    try:
        loaded = datasets.load_dataset(
            name, data_dir=data_dir, cache_dir=cache_dir or default_cache_dir(), **load_kwargs
        )
    except (FileNotFoundError, ConnectionError) as err:
        raise FileNotFoundError(
            f"dataset {name!r} is neither a built-in dataset ({sorted(BUILDERS)}), a local folder, nor a "
            f"Hub dataset available offline ({type(err).__name__}: {err})"
        ) from err
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    dataset_dict = datasets.DatasetDict({_SPLIT_ALIASES.get(k, k): v for k, v in loaded.items()})
    first = next(iter(dataset_dict.values()))
    for column, role in ((image_column, "image_column"), (label_column, "label_column")):
        if column not in first.column_names:
            raise ValueError(f"{role}={column!r} is not a column of {name!r} (columns: {first.column_names})")
    renames = {old: new for old, new in ((image_column, "image"), (label_column, "label")) if old != new}
    if renames:
        dataset_dict = dataset_dict.rename_columns(renames)
    if not isinstance(dataset_dict[next(iter(dataset_dict))].features["label"], datasets.ClassLabel):
        dataset_dict = dataset_dict.class_encode_column("label")
    if not isinstance(dataset_dict[next(iter(dataset_dict))].features["image"], datasets.Image):
        dataset_dict = dataset_dict.cast_column("image", datasets.Image())
    if "test" not in dataset_dict and "train" in dataset_dict and test_size > 0:
        train = dataset_dict["train"]
        parts = stratified_split(train["label"], split_fractions(test_size, 0.0), seed=seed)
        dataset_dict["train"], dataset_dict["test"] = train.select(parts["train"]), train.select(parts["test"])
    return _ordered(dataset_dict)
