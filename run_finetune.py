"""Fine-tune, linear-probe or kNN-evaluate an artstyle encoder on a style-classification dataset.

In the manner of Hugging Face's ``run_image_classification_no_trainer.py``, split into small functions::

    python run_finetune.py                                   # demo data, from outputs/pretrain
    python run_finetune.py --linear_probe                    # frozen encoder, linear head
    python run_finetune.py --knn                             # weighted kNN on frozen features (DINO)
    python run_finetune.py --model_name_or_path none --config_overrides backbone_depth=2   # from scratch
    accelerate launch run_finetune.py --dataset_name pandora18k --data_dir /data/pandora18k --learning_rate 1e-4 ...

Modes:
- full fine-tune (default): layer-wise LR decay (timm), mixup / cutmix with label smoothing (timm),
  drop path, cosine schedule with warmup; the best epoch (by ``--metric_for_best_model`` on the
  evaluation split) is saved to ``output_dir``, the last epoch to ``output_dir/last_epoch``. With LP-FT the
  probe head before fine-tuning is a candidate too (``best_epoch`` -1; ``--probe_candidate false``: epochs only).
- ``--linear_probe``: features of the frozen encoder are extracted once; a linear classifier is fitted
  on them and written into the model's classification head (encoder weights unchanged).
- ``--knn``: weighted kNN (k=20, T=0.07) of evaluation features against training features; only
  metrics are written (no model).

Splits and label columns: see `artstyle.evaluation.load_labelled_splits` (``validation`` selects the
model where present, else ``test``; multi-hot columns use the multi-label protocol).

Outputs in ``output_dir``: the model (``save_pretrained`` + image processor), ``all_results.json`` (metrics,
``{eval,test}_num_examples``, per-class ``*_average_precision``), ``confusion_matrix.png``,
``per_class_accuracy.png``, ``embedding_map_test.png`` (single-label splits), a model card ``README.md``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from artstyle import CONFIG_PRESETS, ArtStyleForImageClassification, build_image_processor
from artstyle.evaluation import (
    SCALAR_METRICS,
    StyleData,
    build_dataloaders,
    fit_linear_probe,
    load_labelled_splits,
    scalar_metrics,
)
from artstyle.training import TrainingState, layer_decay_param_groups
from artstyle.training.arguments import (
    DEPRECATED_FLAGS,
    ScriptArgumentParser,
    build_config,
    check_config_fields,
    check_data_source,
    parse_json_option,
    parse_overrides,
    run_cli,
)
from artstyle.training.finetune_loop import build_criterion, build_mixup, train_one_epoch
from artstyle.training.finetune_reports import (
    evaluate,
    knn_evaluate,
    split_results,
    write_embedding_map,
    write_reports,
)
from artstyle.training.scaffold import (
    build_accelerator,
    compile_model,
    loggable_hparams,
    push_folder,
    save_final,
    setup_logging,
)

logger = logging.getLogger("run_finetune")

# former config flags -> --config_overrides fields
DEPRECATED_CONFIG_FLAGS = ("backbone_depth", "image_size", "drop_path_rate")
FINETUNE_CONFIG_DEFAULTS = {"drop_path_rate": 0.1}  # applied unless --config_overrides sets them


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
        default="demo", metadata={"help": f"Config preset when --model_name_or_path none: {CONFIG_PRESETS}."}
    )
    config_name: str | None = field(
        default=None, metadata={"help": "A config.json (or a folder holding one) when --model_name_or_path none."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "Config fields to change: a JSON object or 'k=v,k=v', e.g. "
                                        "'backbone_depth=2,image_size=32' (from scratch) or 'drop_path_rate=0.2'. "
                                        "Fine-tuning sets drop_path_rate=0.1 unless given here."})


@dataclass
class DataArguments:
    dataset_name: str = field(
        default="demo",
        metadata={"help": "demo | ava | pandora18k | flickr | imagefolder | a Hub dataset id."},
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
    crop_scale_min: float = field(
        default=1.0, metadata={"help": "Lower bound of RandomResizedCrop's area scale (1.0: whole image, flips only)."}
    )
    hflip_prob: float = field(default=0.5, metadata={"help": "Probability of a horizontal flip in the training "
                                                             "augmentation (0 = never, for direction-bearing styles)."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})


@dataclass
class FinetuneArguments:
    output_dir: str = field(default="outputs/finetune", metadata={"help": "Where the model and results go."})
    linear_probe: bool = field(default=False, metadata={"help": "Frozen encoder, train a linear head only."})
    knn: bool = field(default=False, metadata={"help": "Only evaluate frozen features with a weighted kNN."})
    linear_probe_init: bool = field(default=True, metadata={
        "help": "LP-FT (Kumar et al., 2022): fit the head on frozen features first (the --linear_probe recipe), "
                "then fine-tune everything from there (--linear_probe_init false: a fresh head, plain fine-tune)."})
    probe_candidate: bool = field(default=True, metadata={
        "help": "LP-FT: the probe head before any fine-tuning update competes in the best-model selection like an "
                "epoch (best_epoch -1 when it wins: no epoch of fine-tuning beat it on the evaluation split)."})
    knn_k: int = field(default=20, metadata={"help": "Neighbours of the kNN classifier."})
    knn_temperature: float = field(default=0.07, metadata={"help": "Temperature of the kNN vote weights."})
    num_train_epochs: int = field(default=8, metadata={
        "help": "Fine-tuning epochs (8: chosen on the demo's validation split with the cls_gram_diag pooler)."})
    max_train_steps: int | None = field(default=None, metadata={"help": "If set, overrides num_train_epochs."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device (training)."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Batch size per device (evaluation)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Steps accumulated per update."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (top layer; the demo's "
                                                                        "model, chosen on its validation split; "
                                                                        "ViT-S/B at 224 px: about 1e-4)."})
    min_learning_rate: float = field(default=1e-6, metadata={"help": "Learning rate at the end of the cosine."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    layer_decay: float = field(default=0.75, metadata={"help": "Layer-wise LR decay (1.0 = off)."})
    warmup_epochs: float = field(default=1.0, metadata={"help": "Linear warmup length in epochs."})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Gradient clipping (None = off)."})
    mixup: float = field(default=0.0, metadata={"help": "Mixup alpha (0 = off; DeiT / MAE use 0.8 with "
                                                             "--cutmix 1.0)."})
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
    torch_compile: bool = field(default=False, metadata={"help": "torch.compile the model's forward."})
    torch_compile_backend: str = field(default="inductor", metadata={"help": "Backend of --torch_compile."})
    torch_compile_mode: str | None = field(default=None, metadata={"help": "Mode of --torch_compile."})
    logging_steps: int = field(default=10, metadata={"help": "Log the training loss every N updates."})
    with_tracking: bool = field(default=False, metadata={"help": "Log to the trackers of --report_to "
                                                                 "(output_dir/runs)."})
    report_to: str = field(default="tensorboard", metadata={"help": "Tracker(s): tensorboard, wandb, all, or none."})
    save_plots: bool = field(default=True, metadata={"help": "Write the confusion-matrix, per-class and "
                                                              "embedding-map charts."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload output_dir to the Hub at the end."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository id for --push_to_hub."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token (default: the cached login)."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})


def parse_args(args: list[str] | None = None) -> tuple[ModelArguments, DataArguments, FinetuneArguments]:
    """Parse command-line arguments (``args`` None = ``sys.argv``) and validate them."""
    parser = ScriptArgumentParser((ModelArguments, DataArguments, FinetuneArguments), renames=DEPRECATED_FLAGS,
                                  config_flags=DEPRECATED_CONFIG_FLAGS, prog="run_finetune.py")
    model_args, data_args, train_args = parser.parse(args)
    validate_args(model_args, data_args, train_args)
    return model_args, data_args, train_args


def validate_args(model_args: ModelArguments, data_args: DataArguments, train_args: FinetuneArguments) -> None:
    """Raise ValueError naming the offending option."""
    if train_args.linear_probe and train_args.knn:
        raise ValueError("--linear_probe and --knn are exclusive; pick one")
    overrides = parse_overrides(model_args.config_overrides)
    check_config_fields(overrides)
    if from_scratch(model_args):
        build_config(model_args.config_preset, overrides, model_args.config_name)
        if train_args.linear_probe or train_args.knn:
            logger.warning("Evaluating a randomly initialised encoder (--model_name_or_path none)")
    else:
        check_model_source(model_args.model_name_or_path)
    if train_args.metric_for_best_model not in SCALAR_METRICS:
        raise ValueError(f"--metric_for_best_model must be one of {SCALAR_METRICS}")
    for name in ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size", "max_train_steps",
                 "gradient_accumulation_steps", "knn_k", "probe_epochs", "logging_steps", "learning_rate",
                 "knn_temperature", "probe_learning_rate"):
        if getattr(train_args, name) is not None and getattr(train_args, name) <= 0:
            raise ValueError(f"--{name} must be > 0, got {getattr(train_args, name)}")
    if not 0 < train_args.layer_decay <= 1:
        raise ValueError(f"--layer_decay must be in (0, 1], got {train_args.layer_decay}")
    if not 0 <= train_args.label_smoothing < 1:
        raise ValueError(f"--label_smoothing must be in [0, 1), got {train_args.label_smoothing}")
    if train_args.mixup < 0 or train_args.cutmix < 0:
        raise ValueError("--mixup and --cutmix must be >= 0")
    if not 0 < data_args.crop_scale_min <= 1:
        raise ValueError(f"--crop_scale_min must be in (0, 1], got {data_args.crop_scale_min}")
    if not 0 <= data_args.hflip_prob <= 1:
        raise ValueError(f"--hflip_prob must be in [0, 1], got {data_args.hflip_prob}")
    if data_args.dataloader_num_workers < 0:
        raise ValueError(f"--dataloader_num_workers must be >= 0, got {data_args.dataloader_num_workers}")
    parse_json_option(data_args.dataset_options, "dataset_options")
    check_data_source(data_args.dataset_name, data_args.data_dir)
    if train_args.mixed_precision not in ("auto", "no", "fp16", "bf16"):
        raise ValueError(f"--mixed_precision must be one of auto, no, fp16, bf16, got {train_args.mixed_precision!r}")
    if train_args.push_to_hub and not train_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id")


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


def load_data(data_args: DataArguments) -> StyleData:
    """The splits (`artstyle.evaluation.load_labelled_splits`) of ``--dataset_name``."""
    return load_labelled_splits(data_args, **parse_json_option(data_args.dataset_options, "dataset_options"))


def build_loaders(data: StyleData, image_processor, data_args: DataArguments, train_args: FinetuneArguments,
                  mode: str) -> dict:
    """`build_dataloaders`: ``train`` augmented (``--crop_scale_min``, ``--hflip_prob``, ``--rand_augment``) for
    ``mode="finetune"``, else ``train_features``."""
    return build_dataloaders(data, image_processor, data_args, train_args, augment_train=mode == "finetune")


# ------------------------------------------------------------------------------------------------
# Model and optimizer
# ------------------------------------------------------------------------------------------------


def from_scratch(model_args: ModelArguments) -> bool:
    return model_args.model_name_or_path.lower() == "none"


def check_model_source(source: str) -> None:
    """A local-looking ``--model_name_or_path`` must hold a saved model (else it would be tried on the Hub)."""
    path = Path(source).expanduser()
    looks_local = path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1
    if looks_local and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"--model_name_or_path {source!r}: no saved model there. Run `python run_pretrain.py` first, "
            "pass a pretraining folder or Hub id, or train from scratch with "
            "`--model_name_or_path none --config_preset tiny`."
        )


def build_model(model_args: ModelArguments, label_names: list[str], multi_label: bool):
    """`ArtStyleForImageClassification` from a pretraining / classifier folder, a Hub id, or a preset / config."""
    id2label = dict(enumerate(label_names))
    overrides = {**FINETUNE_CONFIG_DEFAULTS, **parse_overrides(model_args.config_overrides)}
    overrides.update(
        num_labels=len(label_names), id2label=id2label, label2id={name: i for i, name in id2label.items()},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    if from_scratch(model_args):
        return ArtStyleForImageClassification(build_config(model_args.config_preset, overrides,
                                                           model_args.config_name))
    check_model_source(model_args.model_name_or_path)
    return ArtStyleForImageClassification.from_pretrained(
        str(Path(model_args.model_name_or_path).expanduser()), ignore_mismatched_sizes=True, **overrides)


def build_optimizer(model: nn.Module, train_args: FinetuneArguments) -> torch.optim.Optimizer:
    """AdamW over layer-wise-LR-decay groups; each group's ``lr_scale`` multiplies the scheduled rate."""
    groups = layer_decay_param_groups(model, train_args.weight_decay, train_args.layer_decay)
    for group in groups:
        group["lr"] = train_args.learning_rate * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=train_args.learning_rate, betas=(0.9, 0.999), fused=True)


