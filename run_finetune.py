"""Fine-tune, linear-probe or kNN-evaluate an artstyle encoder on a style-classification dataset.

In the manner of Hugging Face's ``run_image_classification_no_trainer.py``, split into small functions::

    python run_finetune.py                                   # demo data, from outputs/pretrain
    python run_finetune.py --linear_probe                    # frozen encoder, linear head
    python run_finetune.py --knn                             # weighted kNN on frozen features (DINO)
    python run_finetune.py --model_name_or_path none --config_preset tiny   # from scratch
    accelerate launch run_finetune.py --dataset_name pandora18k --data_dir /data/pandora18k ...

Modes:
- full fine-tune (default): layer-wise LR decay (timm), mixup / cutmix with label smoothing (timm),
  drop path, cosine schedule with warmup; the best epoch (by ``--metric_for_best_model`` on the
  evaluation split) is saved to ``output_dir``, the last epoch to ``output_dir/checkpoints/last``.
- ``--linear_probe``: features of the frozen encoder are extracted once; a linear classifier is fitted
  on them and written into the model's classification head (encoder weights unchanged).
- ``--knn``: weighted kNN (k=20, T=0.07) of evaluation features against training features; only
  metrics are written (no model).

Evaluation uses ``validation`` for model selection when the dataset has it (else ``test``) and
reports the ``test`` split at the end. Where the evaluation split has a multi-hot column
(``--multi_label_column``, e.g. the AVA style test split) the multi-label metrics are used; where the
*training* label column itself is multi-hot, the model is trained multi-label (BCE).

Outputs in ``output_dir``: the model (``save_pretrained`` + image processor), ``all_results.json``,
``confusion_matrix.png``, ``per_class_accuracy.png``, a model card ``README.md``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import HfArgumentParser

logger = logging.getLogger("run_finetune")

CONFIG_PRESETS = ("tiny", "vit_small", "vit_base")
SCALAR_METRICS = ("accuracy", "top5_accuracy", "macro_f1", "mean_average_precision")


# ------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="outputs/pretrain",
        metadata={"help": "Pretraining (or classifier) folder, Hub id, or 'none' to start from scratch."},
    )
    config_preset: str = field(
        default="tiny", metadata={"help": f"Config preset when --model_name_or_path none: {CONFIG_PRESETS}."}
    )
    backbone_depth: int | None = field(
        default=None, metadata={"help": "Number of ViT blocks (from scratch only; None = preset's)."}
    )
    image_size: int | None = field(default=None, metadata={"help": "Input size (from scratch only)."})
    drop_path_rate: float = field(default=0.1, metadata={"help": "Stochastic depth of the backbone."})


@dataclass
class DataArguments:
    dataset_name: str = field(
        default="demo",
        metadata={"help": "demo | ava | pandora18k | flickr | imagefolder | a Hub dataset id.",
                  "aliases": ["--dataset"]},
    )
    data_dir: str | None = field(default=None, metadata={"help": "Local data folder of the dataset."})
    dataset_options: str | None = field(
        default=None,
        metadata={"help": 'JSON object of extra options for load_style_dataset, e.g. \'{"num_images": 300}\'.'},
    )
    image_column: str = field(default="image", metadata={"help": "Image column."})
    label_column: str = field(default="label", metadata={"help": "Training label column (ClassLabel or multi-hot)."})
    multi_label_column: str = field(
        default="labels", metadata={"help": "Multi-hot column used for evaluation where a split has it."}
    )
    eval_split: str | None = field(
        default=None, metadata={"help": "Split for model selection (default: validation if present, else test)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training split."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation splits."})
    rand_augment: str | None = field(default=None, metadata={"help": "timm-style RandAugment, e.g. rand-m9-mstd0.5."})
    crop_scale_min: float = field(default=0.25, metadata={"help": "Lower bound of RandomResizedCrop's area scale."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})


@dataclass
class FinetuneArguments:
    output_dir: str = field(default="outputs/finetune", metadata={"help": "Where the model and results go."})
    linear_probe: bool = field(default=False, metadata={"help": "Frozen encoder, train a linear head only."})
    knn: bool = field(default=False, metadata={"help": "Only evaluate frozen features with a weighted kNN."})
    knn_k: int = field(default=20, metadata={"help": "Neighbours of the kNN classifier."})
    knn_temperature: float = field(default=0.07, metadata={"help": "Temperature of the kNN vote weights."})
    num_train_epochs: int = field(
        default=5, metadata={"help": "Fine-tuning epochs (5 keeps the demo to a few minutes on 2 CPU cores)."}
    )
    max_train_steps: int | None = field(default=None, metadata={"help": "If set, overrides num_train_epochs."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device (training)."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Batch size per device (evaluation)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Steps accumulated per update."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate (top layer)."})
    min_learning_rate: float = field(default=1e-6, metadata={"help": "Learning rate at the end of the cosine."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    layer_decay: float = field(default=0.75, metadata={"help": "Layer-wise LR decay (1.0 = off)."})
    warmup_epochs: float = field(default=1.0, metadata={"help": "Linear warmup length in epochs."})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Gradient clipping (None = off)."})
    mixup: float = field(
        default=0.0,
        metadata={"help": "Mixup alpha (0 = off). The DeiT / MAE recipe (--mixup 0.8 --cutmix 1.0) suits paper-scale "
                          "data; on the small demo it lowered accuracy (0.64 vs 0.82 from scratch, 10 epochs)."},
    )
    cutmix: float = field(default=0.0, metadata={"help": "CutMix alpha (0 = off)."})
    mixup_prob: float = field(default=1.0, metadata={"help": "Probability of applying mixup or cutmix to a batch."})
    mixup_switch_prob: float = field(default=0.5, metadata={"help": "Probability of cutmix instead of mixup."})
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing."})
    probe_epochs: int = field(default=100, metadata={"help": "Linear probe: epochs over the extracted features."})
    probe_learning_rate: float = field(default=1e-2, metadata={"help": "Linear probe: AdamW learning rate."})
    probe_weight_decay: float = field(default=1e-4, metadata={"help": "Linear probe: weight decay."})
    metric_for_best_model: str = field(default="accuracy", metadata={"help": f"One of {SCALAR_METRICS}."})
    mixed_precision: str = field(
        default="auto",
        metadata={"help": "no, fp16, bf16, or auto (bf16 where the GPU supports it, else the accelerate config)."},
    )
    seed: int = field(default=42, metadata={"help": "Random seed."})
    logging_steps: int = field(default=10, metadata={"help": "Log the training loss every N updates."})
    with_tracking: bool = field(default=False, metadata={"help": "Log to TensorBoard (output_dir/runs)."})
    save_plots: bool = field(default=True, metadata={"help": "Write the confusion-matrix and per-class charts."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload output_dir to the Hub at the end."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository id for --push_to_hub."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token (default: the cached login)."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})


def parse_args(args: list[str] | None = None) -> tuple[ModelArguments, DataArguments, FinetuneArguments]:
    """Parse command-line arguments (``args`` None = ``sys.argv``) and validate them."""
    parser = HfArgumentParser((ModelArguments, DataArguments, FinetuneArguments))
    model_args, data_args, train_args = parser.parse_args_into_dataclasses(args=args)
    validate_args(model_args, data_args, train_args)
    return model_args, data_args, train_args


def validate_args(model_args: ModelArguments, data_args: DataArguments, train_args: FinetuneArguments) -> None:
    """Raise ValueError naming the offending option."""
    if train_args.linear_probe and train_args.knn:
        raise ValueError("--linear_probe and --knn are exclusive; pick one")
    from_scratch = model_args.model_name_or_path.lower() == "none"
    if from_scratch and model_args.config_preset not in CONFIG_PRESETS:
        raise ValueError(f"--config_preset must be one of {CONFIG_PRESETS}, got {model_args.config_preset!r}")
    if not from_scratch and (model_args.backbone_depth is not None or model_args.image_size is not None):
        raise ValueError("--backbone_depth / --image_size only apply with --model_name_or_path none")
    if from_scratch and (train_args.linear_probe or train_args.knn):
        logger.warning("Evaluating a randomly initialised encoder (--model_name_or_path none)")
    if not from_scratch:
        check_model_source(model_args.model_name_or_path)
    if train_args.metric_for_best_model not in SCALAR_METRICS:
        raise ValueError(f"--metric_for_best_model must be one of {SCALAR_METRICS}")
    for name in ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
                 "gradient_accumulation_steps", "knn_k", "probe_epochs", "logging_steps"):
        if getattr(train_args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(train_args, name)}")
    if train_args.max_train_steps is not None and train_args.max_train_steps < 1:
        raise ValueError(f"--max_train_steps must be >= 1, got {train_args.max_train_steps}")
    if not 0 < train_args.layer_decay <= 1:
        raise ValueError(f"--layer_decay must be in (0, 1], got {train_args.layer_decay}")
    if not 0 <= train_args.label_smoothing < 1:
        raise ValueError(f"--label_smoothing must be in [0, 1), got {train_args.label_smoothing}")
    if train_args.mixup < 0 or train_args.cutmix < 0:
        raise ValueError("--mixup and --cutmix must be >= 0")
    if not 0 < data_args.crop_scale_min <= 1:
        raise ValueError(f"--crop_scale_min must be in (0, 1], got {data_args.crop_scale_min}")
    if data_args.dataset_options is not None:
        try:
            options = json.loads(data_args.dataset_options)
        except json.JSONDecodeError as err:
            raise ValueError(f"--dataset_options is not valid JSON: {err}") from err
        if not isinstance(options, dict):
            raise ValueError("--dataset_options must be a JSON object")
    if train_args.mixed_precision not in ("auto", "no", "fp16", "bf16"):
        raise ValueError(f"--mixed_precision must be auto, no, fp16 or bf16, got {train_args.mixed_precision!r}")
    if train_args.push_to_hub and not train_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id")


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


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


def _eval_column(split: datasets.Dataset, data_args: DataArguments, name: str) -> tuple[str, bool]:
    """The multi-hot ``multi_label_column`` where the split has it, else ``label_column``."""
    for column in (data_args.multi_label_column, data_args.label_column):
        if column in split.column_names and _is_multi_hot(split.features[column]):
            return column, True
    if data_args.label_column not in split.column_names:
        raise ValueError(f"split {name!r} has no label column {data_args.label_column!r} ({split.column_names})")
    return data_args.label_column, False


def load_data(data_args: DataArguments) -> StyleData:
    """Load the dataset, pick the splits, detect single- vs multi-label columns."""
    from artstyle.data import load_style_dataset

    options = json.loads(data_args.dataset_options) if data_args.dataset_options else {}
    dataset = load_style_dataset(data_args.dataset_name, data_dir=data_args.data_dir, **options)
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
    data: StyleData, image_processor, data_args: DataArguments, train_args: FinetuneArguments,
    augment_train: bool = True,
) -> dict[str, DataLoader]:
    """DataLoaders ``eval`` and ``test`` (where present), plus ``train`` (augmented) when ``augment_train``,
    else ``train_features`` (training split with the evaluation transform, for kNN / linear probe)."""
    from artstyle.data import StyleImageDataset, collate_skip_bad
    from artstyle.transforms import build_eval_transform, build_train_transform

    eval_transform = build_eval_transform(image_processor)
    train_transform = build_train_transform(
        image_processor, rand_augment=data_args.rand_augment, crop_scale=(data_args.crop_scale_min, 1.0)
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


# ------------------------------------------------------------------------------------------------
# Model and optimizer
# ------------------------------------------------------------------------------------------------


def check_model_source(source: str) -> None:
    """A local-looking ``--model_name_or_path`` must hold a saved model (else it would be tried on the Hub)."""
    looks_local = os.path.exists(source) or source.startswith((".", "/", "~")) or source.count("/") != 1
    if looks_local and not os.path.isfile(os.path.join(os.path.expanduser(source), "config.json")):
        raise FileNotFoundError(
            f"--model_name_or_path {source!r}: no saved model there. Run `python run_pretrain.py` first, "
            "pass a pretraining folder or Hub id, or train from scratch with "
            "`--model_name_or_path none --config_preset tiny`."
        )


def build_model(model_args: ModelArguments, label_names: list[str], multi_label: bool):
    """`ArtStyleForImageClassification` from a pretraining / classifier folder, a Hub id, or a preset."""
    from artstyle import ArtStyleConfig, ArtStyleForImageClassification

    id2label = {i: name for i, name in enumerate(label_names)}
    label_kwargs = dict(
        num_labels=len(label_names),
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    source = model_args.model_name_or_path
    if source.lower() == "none":
        overrides = {"drop_path_rate": model_args.drop_path_rate, **label_kwargs}
        if model_args.backbone_depth is not None:
            overrides["backbone_depth"] = model_args.backbone_depth
        if model_args.image_size is not None:
            overrides["image_size"] = model_args.image_size
        config = getattr(ArtStyleConfig, model_args.config_preset)(**overrides)
        return ArtStyleForImageClassification(config)
    check_model_source(source)
    return ArtStyleForImageClassification.from_pretrained(
        os.path.expanduser(source), drop_path_rate=model_args.drop_path_rate, ignore_mismatched_sizes=True,
        **label_kwargs,
    )


def build_optimizer(model: nn.Module, train_args: FinetuneArguments) -> torch.optim.Optimizer:
    """AdamW over layer-wise-LR-decay groups; each group's ``lr_scale`` multiplies the scheduled rate."""
    from artstyle.evaluation import layer_decay_param_groups

    groups = layer_decay_param_groups(model, train_args.weight_decay, train_args.layer_decay)
    for group in groups:
        group["lr"] = train_args.learning_rate * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=train_args.learning_rate, betas=(0.9, 0.999))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def build_mixup(train_args: FinetuneArguments, num_classes: int, multi_label: bool):
    """timm `Mixup` (or None when mixup and cutmix are off or the labels are multi-hot)."""
    from timm.data import Mixup

    if multi_label or (train_args.mixup <= 0 and train_args.cutmix <= 0) or train_args.mixup_prob <= 0:
        return None
    return Mixup(
        mixup_alpha=train_args.mixup, cutmix_alpha=train_args.cutmix, prob=train_args.mixup_prob,
        switch_prob=train_args.mixup_switch_prob, label_smoothing=train_args.label_smoothing,
        num_classes=num_classes,
    )


