#!/usr/bin/env python
"""Self-supervised pretraining of an artstyle model with Accelerate.

    python run_pretrain.py                              # built-in demo data, demo model, CPU: ~3-7 min
    accelerate launch run_pretrain.py --dataset_name pandora18k --data_dir /data/Pandora18k \\
        --config_preset vit_small --per_device_train_batch_size 128 --num_train_epochs 100 \\
        --learning_rate 1.5e-4 --checkpointing_steps 1000 --resume_from_checkpoint latest --push_to_hub

Follows the Hugging Face ``*_no_trainer.py`` examples (argument names; ``main`` reads arguments, set-up,
data, model, optimizer, loop, save). Exact resume: checkpoints (``<output_dir>/checkpoints/step_<N>``,
written atomically) hold the model with its teacher and queue, the optimizer, the gradient scaler, every
process's RNG and the loop position; the data order depends only on ``(seed, epoch)`` and each image's
augmentation only on ``(seed, epoch, index)`` (with ``--augment_on gpu``, each batch's on ``(seed, epoch, batch,
process)``), and the schedules are pure functions of the step.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object, set_seed
from torch.utils.data import DataLoader

from artstyle import ArtStyleConfig, ArtStyleForPretraining, build_image_processor
from artstyle.data import StyleImageDataset, collate_skip_bad, load_style_dataset
from artstyle.fast_data import (
    CachedDecodedImages,
    DecodedImages,
    DeviceDecodedCache,
    build_decoded_cache,
    collate_cache_indices,
    collate_decoded,
    decoded_cache_path,
    default_decode_size,
)
from artstyle.gpu_augment import GPUTwoViewAugment, resolve_augment_on
from artstyle.training import (
    SeededItems,
    TrainingState,
    build_optimizer,
    cosine_lr,
    momentum_schedule,
    param_groups_no_decay,
    resolve_resume_checkpoint,
    seeded_dataloader,
    state_checksums,
    weight_decay_schedule,
)
from artstyle.training.arguments import (
    DEPRECATED_FLAGS,
    ScriptArgumentParser,
    check_data_source,
    parse_json_option,
    parse_overrides,
    queue_size_warning,
    run_cli,
)
from artstyle.training.arguments import build_config as build_config_from
from artstyle.training.pretrain_loop import LOSS_TERMS, PretrainLoop
from artstyle.training.scaffold import (
    build_accelerator,
    compile_model,
    end_training_with_curves,
    hub_repo_id,
    loggable_hparams,
    prepare_output_dir,
    push_folder,
    save_final,
    setup_logging,
)
from artstyle.transforms import build_eval_transform, build_ssl_transform

logger = get_logger(__name__)
__all__ = ["LOSS_TERMS", "main", "parse_args", "schedule_values", "training_lengths"]

# former config flags -> --config_overrides fields
DEPRECATED_CONFIG_FLAGS = ("weight_contrastive", "weight_layerwise", "weight_distill", "weight_gram")


# --------------------------------------------------------------------------------------------- arguments
@dataclass
class ModelArguments:
    config_preset: str = field(
        default="demo", metadata={"help": "Model preset: demo (64 px, the demo), tiny (64 px), vit_small or vit_base."})
    config_name: str | None = field(
        default=None, metadata={"help": "A config.json (or a folder holding one) to use instead of --config_preset."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "Config fields to change: a JSON object ('{\"queue_size\": 256}') or "
                                        "'k=v,k=v' (values parsed as JSON when possible), e.g. 'weight_gram=0'."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue pretraining from a saved ArtStyleForPretraining folder."})
    moco_v3_baseline: bool = field(
        default=False, metadata={"help": "Train the MoCo v3 baseline: every component off, CLS pooler."})


@dataclass
class DataArguments:
    dataset_name: str = field(
        default="demo", metadata={"help": "demo (built in, offline), pandora18k, ava, flickr, imagefolder or a "
                                          "Hub dataset id."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder of the dataset (all but demo)."})
    dataset_options: str | None = field(
        default=None, metadata={"help": "JSON object of extra options for load_style_dataset, e.g. "
                                        "'{\"num_images\": 48, \"image_size\": 32}' for the demo."})
    train_split: str = field(default="train", metadata={"help": "Split to pretrain on."})
    image_column: str = field(default="image", metadata={"help": "Image column of the dataset."})
    label_column: str = field(default="label", metadata={"help": "Label column (only for --eval_every)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training images."})
    augmentation: str = field(default="moco_v3", metadata={"help": "Two-view augmentation preset: moco_v3 or "
                                                                   "style_preserving."})
    augmentation_options: str | None = field(
        default=None, metadata={"help": "JSON object of augmentation overrides, e.g. '{\"crop_scale\": [0.2, 1.0]}'."})
    dataloader_num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes per process."})
    augment_on: str = field(
        default="auto", metadata={"help": "Where the two views are made: cpu (DataLoader workers, full resolution), "
                                          "gpu (batched on the training device from uint8 images decoded to "
                                          "--decode_size; also runs on a CPU device) or auto (gpu on CUDA, else cpu)."})
    decode_size: int | None = field(
        default=None, metadata={"help": "--augment_on gpu: longer side of the decoded images (default: twice the "
                                        "model's image_size)."})
    decoded_cache: str = field(
        default="auto", metadata={"help": "--augment_on gpu: decode the training images once into a uint8 .npy "
                                          "beside the datasets cache (built by the first run, reused by the next) "
                                          "and read it every epoch (on), decode in the workers every epoch (off), "
                                          "or auto (on when the decoded images take at most "
                                          "--decoded_cache_max_gb). Ignored with --augment_on cpu."})
    decoded_cache_max_gb: float = field(
        default=4.0, metadata={"help": "--decoded_cache auto: largest decoded collection to cache, in GB (10^9 "
                                       "bytes; images x 3 x decode_size^2)."})
    decoded_cache_device: str = field(
        default="auto", metadata={"help": "Where the decoded cache is read from: host (a memory-mapped file, batches "
                                          "assembled by the DataLoader workers), device (the whole cache copied to "
                                          "the training device once, batches gathered there by index: no pixels "
                                          "per step through workers or the bus) or auto (device on CUDA when the "
                                          "cache takes at most a quarter of the GPU's memory, else host)."})


@dataclass
class PretrainingArguments:
    output_dir: str = field(default="outputs/pretrain", metadata={"help": "Where the model, logs and checkpoints go."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow an output_dir with checkpoints."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Images per process per micro-batch."})
    num_train_epochs: int = field(default=16, metadata={"help": "Epochs (ignored when --max_train_steps is set)."})
    max_train_steps: int | None = field(default=None, metadata={"help": "Total optimisation steps (overrides epochs)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimisation step."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate (after warmup; the demo's "
                                                                        "default: MoCo v3 uses 1.5e-4 x batch / 256)."})
    min_learning_rate: float = field(default=0.0, metadata={"help": "Learning rate at the end of the cosine."})
    num_warmup_steps: int | None = field(default=None, metadata={"help": "Linear warmup steps (default: 10%% of "
                                                                          "the steps)."})
    weight_decay: float = field(default=0.1, metadata={"help": "Weight decay at step 0 (never on bias/norm/tokens)."})
    weight_decay_end: float | None = field(
        default=None, metadata={"help": "Weight decay at the last step (cosine from --weight_decay; default: none)."})
    optimizer: str = field(default="adamw", metadata={"help": "adamw or lars."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (MoCo v3 uses 0.95)."})
    max_grad_norm: float | None = field(default=None, metadata={"help": "Clip gradients to this norm (default off)."})
    momentum_base: float | None = field(default=None, metadata={"help": "Teacher EMA momentum at step 0 (default: "
                                                                         "config.momentum_base)."})
    momentum_final: float | None = field(default=None, metadata={"help": "Teacher EMA momentum at the end (default: "
                                                                          "config.momentum_final)."})
    eval_every: int | None = field(
        default=None, metadata={"help": "At step 0 (the initial encoder) and every N steps, kNN accuracy of the "
                                        "student's pooler_output features "
                                        "(--eval_split against the training split), when the dataset has labels; "
                                        "logged as eval/knn_acc and to eval_log.jsonl. Off by default."})
    eval_split: str | None = field(default=None, metadata={"help": "Split of --eval_every (default: validation, "
                                                                    "else test)."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Batch size of --eval_every."})
    knn_k: int = field(default=20, metadata={"help": "Neighbours of the --eval_every kNN."})
    knn_temperature: float = field(default=0.07, metadata={"help": "Temperature of the --eval_every kNN votes."})
    checkpointing_steps: int | None = field(default=None, metadata={"help": "Save a checkpoint every N steps."})
    checkpoints_total_limit: int | None = field(default=None, metadata={"help": "Keep only the N newest checkpoints."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' (newest complete checkpoint in output_dir, if any) or a folder."})
    seed: int = field(default=42, metadata={"help": "Seed of the model init, data order and augmentations."})
    use_cpu: bool = field(default=False, metadata={"help": "Train on CPU even if a GPU is available."})
    deterministic: bool = field(default=False, metadata={"help": "torch.use_deterministic_algorithms(True)."})
    mixed_precision: str = field(default="auto", metadata={"help": "no, fp16, bf16, or auto (bf16 where the GPU "
                                                                   "supports it, else the accelerate config)."})
    torch_compile: bool = field(default=False, metadata={"help": "torch.compile the model's forward."})
    torch_compile_backend: str = field(default="inductor", metadata={"help": "Backend of --torch_compile."})
    torch_compile_mode: str | None = field(default=None, metadata={"help": "Mode of --torch_compile, e.g. "
                                                                            "max-autotune."})
    with_tracking: bool = field(default=True, metadata={"help": "Log to the trackers of --report_to."})
    report_to: str = field(default="tensorboard", metadata={"help": "Tracker(s): tensorboard, wandb, all, or none."})
    logging_steps: int = field(default=1, metadata={"help": "Log every N optimisation steps."})
    ddp_find_unused_parameters: bool | None = field(
        default=None, metadata={"help": "DDP find_unused_parameters (default: only when weight_contrastive is 0)."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the final folder to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id (default: output_dir's name)."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})


def parse_args(args: list[str] | None = None) -> tuple[ModelArguments, DataArguments, PretrainingArguments]:
    """Parse command-line arguments (or a single ``.json`` file of them), validating values."""
    parser = ScriptArgumentParser((ModelArguments, DataArguments, PretrainingArguments), renames=DEPRECATED_FLAGS,
                                  config_flags=DEPRECATED_CONFIG_FLAGS, prog="run_pretrain.py")
    model_args, data_args, train_args = parser.parse(args)
    validate_args(model_args, data_args, train_args)
    return model_args, data_args, train_args


def validate_args(model_args: ModelArguments, data_args: DataArguments, train_args: PretrainingArguments) -> None:
    """Raise ``ValueError`` naming the first bad option (the config is built once to check it)."""
    positive = {name: getattr(train_args, name) for name in (
        "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "logging_steps",
        "max_train_steps", "checkpointing_steps", "checkpoints_total_limit", "eval_every",
        "per_device_eval_batch_size", "knn_k", "learning_rate", "knn_temperature")}
    positive.update(max_train_samples=data_args.max_train_samples, decode_size=data_args.decode_size,
                    decoded_cache_max_gb=data_args.decoded_cache_max_gb)
    for name, value in positive.items():
        if value is not None and value <= 0:
            raise ValueError(f"--{name} must be > 0, got {value}")
    choices = {"mixed_precision": ("auto", "no", "fp16", "bf16"), "optimizer": ("adamw", "lars"),
               "augmentation": ("moco_v3", "style_preserving"), "augment_on": ("auto", "cpu", "gpu"),
               "decoded_cache": ("auto", "on", "off"), "decoded_cache_device": ("auto", "host", "device")}
    data_names = ("augmentation", "augment_on", "decoded_cache", "decoded_cache_device")
    for name, allowed in choices.items():
        value = getattr(data_args if name in data_names else train_args, name)
        if value not in allowed:
            raise ValueError(f"--{name} must be one of {', '.join(allowed)}, got {value!r}")
    if data_args.decoded_cache == "on" and data_args.augment_on == "cpu":
        raise ValueError("--decoded_cache on needs --augment_on gpu (the cache holds the decoded images of the GPU "
                         "augmentation path), got --augment_on cpu")
    if data_args.decoded_cache_device == "device" and (data_args.decoded_cache == "off"
                                                       or data_args.augment_on == "cpu"):
        raise ValueError("--decoded_cache_device device needs the decoded cache (--decoded_cache auto or on, "
                         f"--augment_on gpu or auto), got --decoded_cache {data_args.decoded_cache} and --augment_on "
                         f"{data_args.augment_on}")
    if data_args.dataloader_num_workers < 0:
        raise ValueError(f"--dataloader_num_workers must be >= 0, got {data_args.dataloader_num_workers}")
    for name in ("dataset_options", "augmentation_options"):
        parse_json_option(getattr(data_args, name), name)
    check_data_source(data_args.dataset_name, data_args.data_dir)
    build_config(model_args)


# --------------------------------------------------------------------------------------------- model
def build_config(model_args: ModelArguments) -> ArtStyleConfig:
    """The model config: preset, ``--config_name`` or the model folder, then ``--config_overrides``."""
    return build_config_from(model_args.config_preset, parse_overrides(model_args.config_overrides),
                             model_args.config_name or model_args.model_name_or_path, model_args.moco_v3_baseline)


def fit_queue_to_data(config: ArtStyleConfig, model_args: ModelArguments, num_images: int) -> None:
    """A queue of at least as many keys as training images holds older keys of the very images it contrasts: warn.
    When the size came from the preset (a fresh model, no ``queue_size`` in ``--config_overrides``), also lower it to
    a quarter of the training images (the README's advice), as the demo's 840 images need with the tiny preset's
    1024. A size the user chose, or a saved model's (its queue buffer has that size), is kept."""
    message = queue_size_warning(config.queue_size, num_images)
    if message is None:
        return
    chosen = (model_args.model_name_or_path or model_args.config_name
              or "queue_size" in parse_overrides(model_args.config_overrides))
    if chosen:
        logger.warning(message)
        return
    preset_size, config.queue_size = config.queue_size, num_images // 4
    logger.warning(f"queue_size: the {model_args.config_preset!r} preset's {preset_size} keys are at least the "
                   f"{num_images} training images, so the queue would hold older keys of the images it contrasts; "
                   f"using queue_size {config.queue_size} (a quarter of them). Choose it with --config_overrides "
                   "'{\"queue_size\": N}'.")


def build_model(model_args: ModelArguments, config: ArtStyleConfig, accelerator: Accelerator) -> torch.nn.Module:
    """Fresh or from ``--model_name_or_path``; BatchNorm -> SyncBatchNorm on several accelerator processes
    (torch has no SyncBatchNorm on CPU: there the heads keep per-process statistics)."""
    if model_args.model_name_or_path:
        model = ArtStyleForPretraining.from_pretrained(model_args.model_name_or_path, config=config)
    else:
        model = ArtStyleForPretraining(config)
    if accelerator.num_processes > 1 and accelerator.device.type != "cpu":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


# --------------------------------------------------------------------------------------------- data
def load_splits(data_args: DataArguments):
    splits = load_style_dataset(data_args.dataset_name, data_dir=data_args.data_dir,
                                **parse_json_option(data_args.dataset_options, "dataset_options"))
    if data_args.train_split not in splits:
        raise ValueError(f"--train_split {data_args.train_split!r} not in the dataset (splits: {list(splits)})")
    train = splits[data_args.train_split]
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    return train, splits


def build_train_dataset(train_split, data_args: DataArguments, config: ArtStyleConfig, seed: int,
                        augment_on: str = "cpu") -> tuple[SeededItems, Callable, GPUTwoViewAugment | None]:
    """``(dataset, collate_fn, augment)`` of the training split, each item seeded by (seed, epoch, index).

    ``augment_on="cpu"``: the workers return both augmented views (``augment`` is None). ``"gpu"``: the workers
    only decode to uint8 (`DecodedImages`); ``augment`` makes the views of each batch on the training device.
    """
    options = parse_json_option(data_args.augmentation_options, "augmentation_options")
    if augment_on == "gpu":
        size = data_args.decode_size or default_decode_size(config.image_size)
        dataset = DecodedImages(train_split, size, image_column=data_args.image_column)
        augment = GPUTwoViewAugment(data_args.augmentation, config.image_size, config.image_mean, config.image_std,
                                    **options)
        return SeededItems(dataset, seed=seed), collate_decoded, augment
    transform = build_ssl_transform(data_args.augmentation, image_size=config.image_size, mean=config.image_mean,
                                    std=config.image_std, **options)
    dataset = StyleImageDataset(train_split, transform, image_column=data_args.image_column, label_column=None)
    return SeededItems(dataset, seed=seed), collate_skip_bad, None


def use_decoded_cache(mode: str, decoded: DecodedImages, max_gb: float) -> bool:
    """``--decoded_cache``: on, off, or auto (on when ``images x 3 x size^2`` bytes are at most ``max_gb`` GB)."""
    if mode != "auto":
        return mode == "on"
    gigabytes = len(decoded) * 3 * decoded.size ** 2 / 1e9
    if gigabytes > max_gb:
        logger.info(f"--decoded_cache auto: the decoded images take {gigabytes:.2f} GB > --decoded_cache_max_gb "
                    f"{max_gb:g}: decoding in the DataLoader workers every epoch")
        return False
    return True


def with_decoded_cache(dataset: SeededItems, data_args: DataArguments,
                       accelerator: Accelerator) -> tuple[SeededItems, float]:
    """``dataset`` (`SeededItems` of `DecodedImages`) served from its decoded cache, and the seconds spent getting
    the cache. The main process builds it first (the others then find it); concurrent runs on the same data are
    kept apart by `build_decoded_cache`'s file lock and atomic rename. Same items, same seeds: exact resume holds."""
    decoded = dataset.dataset
    start = time.perf_counter()
    with accelerator.main_process_first():
        existed = decoded_cache_path(decoded).is_file()
        path = build_decoded_cache(decoded, num_workers=data_args.dataloader_num_workers)
    seconds = time.perf_counter() - start
    if existed:
        logger.info(f"Decoded cache {path}: reused ({seconds:.1f} s)")
    else:
        logger.info(f"Decoded cache {path}: built in {seconds:.1f} s ({len(decoded)} images, "
                    f"{decoded.size} px)")
    return SeededItems(CachedDecodedImages(path), seed=dataset.seed), seconds


def use_device_cache(mode: str, nbytes: int, device: torch.device) -> bool:
    """``--decoded_cache_device``: host, device, or auto (device on CUDA when the cache's ``nbytes`` take at most a
    quarter of the GPU's memory)."""
    if mode != "auto":
        return mode == "device"
    if device.type != "cuda":
        return False
    return nbytes <= torch.cuda.get_device_properties(device).total_memory / 4


def build_knn_loaders(train_split, splits, data_args: DataArguments, train_args: PretrainingArguments,
                      config: ArtStyleConfig) -> tuple[DataLoader, DataLoader, int] | None:
    """``(train, eval, num_classes)`` loaders of the --eval_every kNN (eval transform, fixed order), or None
    (with a warning) when the dataset has no labels or no evaluation split."""
    name = train_args.eval_split or ("validation" if "validation" in splits else "test")
    label = data_args.label_column
    if name not in splits or label not in train_split.column_names or label not in splits[name].column_names:
        logger.warning(f"--eval_every: no labelled split {name!r} (column {label!r}): kNN monitor off")
        return None
    feature = train_split.features[label]
    num_classes = len(feature.names) if hasattr(feature, "names") else int(max(train_split[label])) + 1
    transform = build_eval_transform(build_image_processor(config))
    loaders = [DataLoader(StyleImageDataset(split, transform, data_args.image_column, label),
                          batch_size=train_args.per_device_eval_batch_size, collate_fn=collate_skip_bad,
                          num_workers=data_args.dataloader_num_workers, generator=torch.Generator())
               for split in (train_split, splits[name])]  # own generator: the global RNG stays untouched
    return loaders[0], loaders[1], num_classes


# --------------------------------------------------------------------------------------------- schedules
def training_lengths(batches_per_epoch: int, train_args: PretrainingArguments) -> tuple[int, int, int]:
    """``(update_steps_per_epoch, total_steps, num_epochs)`` from the per-process batches per epoch."""
    steps_per_epoch = math.ceil(batches_per_epoch / train_args.gradient_accumulation_steps)
    if train_args.max_train_steps is not None:
        return steps_per_epoch, train_args.max_train_steps, math.ceil(train_args.max_train_steps / steps_per_epoch)
    return steps_per_epoch, train_args.num_train_epochs * steps_per_epoch, train_args.num_train_epochs


def schedule_values(step: int, total: int, train_args: PretrainingArguments, config: ArtStyleConfig) -> dict:
    """Learning rate, weight decay and teacher momentum for optimisation step ``step``."""
    warmup = train_args.num_warmup_steps if train_args.num_warmup_steps is not None else total // 10
    momentum_base = train_args.momentum_base if train_args.momentum_base is not None else config.momentum_base
    momentum_final = train_args.momentum_final if train_args.momentum_final is not None else config.momentum_final
    return {
        "lr": cosine_lr(step, total, min(warmup, total), train_args.learning_rate, train_args.min_learning_rate),
        "weight_decay": weight_decay_schedule(step, total, train_args.weight_decay, train_args.weight_decay_end),
        "momentum": momentum_schedule(step, total, momentum_base, momentum_final),
    }


# --------------------------------------------------------------------------------------------- main
def main(args: list[str] | None = None) -> dict[str, Any]:
    """Pretrain and save; returns the results written to ``all_results.json``."""
    model_args, data_args, train_args = parse_args(args)
    if train_args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    config = build_config(model_args)
    find_unused = train_args.ddp_find_unused_parameters
    # with weight_contrastive = 0 the student projector/predictor get no gradient; otherwise every parameter does
    accelerator = build_accelerator(
        train_args.output_dir, gradient_accumulation_steps=train_args.gradient_accumulation_steps,
        mixed_precision=train_args.mixed_precision, with_tracking=train_args.with_tracking,
        report_to=train_args.report_to, use_cpu=train_args.use_cpu,
        find_unused_parameters=config.weight_contrastive == 0 if find_unused is None else find_unused,
    )
    setup_logging(accelerator)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(train_args.seed)
    checkpoint_dir = prepare_output_dir(accelerator, train_args.output_dir, train_args.resume_from_checkpoint,
                                        train_args.overwrite_output_dir)

    # data
    with accelerator.main_process_first():
        train_split, splits = load_splits(data_args)
    augment_on = resolve_augment_on(data_args.augment_on, accelerator.device)
    if data_args.decoded_cache == "on" and augment_on == "cpu":
        raise ValueError(f"--decoded_cache on needs the GPU augmentation path, but --augment_on "
                         f"{data_args.augment_on} chose cpu on device {accelerator.device}: pass --augment_on gpu")
    dataset, collate_fn, augment = build_train_dataset(train_split, data_args, config, train_args.seed, augment_on)
    fit_queue_to_data(config, model_args, len(dataset))
    decoded_cache, decoded_cache_s, device_cache, num_workers = False, None, None, data_args.dataloader_num_workers
    if augment_on == "gpu" and use_decoded_cache(data_args.decoded_cache, dataset.dataset,
                                                 data_args.decoded_cache_max_gb):
        dataset, decoded_cache_s = with_decoded_cache(dataset, data_args, accelerator)
        decoded_cache = True
        cached = dataset.dataset
        if use_device_cache(data_args.decoded_cache_device, cached.pixels.nbytes, accelerator.device):
            device_cache = DeviceDecodedCache(cached.path, accelerator.device)
            dataset, collate_fn = SeededItems(device_cache.dataset(), seed=dataset.seed), collate_cache_indices
            num_workers = 0  # the loader only yields indices
            logger.info(f"Decoded cache on {accelerator.device}: {device_cache.nbytes / 1e6:.0f} MB, batches gathered "
                        "there by index")
    if data_args.decoded_cache_device == "device" and device_cache is None:
        raise ValueError(f"--decoded_cache_device device: no decoded cache is used in this run (--augment_on "
                         f"{data_args.augment_on} chose {augment_on}, --decoded_cache {data_args.decoded_cache})")
    if augment is not None and train_args.torch_compile:
        # the augmentation's device part too (its outputs feed the compiled model; no CUDA graphs: see compile)
        augment.compile(backend=train_args.torch_compile_backend)
    dataloader = seeded_dataloader(dataset, train_args.per_device_train_batch_size, num_workers,
                                   train_args.seed, collate_fn)
    knn_loaders = None
    if train_args.eval_every:
        knn_loaders = build_knn_loaders(train_split, splits, data_args, train_args, config)

    # model, optimizer
    model = build_model(model_args, config, accelerator)
    optimizer = build_optimizer(
        param_groups_no_decay(model, train_args.weight_decay), train_args.optimizer, lr=train_args.learning_rate,
        betas=(train_args.adam_beta1, train_args.adam_beta2),
    )
    compile_model(model, train_args.torch_compile, train_args.torch_compile_backend, train_args.torch_compile_mode)
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    if len(dataloader) == 0:
        raise ValueError(
            f"the training split has {len(dataset)} images, fewer than one global batch "
            f"({train_args.per_device_train_batch_size} x {accelerator.num_processes} processes): lower "
            "--per_device_train_batch_size"
        )
    _, total_steps, num_epochs = training_lengths(len(dataloader), train_args)
    state = TrainingState()
    state.num_processes = accelerator.num_processes
    state.per_device_batch_size = train_args.per_device_train_batch_size
    accelerator.register_for_checkpointing(state)
    accelerator.init_trackers("artstyle_pretrain", config=loggable_hparams(model_args, data_args, train_args))

    # resume
    resume_path = resolve_resume_checkpoint(train_args.resume_from_checkpoint, checkpoint_dir)
    if resume_path is not None:
        expected = (state.num_processes, state.per_device_batch_size)
        accelerator.load_state(str(resume_path))
        if (state.num_processes, state.per_device_batch_size) != expected:
            raise ValueError(
                f"{resume_path} was written by {state.num_processes} process(es) with --per_device_train_batch_size "
                f"{state.per_device_batch_size}; exact resume needs the same, got {expected[0]} and {expected[1]}"
            )
        logger.info(f"Resumed from {resume_path}: {state}")
    elif train_args.resume_from_checkpoint:
        logger.info("No checkpoint to resume from yet: starting from scratch")

    # loop
    logger.info(f"***** Pretraining on {len(dataset)} images, {num_epochs} epochs, {total_steps} steps, "
                f"{accelerator.num_processes} process(es) *****")
    start, start_step = time.perf_counter(), state.step
    schedule = functools.partial(schedule_values, total=total_steps, train_args=train_args, config=config)
    losses = PretrainLoop(accelerator, model, optimizer, dataloader, dataset, state, train_args, schedule, total_steps,
                          num_epochs, checkpoint_dir, knn_loaders, augment, decoded_cache=device_cache).run()
    runtime = time.perf_counter() - start
    checksums = gather_object([state_checksums(accelerator.unwrap_model(model))])

    # save
    results = {
        "train_steps": state.step,
        "epochs": state.epoch + (1 if state.batches_in_epoch else 0),
        "images_seen": state.images_seen,
        "skipped_images": state.skipped_images,
        "world_size": accelerator.num_processes,
        "augment_on": augment_on,
        "decoded_cache": decoded_cache,
        "decoded_cache_device": None if not decoded_cache else ("device" if device_cache is not None else "host"),
        "decoded_cache_s": None if decoded_cache_s is None else round(decoded_cache_s, 3),
        "global_batch_size": train_args.per_device_train_batch_size * accelerator.num_processes
        * train_args.gradient_accumulation_steps,
        "train_runtime_s": round(runtime, 3),
        "train_steps_per_second": round((state.step - start_step) / max(runtime, 1e-9), 4),
        "resumed_from": str(resume_path) if resume_path else None,
        "replica_checksums": {key: [c[key] for c in checksums] for key in checksums[0]},
        **{f"train_{name}": value for name, value in losses.items()},
    }
    summary = {
        "steps": state.step, "epochs": results["epochs"], "images seen": state.images_seen,
        "global batch size": results["global_batch_size"], "processes": accelerator.num_processes,
        "optimizer": train_args.optimizer, "learning rate": train_args.learning_rate,
        "weight decay": train_args.weight_decay, "augmentation": data_args.augmentation,
        "augmented on": augment_on,
        "mixed precision": accelerator.mixed_precision, "skipped images": state.skipped_images,
        **{f"final {k}": v for k, v in results.items() if k.startswith("train_loss")},
    }
    repo_id = hub_repo_id(train_args.output_dir, train_args.hub_model_id)
    save_final(accelerator, model, train_args.output_dir, results, card=dict(
        task="pretraining", dataset_name=data_args.dataset_name, training_summary=summary,
        base_model=model_args.model_name_or_path, model_id=repo_id if train_args.push_to_hub else train_args.output_dir,
    ))
    if train_args.push_to_hub:
        url = push_folder(accelerator, train_args.output_dir, repo_id, train_args.hub_token,
                          train_args.hub_private_repo, f"Pretraining: {state.step} steps")
        logger.info(f"Pushed to {url}")
    end_training_with_curves(accelerator, train_args.output_dir)  # training_curves.png (TensorBoard runs)
    return results


def cli(argv: list[str] | None = None) -> None:
    """Console entry point ``artstyle-pretrain``: bad input -> one line on stderr, exit code 2."""
    run_cli(main, "artstyle-pretrain", argv)


if __name__ == "__main__":
    run_cli(main, "run_pretrain.py")
