#!/usr/bin/env python
"""Self-supervised pretraining of an artstyle model with Accelerate.

    python run_pretrain.py                              # built-in demo data, tiny model, CPU: ~3 min
    accelerate launch run_pretrain.py --dataset pandora18k --data_dir /data/Pandora18k \\
        --config_preset vit_small --per_device_train_batch_size 128 --num_train_epochs 100 \\
        --learning_rate 1.5e-4 --checkpointing_steps 1000 --resume_from_checkpoint latest --push_to_hub

Follows the Hugging Face ``*_no_trainer.py`` examples (argument names, order of ``main``), split into
small functions. Exact resume: checkpoints (``<output_dir>/checkpoints/step_<N>``, written atomically)
hold the model with its teacher and queue, the optimizer, the gradient scaler, every process's RNG
and the loop position; the data order depends only on ``(seed, epoch)`` and each image's
augmentation only on ``(seed, epoch, index)``, and the schedules are pure functions of the step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from artstyle import ArtStyleConfig, ArtStyleForPretraining, build_image_processor
from artstyle.data import StyleImageDataset, collate_skip_bad, load_style_dataset
from artstyle.hub import push_to_hub, save_model_card
from artstyle.training import (
    EpochSeededSampler,
    SeededItems,
    TrainingState,
    build_optimizer,
    cosine_lr,
    latest_checkpoint,
    momentum_schedule,
    param_groups_no_decay,
    remove_incomplete_checkpoints,
    resolve_resume_checkpoint,
    save_checkpoint,
    set_optimizer_values,
    weight_decay_schedule,
)
from artstyle.transforms import build_ssl_transform

logger = get_logger(__name__)

LOSS_TERMS = ("loss", "loss_contrastive", "loss_layerwise", "loss_distill", "loss_gram")
CHECKPOINT_SUBDIR = "checkpoints"


# --------------------------------------------------------------------------------------------- arguments
@dataclass
class ModelArguments:
    config_preset: str = field(
        default="tiny", metadata={"help": "Model size preset: tiny (64 px, CPU demo), vit_small or vit_base."}
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Path to a config.json (or a folder holding one); replaces --config_preset."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Config fields to override: a JSON object ('{\"queue_size\": 256}') or 'k=v,k=v' "
                          "(values parsed as JSON when possible)."},
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue pretraining from a saved ArtStyleForPretraining folder."}
    )
    weight_contrastive: float | None = field(default=None, metadata={"help": "Override the soft contrastive weight."})
    weight_layerwise: float | None = field(default=None, metadata={"help": "Override the layer-wise contrast weight."})
    weight_distill: float | None = field(default=None, metadata={"help": "Override the self-distillation weight."})
    weight_gram: float | None = field(default=None, metadata={"help": "Override the learnable-Gram loss weight."})
    moco_v3_baseline: bool = field(
        default=False, metadata={"help": "Train the MoCo v3 baseline (contrastive only, hard targets, CLS pooler)."}
    )


@dataclass
class DataArguments:
    dataset: str = field(
        default="demo",
        metadata={"help": "demo (built in, offline), pandora18k, ava, flickr, imagefolder or a Hub dataset id.",
                  "aliases": ["--dataset_name"]},
    )
    data_dir: str | None = field(default=None, metadata={"help": "Folder of the dataset (all but demo)."})
    dataset_options: str | None = field(
        default=None, metadata={"help": "JSON object of extra options for load_style_dataset, e.g. "
                                        "'{\"num_images\": 48, \"image_size\": 32}' for the demo."}
    )
    train_split: str = field(default="train", metadata={"help": "Split to pretrain on."})
    image_column: str = field(default="image", metadata={"help": "Image column of the dataset."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training images."})
    augmentation: str = field(default="moco_v3", metadata={"help": "Two-view augmentation preset: moco_v3 or "
                                                                   "style_preserving."})
    augmentation_options: str | None = field(
        default=None, metadata={"help": "JSON object of augmentation overrides, e.g. '{\"crop_scale\": [0.2, 1.0]}'."}
    )
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes per training process."})


@dataclass
class PretrainingArguments:
    output_dir: str = field(default="outputs/pretrain", metadata={"help": "Where the model, logs and checkpoints go."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow training into an output_dir that already holds checkpoints."}
    )
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Images per process per micro-batch."})
    num_train_epochs: int = field(default=1, metadata={"help": "Epochs (ignored when --max_train_steps is set)."})
    max_train_steps: int | None = field(default=None, metadata={"help": "Total optimisation steps (overrides epochs)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimisation step."})
    learning_rate: float = field(
        default=1e-4,
        metadata={"help": "Peak AdamW learning rate (after warmup). 1e-3 wiped out the style cues of a random ViT on "
                          "the demo (linear probe on its validation split: 0.58, vs 0.88 at random init, 0.89 at "
                          "1e-4, 26 steps)."},
    )
    min_learning_rate: float = field(default=0.0, metadata={"help": "Learning rate at the end of the cosine."})
    num_warmup_steps: int | None = field(
        default=None, metadata={"help": "Linear warmup steps (default: 10%% of the steps)."}
    )
    weight_decay: float = field(default=0.1, metadata={"help": "Weight decay at step 0 (never on bias/norm/tokens)."})
    weight_decay_end: float | None = field(
        default=None, metadata={"help": "Weight decay at the last step (cosine from --weight_decay); default constant."}
    )
    optimizer: str = field(default="adamw", metadata={"help": "adamw or lars."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (MoCo v3 uses 0.95)."})
    max_grad_norm: float | None = field(default=None, metadata={"help": "Clip gradients to this norm (default off)."})
    momentum_base: float | None = field(
        default=None, metadata={"help": "Teacher EMA momentum at step 0 (default: config.momentum_base)."}
    )
    momentum_final: float | None = field(
        default=None, metadata={"help": "Teacher EMA momentum at the end (default: config.momentum_final)."}
    )
    checkpointing_steps: int | None = field(default=None, metadata={"help": "Save a checkpoint every N steps."})
    checkpoints_total_limit: int | None = field(default=None, metadata={"help": "Keep only the N newest checkpoints."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' (newest complete checkpoint in output_dir, if any) or a folder."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of the model init, data order and augmentations."})
    use_cpu: bool = field(default=False, metadata={"help": "Train on CPU even if a GPU is available."})
    deterministic: bool = field(
        default=False, metadata={"help": "torch.use_deterministic_algorithms(True) (bit-exact resume on CPU)."}
    )
    mixed_precision: str = field(
        default="auto",
        metadata={"help": "no, fp16, bf16, or auto (bf16 where the GPU supports it, else the accelerate config)."},
    )
    report_to: str = field(default="tensorboard", metadata={"help": "Tracker(s) for accelerate: tensorboard, "
                                                                   "wandb, all, or none."})
    logging_steps: int = field(default=1, metadata={"help": "Log every N optimisation steps."})
    ddp_find_unused_parameters: bool | None = field(
        default=None, metadata={"help": "DDP find_unused_parameters. Default: only when --weight_contrastive is 0 "
                                        "(the model builds and trains only the parts its loss weights use)."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the final folder to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id (default: output_dir's name)."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})


def parse_args(args: list[str] | None = None) -> tuple[ModelArguments, DataArguments, PretrainingArguments]:
    """Parse command-line arguments (or a single ``.json`` file of them), validating values."""
    parser = HfArgumentParser((ModelArguments, DataArguments, PretrainingArguments))
    argv = sys.argv[1:] if args is None else list(args)
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, train_args = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    else:
        model_args, data_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    validate_args(model_args, data_args, train_args)
    return model_args, data_args, train_args


def validate_args(model_args: ModelArguments, data_args: DataArguments, train_args: PretrainingArguments) -> None:
    positive = {
        "per_device_train_batch_size": train_args.per_device_train_batch_size,
        "gradient_accumulation_steps": train_args.gradient_accumulation_steps,
        "num_train_epochs": train_args.num_train_epochs,
        "logging_steps": train_args.logging_steps,
    }
    optional = {
        "max_train_steps": train_args.max_train_steps,
        "checkpointing_steps": train_args.checkpointing_steps,
        "checkpoints_total_limit": train_args.checkpoints_total_limit,
        "max_train_samples": data_args.max_train_samples,
    }
    positive.update({name: value for name, value in optional.items() if value is not None})
    for name, value in positive.items():
        if value <= 0:
            raise ValueError(f"--{name} must be > 0, got {value}")
    if train_args.learning_rate <= 0:
        raise ValueError(f"--learning_rate must be > 0, got {train_args.learning_rate}")
    if train_args.mixed_precision not in ("auto", "no", "fp16", "bf16"):
        raise ValueError(f"--mixed_precision must be auto, no, fp16 or bf16, got {train_args.mixed_precision!r}")
    if train_args.optimizer not in ("adamw", "lars"):
        raise ValueError(f"--optimizer must be adamw or lars, got {train_args.optimizer!r}")
    if data_args.augmentation not in ("moco_v3", "style_preserving"):
        raise ValueError(f"--augmentation must be moco_v3 or style_preserving, got {data_args.augmentation!r}")
    if data_args.num_workers < 0:
        raise ValueError(f"--num_workers must be >= 0, got {data_args.num_workers}")
    for name in ("dataset_options", "augmentation_options"):
        parse_json_option(getattr(data_args, name), name)
    parse_overrides(model_args.config_overrides)


def parse_json_option(value: str | None, name: str) -> dict:
    """A JSON-object option (``--dataset_options`` ...) as a dict; ``None`` -> ``{}``."""
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"--{name} must be a JSON object, got {value!r}: {err}") from err
    if not isinstance(parsed, dict):
        raise ValueError(f"--{name} must be a JSON object, got {value!r}")
    return parsed


def parse_overrides(value: str | None) -> dict:
    """``--config_overrides``: a JSON object or ``k=v,k=v`` (each value parsed as JSON if possible)."""
    if not value:
        return {}
    if value.lstrip().startswith("{"):
        return parse_json_option(value, "config_overrides")
    overrides = {}
    for item in value.split(","):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--config_overrides: expected key=value, got {item!r} in {value!r}")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    return overrides


# --------------------------------------------------------------------------------------------- model
def build_config(model_args: ModelArguments) -> ArtStyleConfig:
    """The model config: preset or file, then ``--config_overrides``, then the loss-weight flags."""
    overrides = parse_overrides(model_args.config_overrides)
    for name in ("weight_contrastive", "weight_layerwise", "weight_distill", "weight_gram"):
        if getattr(model_args, name) is not None:
            overrides[name] = getattr(model_args, name)
    source = model_args.config_name or model_args.model_name_or_path
    if source:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"--config_name / --model_name_or_path: {source!r} does not exist")
        config = ArtStyleConfig.from_pretrained(str(path)) if path.is_dir() else ArtStyleConfig.from_json_file(path)
        unknown = [k for k in overrides if not hasattr(config, k)]
        if unknown:
            raise ValueError(f"--config_overrides: unknown config field(s) {unknown}")
        for key, value in overrides.items():
            setattr(config, key, value)
        config.validate_artstyle()
    else:
        config = ArtStyleConfig.from_preset(model_args.config_preset, **overrides)
    if model_args.moco_v3_baseline:
        config = config.moco_v3_baseline()
    return config


def build_model(model_args: ModelArguments, config: ArtStyleConfig) -> ArtStyleForPretraining:
    if model_args.model_name_or_path:
        return ArtStyleForPretraining.from_pretrained(model_args.model_name_or_path, config=config)
    return ArtStyleForPretraining(config)


# --------------------------------------------------------------------------------------------- data
def build_train_dataset(data_args: DataArguments, config: ArtStyleConfig, seed: int) -> SeededItems:
    """The training split with two-view augmentations, each item seeded by (seed, epoch, index)."""
    options = parse_json_option(data_args.dataset_options, "dataset_options")
    splits = load_style_dataset(data_args.dataset, data_dir=data_args.data_dir, **options)
    if data_args.train_split not in splits:
        raise ValueError(f"--train_split {data_args.train_split!r} not in the dataset (splits: {list(splits)})")
    split = splits[data_args.train_split]
    if data_args.max_train_samples is not None:
        split = split.select(range(min(data_args.max_train_samples, len(split))))
    transform = build_ssl_transform(
        data_args.augmentation, image_size=config.image_size, mean=config.image_mean, std=config.image_std,
        **parse_json_option(data_args.augmentation_options, "augmentation_options"),
    )
    dataset = StyleImageDataset(split, transform, image_column=data_args.image_column, label_column=None)
    return SeededItems(dataset, seed=seed)


def build_dataloader(dataset: SeededItems, batch_size: int, num_workers: int, seed: int) -> DataLoader:
    """Shuffled by `EpochSeededSampler`, full batches only, bad images dropped by `collate_skip_bad`."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSeededSampler(len(dataset), seed=seed),
        drop_last=True,
        num_workers=num_workers,
        collate_fn=collate_skip_bad,
        # own generator: creating an iterator must not consume the global RNG (exact resume)
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