def build_criterion(train_args: FinetuneArguments, mixup_fn, multi_label: bool) -> nn.Module:
    from timm.loss import SoftTargetCrossEntropy

    if multi_label:
        return nn.BCEWithLogitsLoss()
    if mixup_fn is not None:
        return SoftTargetCrossEntropy()  # mixup produces smoothed soft targets
    return nn.CrossEntropyLoss(label_smoothing=train_args.label_smoothing)


# ------------------------------------------------------------------------------------------------
# Training and evaluation
# ------------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    step: int = 0  # optimizer updates done
    total_steps: int = 1
    warmup_steps: int = 0
    num_skipped: int = 0
    losses: list[float] = field(default_factory=list)


def train_one_epoch(
    model, dataloader, optimizer, criterion, accelerator: Accelerator, state: TrainState,
    train_args: FinetuneArguments, mixup_fn=None, progress=None,
) -> float:
    """One pass over ``dataloader``; returns the mean loss. Stops early at ``state.total_steps``."""
    from artstyle.training import cosine_lr

    model.train()
    running, count = 0.0, 0
    for batch in dataloader:
        if state.step >= state.total_steps:
            break
        if batch is None:
            continue
        state.num_skipped += int(batch.get("num_skipped", 0))
        pixel_values, labels = batch["pixel_values"], batch["labels"]
        if mixup_fn is not None:
            if len(pixel_values) % 2:  # timm's batch mixup pairs images: drop one from an odd batch
                if len(pixel_values) == 1:
                    continue
                pixel_values, labels = pixel_values[:-1], labels[:-1]
            pixel_values, labels = mixup_fn(pixel_values, labels)
        with accelerator.accumulate(model):
            lr = cosine_lr(state.step, state.total_steps, state.warmup_steps, train_args.learning_rate,
                           train_args.min_learning_rate)
            set_learning_rate(optimizer, lr)
            logits = model(pixel_values=pixel_values).logits.float()
            loss = criterion(logits, labels.float() if labels.is_floating_point() else labels)
            accelerator.backward(loss)
            if accelerator.sync_gradients and train_args.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), train_args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        running += loss.detach().float().item()
        count += 1
        if accelerator.sync_gradients:
            state.step += 1
            if progress is not None:
                progress.update(1)
            if state.step % train_args.logging_steps == 0:
                logger.info("step %d: loss %.4f lr %.2e", state.step, running / max(count, 1), lr)
                if train_args.with_tracking:
                    accelerator.log({"train/loss": running / max(count, 1), "train/lr": lr}, step=state.step)
    mean = running / max(count, 1)
    state.losses.append(mean)
    return mean


