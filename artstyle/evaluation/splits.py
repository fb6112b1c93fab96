"""The splits of a labelled style dataset as ``run_finetune.py`` evaluates them.

`load_labelled_splits` picks the training split, the model-selection split (``validation`` where present,
else ``test``) and the final ``test`` split, and for each evaluated split the label column that scores it:
a multi-hot column (multi-label protocol, e.g. the AVA style test split) where the split has one, else the
class-id column. A multi-hot *training* column means multi-label training (BCE).
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
from torch.utils.data import DataLoader

from .. import data as style_data  # looked up at call time (tests replace the loader)
from ..data import StyleImageDataset, collate_skip_bad
from ..transforms import build_eval_transform, build_train_transform

__all__ = ["StyleData", "build_dataloaders", "load_labelled_splits"]


@dataclass
class StyleData:
    """The splits used by a run and what the model needs to know about their labels."""

    train: datasets.Dataset
    eval: datasets.Dataset
    eval_split: str
    test: datasets.Dataset | None
    label_names: list[str]
    multi_label_train: bool  # the training label column is multi-hot
    train_label_column: str
    # per evaluated split ("eval", "test"): (label column used for the metrics, whether it is multi-hot)
    eval_columns: dict[str, tuple[str, bool]]


def _is_multi_hot(feature) -> bool:
    return isinstance(feature, (datasets.List, datasets.LargeList)) or (
        isinstance(feature, list) and len(feature) == 1
    )


def _label_names(split: datasets.Dataset, label_column: str, fallback_column: str) -> list[str]:
    for column in (label_column, fallback_column, "label"):
        feature = split.features.get(column)
        if isinstance(feature, datasets.ClassLabel):
            return list(feature.names)
        inner = getattr(feature, "feature", None)
        if isinstance(inner, datasets.ClassLabel):
            return list(inner.names)
    feature = split.features.get(label_column)
    if feature is not None and _is_multi_hot(feature):
        return [f"LABEL_{i}" for i in range(len(split[0][label_column]))]
    if feature is not None:
        return [str(i) for i in sorted(set(split[label_column]))]
    raise ValueError(f"--label_column {label_column!r} is not a column of the training split ({split.column_names})")


def _eval_column(split: datasets.Dataset, data_args, name: str) -> tuple[str, bool]:
    """The multi-hot ``multi_label_column`` where the split has it, else ``label_column``."""
    for column in (data_args.multi_label_column, data_args.label_column):
        if column in split.column_names and _is_multi_hot(split.features[column]):
            return column, True
    if data_args.label_column not in split.column_names:
        raise ValueError(f"split {name!r} has no label column {data_args.label_column!r} ({split.column_names})")
    return data_args.label_column, False


def load_labelled_splits(data_args, **options) -> StyleData:
    """Load the dataset, pick the splits, detect single- vs multi-label columns. ``data_args`` carries
    ``dataset_name``, ``data_dir``, ``image_column``, ``label_column``, ``multi_label_column``, ``eval_split``,
    ``max_train_samples`` and ``max_eval_samples`` (``run_finetune.DataArguments``); ``options`` go to
    `load_style_dataset`."""
    dataset = style_data.load_style_dataset(data_args.dataset_name, data_dir=data_args.data_dir, **options)
    if "train" not in dataset:
        raise ValueError(f"dataset {data_args.dataset_name!r} has no 'train' split (splits: {list(dataset)})")
    eval_split = data_args.eval_split or ("validation" if "validation" in dataset else "test")
    if eval_split not in dataset:
        raise ValueError(f"--eval_split {eval_split!r} is not a split of the dataset (splits: {list(dataset)})")
    train = dataset["train"]
    for column in (data_args.image_column, data_args.label_column):
        if column not in train.column_names:
            raise ValueError(f"column {column!r} is not in the training split (columns: {train.column_names})")
    if data_args.max_train_samples is not None:
        train = train.shuffle(seed=0).select(range(min(data_args.max_train_samples, len(train))))

    def truncate(split: datasets.Dataset) -> datasets.Dataset:
        if data_args.max_eval_samples is None:
            return split
        return split.shuffle(seed=0).select(range(min(data_args.max_eval_samples, len(split))))

    evaluation = truncate(dataset[eval_split])
    test = truncate(dataset["test"]) if "test" in dataset and eval_split != "test" else None
    eval_columns = {"eval": _eval_column(evaluation, data_args, eval_split)}
    if test is not None:
        eval_columns["test"] = _eval_column(test, data_args, "test")
    return StyleData(
        train=train,
        eval=evaluation,
        eval_split=eval_split,
        test=test,
        label_names=_label_names(train, data_args.label_column, data_args.multi_label_column),
        multi_label_train=_is_multi_hot(train.features[data_args.label_column]),
        train_label_column=data_args.label_column,
        eval_columns=eval_columns,
    )


def build_dataloaders(
    data: StyleData, image_processor, data_args, train_args,
    augment_train: bool = True,
) -> dict[str, DataLoader]:
    """DataLoaders ``eval`` and ``test`` (where present), plus ``train`` (augmented) when ``augment_train``,
    else ``train_features`` (training split with the evaluation transform, for kNN / linear probe).
    ``data_args`` / ``train_args``: ``run_finetune``'s (columns, augmentation, workers, batch sizes)."""
    eval_transform = build_eval_transform(image_processor)
    train_transform = build_train_transform(
        image_processor, rand_augment=data_args.rand_augment, crop_scale=(data_args.crop_scale_min, 1.0),
        hflip_p=getattr(data_args, "hflip_prob", 0.5),
    )
    common = dict(collate_fn=collate_skip_bad, num_workers=data_args.dataloader_num_workers)
    loaders = {}
    if augment_train:
        train_set = StyleImageDataset(data.train, train_transform, data_args.image_column, data.train_label_column)
        batch_size = train_args.per_device_train_batch_size
        loaders["train"] = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                                      drop_last=len(train_set) >= 2 * batch_size, **common)

    def eval_loader(split, key):
        dataset = StyleImageDataset(split, eval_transform, data_args.image_column, data.eval_columns[key][0])
        return DataLoader(dataset, batch_size=train_args.per_device_eval_batch_size, shuffle=False, **common)

    loaders["eval"] = eval_loader(data.eval, "eval")
    if data.test is not None:
        loaders["test"] = eval_loader(data.test, "test")
    if not augment_train:
        loaders["train_features"] = DataLoader(
            StyleImageDataset(data.train, eval_transform, data_args.image_column, data.train_label_column),
            batch_size=train_args.per_device_eval_batch_size, shuffle=False, **common,
        )
    return loaders