def set_data_epoch(dataloader, dataset: SeededItems, epoch: int) -> None:
    """Select epoch ``epoch``'s shuffle and augmentation seeds (call before iterating)."""
    dataset.set_epoch(epoch)
    # accelerate's DataLoaderShard forwards to the sampler, sharded (BatchSamplerShard) or not
    dataloader.set_epoch(epoch)


# --------------------------------------------------------------------------------------------- setup
def resolve_mixed_precision(value: str) -> str | None:
    if value != "auto":
        return value
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None  # from `accelerate launch` / accelerate config
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def build_accelerator(train_args: PretrainingArguments) -> Accelerator:
    trackers = None if train_args.report_to in ("none", "", None) else train_args.report_to.split(",")
    if trackers == ["all"]:
        trackers = "all"
    # without an accelerator, `cpu=True` lets accelerate run torchrun / `accelerate launch --multi_cpu` processes (gloo)
    cpu = train_args.use_cpu or not torch.accelerator.is_available()
    return Accelerator(
        cpu=cpu,
        gradient_accumulation_steps=train_args.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(train_args.mixed_precision),
        log_with=trackers,
        project_config=ProjectConfiguration(
            project_dir=train_args.output_dir, logging_dir=os.path.join(train_args.output_dir, "runs")
        ),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=bool(train_args.ddp_find_unused_parameters))],
    )