@torch.no_grad()
def predict_scores(model, dataloader, accelerator: Accelerator, multi_label_model: bool):
    """Class scores (softmax, or sigmoid for a multi-label model) and references over ``dataloader``."""
    from artstyle.evaluation import scores_from_logits

    model.eval()
    scores, references = [], []
    for batch in dataloader:
        if batch is None:
            continue
        logits = model(pixel_values=batch["pixel_values"]).logits
        logits, labels = accelerator.gather_for_metrics((logits, batch["labels"]))
        scores.append(scores_from_logits(logits, multi_label_model))
        references.append(labels.cpu().numpy())
    if not scores:
        raise ValueError("the evaluation split gave no decodable images")
    return np.concatenate(scores), np.concatenate(references)


@functools.lru_cache(maxsize=2)
def _style_metric(multi_label: bool):
    from artstyle.metrics import load_style_metrics

    return load_style_metrics(multi_label=multi_label, keep_in_memory=True)


def compute_metrics(scores: np.ndarray, references: np.ndarray, multi_label: bool, metric=None) -> dict[str, Any]:
    """The style metrics (`artstyle.metrics`) of ``scores`` ``[N, K]`` against ``references``."""
    metric = metric or _style_metric(multi_label)
    if multi_label:
        references = (np.asarray(references) > 0.5).astype(np.int32)
    else:
        references = np.asarray(references).astype(np.int64)
    return metric.compute(predictions=scores.astype(np.float32), references=references)


