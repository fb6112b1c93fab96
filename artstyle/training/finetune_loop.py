"""The fine-tuning recipe of ``run_finetune.py``: timm mixup / cutmix, the loss, and one epoch of training.

``train_args`` is ``run_finetune.FinetuneArguments`` (``mixup``, ``cutmix``, ``mixup_prob``,
``mixup_switch_prob``, ``label_smoothing``, ``learning_rate``, ``min_learning_rate``, ``max_grad_norm``,
``logging_steps``).
"""

from __future__ import annotations

import logging

from accelerate import Accelerator
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from .checkpoint import TrainingState
from .optim import set_learning_rate
from .schedules import cosine_lr

__all__ = ["build_criterion", "build_mixup", "train_one_epoch"]

logger = logging.getLogger(__name__)


def build_mixup(train_args, num_classes: int, multi_label: bool) -> Mixup | None:
    """timm `Mixup` (or None when mixup and cutmix are off or the labels are multi-hot)."""
    if multi_label or (train_args.mixup <= 0 and train_args.cutmix <= 0) or train_args.mixup_prob <= 0:
        return None
    return Mixup(
        mixup_alpha=train_args.mixup, cutmix_alpha=train_args.cutmix, prob=train_args.mixup_prob,
        switch_prob=train_args.mixup_switch_prob, label_smoothing=train_args.label_smoothing,
        num_classes=num_classes,
    )


def build_criterion(train_args, mixup_fn, multi_label: bool) -> nn.Module:
    if multi_label:
        return nn.BCEWithLogitsLoss()
    if mixup_fn is not None:
        return SoftTargetCrossEntropy()  # mixup produces smoothed soft targets
    return nn.CrossEntropyLoss(label_smoothing=train_args.label_smoothing)


def train_one_epoch(
    model, dataloader, optimizer, criterion, accelerator: Accelerator, state: TrainingState, total_steps: int,
    warmup_steps: int, train_args, mixup_fn=None, progress=None,
) -> float:
    """One pass over ``dataloader``; returns the mean loss. Stops early at ``total_steps``."""
    model.train()
    running, count = 0.0, 0
    for batch in dataloader:
        if state.step >= total_steps:
            break
        if batch is None:
            continue
        state.skipped_images += int(batch.get("num_skipped", 0))
        pixel_values, labels = batch["pixel_values"], batch["labels"]
        if mixup_fn is not None:
            if len(pixel_values) % 2:  # timm's batch mixup pairs images: drop one from an odd batch
                if len(pixel_values) == 1:
                    continue
                pixel_values, labels = pixel_values[:-1], labels[:-1]
            pixel_values, labels = mixup_fn(pixel_values, labels)
        with accelerator.accumulate(model):
            lr = cosine_lr(state.step, total_steps, warmup_steps, train_args.learning_rate,
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
        state.images_seen += len(pixel_values) * accelerator.num_processes
        if accelerator.sync_gradients:
            state.step += 1
            if progress is not None:
                progress.update(1)
            if state.step % train_args.logging_steps == 0:
                logger.info("step %d: loss %.4f lr %.2e", state.step, running / max(count, 1), lr)
                accelerator.log({"train/loss": running / max(count, 1), "train/lr": lr}, step=state.step)
    return running / max(count, 1)