def initialise_head_by_linear_probe(model, data: StyleData, image_processor, data_args: DataArguments,
                                    train_args: FinetuneArguments, accelerator) -> None:
    """LP-FT's first stage: ``model.classifier`` := a linear probe fitted on the frozen encoder's features of the
    (unaugmented) training split; the parameters' ``requires_grad`` flags are restored afterwards."""
    features = build_loaders(data, image_processor, data_args, train_args, "linear_probe")["train_features"]
    trainable = [p.requires_grad for p in model.parameters()]
    model.to(accelerator.device)
    fit_linear_probe(model, accelerator.prepare(features), accelerator, len(data.label_names),
                     multi_label=data.multi_label_train, seed=train_args.seed, epochs=train_args.probe_epochs,
                     learning_rate=train_args.probe_learning_rate, weight_decay=train_args.probe_weight_decay)
    for parameter, flag in zip(model.parameters(), trainable):
        parameter.requires_grad_(flag)
    logger.info("classification head initialised by a linear probe (%d epochs on frozen features)",
                train_args.probe_epochs)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Run fine-tuning / linear probe / kNN as given by ``args``; returns the results written."""
    model_args, data_args, train_args = parse_args(args)
    mode = "knn" if train_args.knn else "linear_probe" if train_args.linear_probe else "finetune"
    output_dir = Path(train_args.output_dir)
    accelerator = build_accelerator(
        output_dir, gradient_accumulation_steps=train_args.gradient_accumulation_steps,
        mixed_precision=train_args.mixed_precision, with_tracking=train_args.with_tracking,
        report_to=train_args.report_to,
    )
    setup_logging(accelerator)
    logger.info("%s", accelerator.state)
    set_seed(train_args.seed)

    with accelerator.main_process_first():
        data = load_data(data_args)
    logger.info("train %d, %s %d, test %s images; %d classes; multi-label train %s / eval %s",
                len(data.train), data.eval_split, len(data.eval), len(data.test) if data.test else "-",
                len(data.label_names), data.multi_label_train,
                {key: multi for key, (_, multi) in data.eval_columns.items()})

    model = build_model(model_args, data.label_names, data.multi_label_train)
    image_processor = build_image_processor(model.config)
    loaders = build_loaders(data, image_processor, data_args, train_args, mode)
    compile_model(model, train_args.torch_compile, train_args.torch_compile_backend, train_args.torch_compile_mode)
    results: dict[str, Any] = {"mode": mode, "dataset": data_args.dataset_name,
                               "model_name_or_path": model_args.model_name_or_path, "eval_split": data.eval_split,
                               "eval_num_examples": len(data.eval)}
    if "test" in loaders:
        results["test_num_examples"] = len(data.test)

    if mode in ("knn", "linear_probe"):
        # frozen encoder: no DDP wrapper (nothing to synchronise), only the dataloaders are sharded
        model = model.to(accelerator.device)
        loaders = dict(zip(loaders, accelerator.prepare(*loaders.values())))  # always >= 2 loaders here

    if mode == "knn":
        final = knn_evaluate(model, loaders, accelerator, data, train_args, "eval")
        results.update(split_results(final, "eval", data))
        if "test" in loaders:
            final = knn_evaluate(model, loaders, accelerator, data, train_args, "test")
            results.update(split_results(final, "test", data))
        results["knn"] = {"k": train_args.knn_k, "temperature": train_args.knn_temperature}
        if train_args.save_plots:  # every process: the features are gathered
            write_embedding_map(model, loaders, accelerator, data, output_dir, "test" if "test" in loaders else "eval")
        if accelerator.is_main_process:
            write_reports(output_dir, results, final, data, train_args.save_plots)
        accelerator.end_training()
        return results

    if mode == "linear_probe":
        fit_linear_probe(model, loaders["train_features"], accelerator, len(data.label_names),
                         multi_label=data.multi_label_train, seed=train_args.seed, epochs=train_args.probe_epochs,
                         learning_rate=train_args.probe_learning_rate, weight_decay=train_args.probe_weight_decay)
        eval_metrics = evaluate(model, loaders, accelerator, data, "eval")
        results.update(split_results(eval_metrics, "eval", data))
        summary = {"mode": "linear probe (frozen encoder)", "probe_epochs": train_args.probe_epochs,
                   "probe_learning_rate": train_args.probe_learning_rate}
    else:
        if train_args.linear_probe_init:
            initialise_head_by_linear_probe(model, data, image_processor, data_args, train_args, accelerator)
        optimizer = build_optimizer(model, train_args)
        mixup_fn = build_mixup(train_args, len(data.label_names), data.multi_label_train)
        criterion = build_criterion(train_args, mixup_fn, data.multi_label_train)
        model, optimizer, *prepared = accelerator.prepare(model, optimizer, *loaders.values())
        loaders = dict(zip(loaders, prepared))
        if train_args.linear_probe_init:  # the probe head alone, before any update: what fine-tuning has to beat
            # (forked: iterating a DataLoader draws a base seed, and training must draw what it drew without this)
            with torch.random.fork_rng(devices=[]):
                probe_eval = evaluate(model, loaders, accelerator, data, "eval")
            probe_metrics = scalar_metrics(probe_eval, "eval")
            results["probe_init"] = probe_metrics
            logger.info("linear-probe head before fine-tuning: eval %s %.4f", train_args.metric_for_best_model,
                        probe_metrics[f"eval_{train_args.metric_for_best_model}"])

        updates_per_epoch = max(1, math.ceil(len(loaders["train"]) / train_args.gradient_accumulation_steps))
        total_steps = train_args.max_train_steps or train_args.num_train_epochs * updates_per_epoch
        num_epochs = math.ceil(total_steps / updates_per_epoch)
        warmup_steps = min(total_steps, int(train_args.warmup_epochs * updates_per_epoch))
        state = TrainingState()
        accelerator.init_trackers("finetune", loggable_hparams(model_args, data_args, train_args))
        logger.info("fine-tuning %d epochs, %d updates (%d per epoch), total batch %d", num_epochs, total_steps,
                    updates_per_epoch, train_args.per_device_train_batch_size * accelerator.num_processes
                    * train_args.gradient_accumulation_steps)
        progress = tqdm(total=total_steps, disable=not accelerator.is_local_main_process, desc="fine-tune")
        best_value, best_state, best_epoch, history = -math.inf, None, -1, []

        def keep(eval_metrics: dict, epoch: int) -> None:  # the best model so far: a CPU copy and its eval results
            nonlocal best_value, best_state, best_epoch
            best_value, best_epoch = eval_metrics[train_args.metric_for_best_model], epoch
            best_state = {k: v.detach().cpu().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
            results.update(split_results(eval_metrics, "eval", data))

        if train_args.linear_probe_init and train_args.probe_candidate:  # an epoch must beat the probe to be kept
            keep(probe_eval, -1)
        for epoch in range(num_epochs):
            state.epoch = epoch
            loss = train_one_epoch(model, loaders["train"], optimizer, criterion, accelerator, state, total_steps,
                                   warmup_steps, train_args, mixup_fn, progress)
            eval_metrics = evaluate(model, loaders, accelerator, data, "eval")
            value = eval_metrics[train_args.metric_for_best_model]
            history.append({"epoch": epoch, "train_loss": loss, **scalar_metrics(eval_metrics, "eval")})
            logger.info("epoch %d: train loss %.4f, eval %s %.4f", epoch, loss, train_args.metric_for_best_model,
                        value)
            accelerator.log({"train/epoch_loss": loss, **{f"eval/{k[5:]}": v for k, v in
                             scalar_metrics(eval_metrics, "eval").items()}}, step=state.step)
            if value > best_value or best_state is None:
                keep(eval_metrics, epoch)
        progress.close()
        if best_epoch == -1:
            logger.info("no fine-tuning epoch beat the linear-probe head on eval %s (%.4f): keeping the probe "
                        "(best_epoch -1; the last epoch is in last_epoch/)", train_args.metric_for_best_model,
                        best_value)
        save_final(accelerator, model, output_dir / "last_epoch")
        accelerator.unwrap_model(model).load_state_dict(best_state)
        results.update(best_epoch=best_epoch, history=history, train_steps=state.step,
                       num_skipped_images=state.skipped_images)
        summary = {"mode": "full fine-tune" + (" after a linear probe (LP-FT)" if train_args.linear_probe_init else ""),
                   "epochs": num_epochs, "updates": state.step,
                   "learning_rate": train_args.learning_rate, "layer_decay": train_args.layer_decay,
                   "weight_decay": train_args.weight_decay, "mixup": train_args.mixup, "cutmix": train_args.cutmix,
                   "label_smoothing": train_args.label_smoothing,
                   "drop_path_rate": accelerator.unwrap_model(model).config.drop_path_rate,
                   "batch_size": train_args.per_device_train_batch_size * accelerator.num_processes
                   * train_args.gradient_accumulation_steps, "best_epoch": best_epoch,
                   "probe_candidate": bool(train_args.linear_probe_init and train_args.probe_candidate)}

    final = results["eval_details"]
    if "test" in loaders:
        final = evaluate(model, loaders, accelerator, data, "test")
        results.update(split_results(final, "test", data))
    prefix = "test" if "test" in loaders else "eval"
    card_metrics = {k[len(prefix) + 1:]: v for k, v in results.items()
                    if k.startswith(prefix + "_") and isinstance(v, float)}
    source = model_args.model_name_or_path
    save_final(accelerator, model, output_dir, card=dict(
        task="image-classification", dataset_name=data_args.dataset_name, training_summary=summary,
        metrics=card_metrics, base_model=None if from_scratch(model_args) else source,
        model_id=train_args.hub_model_id,
    ))
    if train_args.save_plots:  # every process: the features are gathered
        write_embedding_map(model, loaders, accelerator, data, output_dir, prefix)
    if accelerator.is_main_process:
        write_reports(output_dir, results, final, data, train_args.save_plots)
    if train_args.push_to_hub:
        url = push_folder(accelerator, output_dir, train_args.hub_model_id, train_args.hub_token,
                          train_args.hub_private_repo, f"artstyle {mode} on {data_args.dataset_name}")
        logger.info("pushed to %s", url)
    accelerator.end_training()
    return results


def cli(argv: list[str] | None = None) -> None:
    """Console entry point ``artstyle-finetune``: prints the scalar metrics; bad input -> one line, exit code 2."""
    results = run_cli(main, "artstyle-finetune", argv)
    if PartialState().is_main_process:
        keys = [k for k in results if k.startswith(("eval_", "test_")) and isinstance(results[k], float)]
        print(json.dumps({k: round(results[k], 4) for k in keys}, indent=2))


if __name__ == "__main__":
    cli()