def evaluate(model, loaders: dict[str, DataLoader], accelerator: Accelerator, data: StyleData,
             split: str = "eval") -> dict[str, Any]:
    """Metrics of ``model`` on ``loaders[split]`` (multi-label protocol where that split is multi-hot)."""
    scores, references = predict_scores(model, loaders[split], accelerator, data.multi_label_train)
    return compute_metrics(scores, references, data.eval_columns[split][1])


def knn_evaluate(model, loaders: dict[str, DataLoader], accelerator: Accelerator, data: StyleData,
                 train_args: FinetuneArguments, split: str = "eval") -> dict[str, Any]:
    """Weighted kNN of the frozen ``pooler_output`` features of ``split`` against the training features."""
    from artstyle.evaluation import extract_features, knn_classify

    train_features, train_labels = extract_features(model, loaders["train_features"], accelerator)
    features, references = extract_features(model, loaders[split], accelerator)
    scores = knn_classify(train_features, train_labels, features, len(data.label_names),
                          k=train_args.knn_k, temperature=train_args.knn_temperature)
    return compute_metrics(scores.numpy(), references.numpy(), data.eval_columns[split][1])


def fit_linear_probe(model, loaders: dict[str, DataLoader], accelerator: Accelerator, data: StyleData,
                     train_args: FinetuneArguments) -> nn.Linear:
    """Extract frozen training features once, fit the linear head, copy it into ``model.classifier``."""
    from artstyle.evaluation import extract_features, train_linear_probe

    model.requires_grad_(False)
    features, labels = extract_features(model, loaders["train_features"], accelerator)
    head = train_linear_probe(
        features, labels, len(data.label_names), epochs=train_args.probe_epochs,
        learning_rate=train_args.probe_learning_rate, weight_decay=train_args.probe_weight_decay,
        multi_label=data.multi_label_train, seed=train_args.seed,
    )
    classifier = accelerator.unwrap_model(model).classifier
    with torch.no_grad():
        classifier.weight.copy_(head.weight.to(classifier.weight))
        classifier.bias.copy_(head.bias.to(classifier.bias))
    return head