def setup_logging(accelerator: Accelerator) -> None:
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()


def maybe_convert_sync_batchnorm(model: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """BatchNorm -> SyncBatchNorm when training on several processes (single-process: unchanged).

    torch implements SyncBatchNorm for accelerators only; on CPU the heads keep per-process
    BatchNorm statistics (a warning says so).
    """
    if accelerator.num_processes <= 1:
        return model
    if accelerator.device.type == "cpu":
        logger.warning("SyncBatchNorm is not supported on CPU by torch: BatchNorm statistics stay per process.")
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def training_lengths(batches_per_epoch: int, train_args: PretrainingArguments) -> tuple[int, int, int]:
    """``(update_steps_per_epoch, total_steps, num_epochs)`` from the per-process batches per epoch."""
    steps_per_epoch = math.ceil(batches_per_epoch / train_args.gradient_accumulation_steps)
    if train_args.max_train_steps is not None:
        total = train_args.max_train_steps
        epochs = math.ceil(total / steps_per_epoch)
    else:
        epochs = train_args.num_train_epochs
        total = epochs * steps_per_epoch
    return steps_per_epoch, total, epochs


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


def state_checksums(model: torch.nn.Module) -> dict[str, str]:
    """SHA-256 of the model state in three parts: ``parameters`` (student and teacher), ``queue``
    (queue buffers) and ``other_buffers`` (BatchNorm statistics ...).

    After the same steps the first two must be equal on every process (DDP keeps the replicas in
    sync and the queue receives the gathered keys); BatchNorm statistics are equal only with
    SyncBatchNorm (accelerators), not on CPU.
    """
    digests = {key: hashlib.sha256() for key in ("parameters", "queue", "other_buffers")}
    parameter_names = {name for name, _ in model.named_parameters()}
    for name, tensor in model.state_dict(keep_vars=False).items():
        if name in parameter_names:
            key = "parameters"
        else:
            key = "queue" if name.rsplit(".", 1)[-1].startswith("queue") else "other_buffers"
        digests[key].update(name.encode())
        digests[key].update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {key: digest.hexdigest() for key, digest in digests.items()}


# --------------------------------------------------------------------------------------------- loop
@dataclass
class PretrainLoop:
    """The optimisation loop, from ``state`` (fresh or restored) to ``total_steps``.

    Steps are counted on ``accelerator.sync_gradients``; the learning rate and weight decay are set
    and the teacher EMA is applied (``momentum=`` of the model's forward) once per optimisation
    step, before its first micro-batch. `run` raises ``FloatingPointError`` naming the step at the
    first non-finite loss, before the backward pass and without writing a checkpoint.
    """

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    dataloader: Any
    dataset: SeededItems
    state: TrainingState
    train_args: PretrainingArguments
    config: ArtStyleConfig
    total_steps: int
    num_epochs: int
    checkpoint_dir: Path
    last_losses: dict = field(default_factory=dict)

    def run(self) -> dict[str, float]:
        """Train to the end; returns the last optimisation step's losses (mean over processes)."""
        state = self.state
        self.progress = tqdm(range(self.total_steps), initial=state.step, desc="pretraining",
                             disable=not self.accelerator.is_local_main_process)
        self._sums = torch.zeros(len(LOSS_TERMS), device=self.accelerator.device)
        self._micro = 0
        self._window_images, self._window_start = 0, time.perf_counter()
        self.model.train()
        while state.step < self.total_steps and state.epoch < self.num_epochs:
            if self.run_epoch():
                break
            state.epoch += 1
            state.batches_in_epoch = 0
        self.progress.close()
        return self.last_losses

    def run_epoch(self) -> bool:
        """Train on epoch ``state.epoch`` from batch ``state.batches_in_epoch``; True when all steps are done."""
        set_data_epoch(self.dataloader, self.dataset, self.state.epoch)
        loader = self.dataloader
        if self.state.batches_in_epoch:  # resumed mid-epoch: skip the batches already trained on
            loader = self.accelerator.skip_first_batches(self.dataloader, self.state.batches_in_epoch)
        for batch in loader:
            self.state.batches_in_epoch += 1
            if self.count_skipped(batch):
                continue
            self.train_micro_batch(batch)
            if self.accelerator.sync_gradients:
                self.end_step()
                if self.state.step >= self.total_steps:
                    return True
        return False

    def count_skipped(self, batch: dict | None) -> bool:
        """Add the undecodable images of all processes to the count (one collective); True when some
        process got an all-bad batch, which every process then drops so collectives stay in step."""
        per_device = self.train_args.per_device_train_batch_size
        skipped = per_device if batch is None else batch["num_skipped"]
        flags = torch.tensor([skipped, batch is None], dtype=torch.float64, device=self.accelerator.device)
        flags = self.accelerator.reduce(flags, "sum")
        self.state.skipped_images += int(flags[0].item())
        return bool(flags[1] > 0)

    def train_micro_batch(self, batch: dict) -> None:
        accelerator, state = self.accelerator, self.state
        self.values = schedule_values(state.step, self.total_steps, self.train_args, self.config)
        first = self._micro == 0
        if first:
            set_optimizer_values(self.optimizer, self.values["lr"], self.values["weight_decay"])
        with accelerator.accumulate(self.model):
            outputs = self.model(
                pixel_values=batch["pixel_values"],
                pixel_values_2=batch["pixel_values_2"],
                momentum=self.values["momentum"] if first else None,  # one EMA update per optimisation step
            )
            terms = torch.stack([getattr(outputs, name).detach().float() for name in LOSS_TERMS])
            terms = accelerator.reduce(terms, "mean")
            if not torch.isfinite(terms).all():
                raise FloatingPointError(
                    f"Non-finite loss at step {state.step + 1} (epoch {state.epoch}): "
                    + ", ".join(f"{n}={v:.4g}" for n, v in zip(LOSS_TERMS, terms.tolist()))
                    + f". Training stopped; the last good checkpoint is {latest_checkpoint(self.checkpoint_dir)}."
                )
            accelerator.backward(outputs.loss)
            if accelerator.sync_gradients and self.train_args.max_grad_norm:
                accelerator.clip_grad_norm_(self.model.parameters(), self.train_args.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self._sums += terms
        self._micro += 1
        images = int(batch["pixel_values"].shape[0]) * accelerator.num_processes
        self._window_images += images
        state.images_seen += images

    def end_step(self) -> None:
        """After an optimisation step: progress, logging, checkpoint."""
        state, train_args = self.state, self.train_args
        state.step += 1
        self.last_losses = {name: value / self._micro for name, value in zip(LOSS_TERMS, self._sums.tolist())}
        self._sums.zero_()
        self._micro = 0
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{self.last_losses['loss']:.4f}")
        if state.step % train_args.logging_steps == 0 or state.step == self.total_steps:
            elapsed = max(time.perf_counter() - self._window_start, 1e-9)
            self.accelerator.log(
                {**{f"train/{k}": v for k, v in self.last_losses.items()},
                 "train/lr": self.values["lr"], "train/momentum": self.values["momentum"],
                 "train/weight_decay": self.values["weight_decay"],
                 "train/images_per_second": self._window_images / elapsed,
                 "train/skipped_images": state.skipped_images, "train/epoch": state.epoch},
                step=state.step,
            )
            self._window_images, self._window_start = 0, time.perf_counter()
        if train_args.checkpointing_steps and state.step % train_args.checkpointing_steps == 0:
            path = save_checkpoint(self.accelerator, self.checkpoint_dir, state.step,
                                   train_args.checkpoints_total_limit)
            logger.info(f"Saved checkpoint {path}")


# --------------------------------------------------------------------------------------------- saving
def hub_repo_id(train_args: PretrainingArguments) -> str:
    """--hub_model_id, or the output folder's name."""
    return train_args.hub_model_id or Path(train_args.output_dir).resolve().name


def save_final(
    accelerator: Accelerator,
    model: torch.nn.Module,
    config: ArtStyleConfig,
    model_args: ModelArguments,
    data_args: DataArguments,
    train_args: PretrainingArguments,
    results: dict[str, Any],
) -> Path:
    """save_pretrained (safetensors) + image processor + all_results.json + model card (main process)."""
    output_dir = Path(train_args.output_dir)
    unwrapped = accelerator.unwrap_model(model)
    accelerator.wait_for_everyone()
    unwrapped.save_pretrained(output_dir, is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save)
    if accelerator.is_main_process:
        build_image_processor(unwrapped.config).save_pretrained(output_dir)
        with open(output_dir / "all_results.json", "w") as handle:
            json.dump(results, handle, indent=2)
        summary = {
            "steps": results["train_steps"],
            "epochs": results["epochs"],
            "images seen": results["images_seen"],
            "global batch size": results["global_batch_size"],
            "processes": results["world_size"],
            "optimizer": train_args.optimizer,
            "learning rate": train_args.learning_rate,
            "weight decay": train_args.weight_decay,
            "augmentation": data_args.augmentation,
            "mixed precision": accelerator.mixed_precision,
            "skipped images": results["skipped_images"],
            **{f"final {k}": v for k, v in results.items() if k.startswith("train_loss")},
        }
        save_model_card(
            output_dir,
            task="pretraining",
            dataset_name=data_args.dataset,
            config=unwrapped.config,
            training_summary=summary,
            base_model=model_args.model_name_or_path,
            model_id=hub_repo_id(train_args) if train_args.push_to_hub else train_args.output_dir,
        )
    accelerator.wait_for_everyone()
    return output_dir


# --------------------------------------------------------------------------------------------- main
def main(args: list[str] | None = None) -> dict[str, Any]:
    """Pretrain and save; returns the results written to ``all_results.json``."""
    model_args, data_args, train_args = parse_args(args)
    if train_args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    accelerator = build_accelerator(train_args)
    setup_logging(accelerator)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(train_args.seed)

    output_dir = Path(train_args.output_dir)
    checkpoint_dir = output_dir / CHECKPOINT_SUBDIR
    if latest_checkpoint(checkpoint_dir) and not (train_args.resume_from_checkpoint or train_args.overwrite_output_dir):
        raise ValueError(
            f"output_dir {str(output_dir)!r} already holds checkpoints: pass --resume_from_checkpoint latest to "
            "continue, or --overwrite_output_dir to start again"
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_incomplete_checkpoints(checkpoint_dir)
    accelerator.wait_for_everyone()

    config = build_config(model_args)
    if train_args.ddp_find_unused_parameters is None and accelerator.ddp_handler is not None:
        # with weight_contrastive = 0 the student projector/predictor get no gradient; otherwise every trainable
        # parameter does (tests/test_modeling.py), and DDP's unused-parameter search would only cost time
        accelerator.ddp_handler.find_unused_parameters = config.weight_contrastive == 0
    with accelerator.main_process_first():
        dataset = build_train_dataset(data_args, config, train_args.seed)
    dataloader = build_dataloader(dataset, train_args.per_device_train_batch_size, data_args.num_workers,
                                  train_args.seed)
    model = maybe_convert_sync_batchnorm(build_model(model_args, config), accelerator)
    optimizer = build_optimizer(
        param_groups_no_decay(model, train_args.weight_decay), train_args.optimizer, lr=train_args.learning_rate,
        betas=(train_args.adam_beta1, train_args.adam_beta2),
    )
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

    hparams = {k: v for k, v in {**vars(model_args), **vars(data_args), **vars(train_args)}.items()
               if isinstance(v, (int, float, str, bool)) and k != "hub_token"}  # never log the token
    accelerator.init_trackers("artstyle_pretrain", config=hparams)

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

    logger.info(f"***** Pretraining on {len(dataset)} images, {num_epochs} epochs, {total_steps} steps, "
                f"{accelerator.num_processes} process(es) *****")
    start = time.perf_counter()
    start_step = state.step
    losses = PretrainLoop(accelerator, model, optimizer, dataloader, dataset, state, train_args, config, total_steps,
                          num_epochs, checkpoint_dir).run()
    runtime = time.perf_counter() - start
    checksums = gather_object([state_checksums(accelerator.unwrap_model(model))])

    results = {
        "train_steps": state.step,
        "epochs": state.epoch + (1 if state.batches_in_epoch else 0),
        "images_seen": state.images_seen,
        "skipped_images": state.skipped_images,
        "world_size": accelerator.num_processes,
        "global_batch_size": train_args.per_device_train_batch_size * accelerator.num_processes
        * train_args.gradient_accumulation_steps,
        "train_runtime_s": round(runtime, 3),
        "train_steps_per_second": round((state.step - start_step) / max(runtime, 1e-9), 4),
        "resumed_from": str(resume_path) if resume_path else None,
        "replica_checksums": {key: [c[key] for c in checksums] for key in checksums[0]},
        **{f"train_{name}": value for name, value in losses.items()},
    }
    save_final(accelerator, model, config, model_args, data_args, train_args, results)
    if train_args.push_to_hub and accelerator.is_main_process:
        url = push_to_hub(output_dir, hub_repo_id(train_args), token=train_args.hub_token,
                          private=train_args.hub_private_repo, commit_message=f"Pretraining: {state.step} steps")
        logger.info(f"Pushed to {url}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def cli() -> None:
    main()


if __name__ == "__main__":
    cli()