# ------------------------------------------------------------------------------------------------
# Saving
# ------------------------------------------------------------------------------------------------


def save_model(model, output_dir: str | Path, accelerator: Accelerator) -> Path:
    """``save_pretrained`` (safetensors) + the image processor, on the main process."""
    from artstyle import build_image_processor

    output_dir = Path(output_dir)
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        unwrapped.save_pretrained(output_dir, safe_serialization=True)
        build_image_processor(unwrapped.config).save_pretrained(output_dir)
    accelerator.wait_for_everyone()
    return output_dir


def scalar_metrics(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    return {f"{prefix}_{key}": float(metrics[key]) for key in SCALAR_METRICS if metrics.get(key) is not None}


def write_reports(output_dir: Path, results: dict[str, Any], final_metrics: dict[str, Any], data: StyleData,
                  train_args: FinetuneArguments) -> None:
    """``all_results.json`` and, for single-label evaluation, the two charts."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "all_results.json", "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    if train_args.save_plots and final_metrics.get("confusion_matrix") is not None:
        from artstyle.plots import plot_confusion_matrix, plot_per_class_accuracy

        plot_confusion_matrix(final_metrics["confusion_matrix"], data.label_names, output_dir / "confusion_matrix.png")
        plot_per_class_accuracy(final_metrics["confusion_matrix"], data.label_names,
                                output_dir / "per_class_accuracy.png")


def write_model_card(output_dir: Path, model, data_args: DataArguments, model_args: ModelArguments,
                     train_args: FinetuneArguments, summary: dict[str, Any], metrics: dict[str, float]) -> None:
    from artstyle.hub import save_model_card

    source = model_args.model_name_or_path
    save_model_card(
        output_dir, task="image-classification", dataset_name=data_args.dataset_name, config=model.config,
        training_summary=summary, metrics=metrics, base_model=None if source.lower() == "none" else source,
        model_id=train_args.hub_model_id,
    )


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def resolve_mixed_precision(value: str) -> str | None:
    """``auto``: the ``accelerate launch`` / config setting if any, else bf16 on a GPU that supports it, else no."""
    if value != "auto":
        return value
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _mode(train_args: FinetuneArguments) -> str:
    return "knn" if train_args.knn else "linear_probe" if train_args.linear_probe else "finetune"


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Run fine-tuning / linear probe / kNN as given by ``args``; returns the results written."""
    model_args, data_args, train_args = parse_args(args)
    mode = _mode(train_args)
    output_dir = Path(train_args.output_dir)

    accelerator = Accelerator(
        gradient_accumulation_steps=train_args.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(train_args.mixed_precision),
        log_with="tensorboard" if train_args.with_tracking else None,
        project_dir=str(output_dir / "runs"),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if accelerator.is_local_main_process else logging.ERROR)
    logger.info("%s", accelerator.state)
    set_seed(train_args.seed)

    with accelerator.main_process_first():
        data = load_data(data_args)
    logger.info("train %d, %s %d, test %s images; %d classes; multi-label train %s / eval %s",
                len(data.train), data.eval_split, len(data.eval), len(data.test) if data.test else "-",
                len(data.label_names), data.multi_label_train,
                {key: multi for key, (_, multi) in data.eval_columns.items()})

    from artstyle import build_image_processor

    model = build_model(model_args, data.label_names, data.multi_label_train)
    image_processor = build_image_processor(model.config)
    loaders = build_dataloaders(data, image_processor, data_args, train_args, augment_train=mode == "finetune")
    results: dict[str, Any] = {"mode": mode, "dataset": data_args.dataset_name,
                               "model_name_or_path": model_args.model_name_or_path, "eval_split": data.eval_split}

    if mode in ("knn", "linear_probe"):
        # frozen encoder: no DDP wrapper (nothing to synchronise), only the dataloaders are sharded
        model = model.to(accelerator.device)
        loaders = dict(zip(loaders, accelerator.prepare(*loaders.values())))  # always >= 2 loaders here

    if mode == "knn":
        final = knn_evaluate(model, loaders, accelerator, data, train_args, "eval")
        results.update(scalar_metrics(final, "eval"), eval_details=final)
        if "test" in loaders:
            final = knn_evaluate(model, loaders, accelerator, data, train_args, "test")
            results.update(scalar_metrics(final, "test"), test_details=final)
        results["knn"] = {"k": train_args.knn_k, "temperature": train_args.knn_temperature}
        if accelerator.is_main_process:
            write_reports(output_dir, results, final, data, train_args)
        accelerator.end_training()
        return results

    if mode == "linear_probe":
        fit_linear_probe(model, loaders, accelerator, data, train_args)
        eval_metrics = evaluate(model, loaders, accelerator, data, "eval")
        results.update(scalar_metrics(eval_metrics, "eval"), eval_details=eval_metrics)
        best_state = None
        summary = {"mode": "linear probe (frozen encoder)", "probe_epochs": train_args.probe_epochs,
                   "probe_learning_rate": train_args.probe_learning_rate}
    else:
        optimizer = build_optimizer(model, train_args)
        mixup_fn = build_mixup(train_args, len(data.label_names), data.multi_label_train)
        criterion = build_criterion(train_args, mixup_fn, data.multi_label_train)
        model, optimizer, *prepared = accelerator.prepare(model, optimizer, *loaders.values())
        loaders = dict(zip(loaders, prepared))

        updates_per_epoch = max(1, math.ceil(len(loaders["train"]) / train_args.gradient_accumulation_steps))
        total_steps = train_args.max_train_steps or train_args.num_train_epochs * updates_per_epoch
        num_epochs = math.ceil(total_steps / updates_per_epoch)
        state = TrainState(total_steps=total_steps,
                           warmup_steps=min(total_steps, int(train_args.warmup_epochs * updates_per_epoch)))
        if train_args.with_tracking:
            config = {**asdict(model_args), **asdict(data_args), **asdict(train_args)}
            accelerator.init_trackers("finetune", {k: v for k, v in config.items()
                                                   if isinstance(v, (int, float, str, bool))})
        logger.info("fine-tuning %d epochs, %d updates (%d per epoch), total batch %d", num_epochs, total_steps,
                    updates_per_epoch, train_args.per_device_train_batch_size * accelerator.num_processes
                    * train_args.gradient_accumulation_steps)
        progress = tqdm(total=total_steps, disable=not accelerator.is_local_main_process, desc="fine-tune")
        best_value, best_state, best_epoch, history = -math.inf, None, -1, []
        for epoch in range(num_epochs):
            loss = train_one_epoch(model, loaders["train"], optimizer, criterion, accelerator, state, train_args,
                                   mixup_fn, progress)
            eval_metrics = evaluate(model, loaders, accelerator, data, "eval")
            value = eval_metrics[train_args.metric_for_best_model]
            history.append({"epoch": epoch, "train_loss": loss, **scalar_metrics(eval_metrics, "eval")})
            logger.info("epoch %d: train loss %.4f, eval %s %.4f", epoch, loss, train_args.metric_for_best_model,
                        value)
            if train_args.with_tracking:
                accelerator.log({"train/epoch_loss": loss, **{f"eval/{k[5:]}": v for k, v in
                                 scalar_metrics(eval_metrics, "eval").items()}}, step=state.step)
            if value > best_value or best_state is None:
                best_value, best_epoch = value, epoch
                best_state = {k: v.detach().cpu().clone()
                              for k, v in accelerator.unwrap_model(model).state_dict().items()}
                results.update(scalar_metrics(eval_metrics, "eval"), eval_details=eval_metrics)
        progress.close()
        save_model(model, output_dir / "checkpoints" / "last", accelerator)
        accelerator.unwrap_model(model).load_state_dict(best_state)
        results.update(best_epoch=best_epoch, history=history, train_steps=state.step,
                       num_skipped_images=state.num_skipped)
        summary = {"mode": "full fine-tune", "epochs": num_epochs, "updates": state.step,
                   "learning_rate": train_args.learning_rate, "layer_decay": train_args.layer_decay,
                   "weight_decay": train_args.weight_decay, "mixup": train_args.mixup, "cutmix": train_args.cutmix,
                   "label_smoothing": train_args.label_smoothing, "drop_path_rate": model_args.drop_path_rate,
                   "batch_size": train_args.per_device_train_batch_size * accelerator.num_processes
                   * train_args.gradient_accumulation_steps, "best_epoch": best_epoch}

    final = results["eval_details"]
    if "test" in loaders:
        final = evaluate(model, loaders, accelerator, data, "test")
        results.update(scalar_metrics(final, "test"), test_details=final)
    save_model(model, output_dir, accelerator)
    if accelerator.is_main_process:
        write_reports(output_dir, results, final, data, train_args)
        card_prefix = "test" if "test" in loaders else "eval"
        card_metrics = {k[len(card_prefix) + 1:]: v for k, v in results.items()
                        if k.startswith(card_prefix + "_") and isinstance(v, float)}
        write_model_card(output_dir, accelerator.unwrap_model(model), data_args, model_args, train_args,
                         summary, card_metrics)
        if train_args.push_to_hub:
            from artstyle.hub import push_to_hub

            url = push_to_hub(output_dir, train_args.hub_model_id, token=train_args.hub_token,
                              private=train_args.hub_private, commit_message=f"artstyle {mode} on "
                              f"{data_args.dataset_name}")
            logger.info("pushed to %s", url)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def cli() -> None:
    """Console entry point ``artstyle-finetune``."""
    try:
        results = main()
    except (ValueError, FileNotFoundError) as err:
        print(f"artstyle-finetune: error: {err}", file=sys.stderr)
        sys.exit(2)
    from accelerate import PartialState

    if PartialState().is_main_process:
        keys = [k for k in results if k.startswith(("eval_", "test_")) and isinstance(results[k], float)]
        print(json.dumps({k: round(results[k], 4) for k in keys}, indent=2))


if __name__ == "__main__":
    cli()
