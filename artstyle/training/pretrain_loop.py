"""The optimisation loop of ``run_pretrain.py``: `PretrainLoop`."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from ..evaluation.knn import knn_accuracy
from ..fast_data import augment_generator, make_two_view_batch
from .checkpoint import TrainingState, latest_checkpoint, save_checkpoint
from .data import SeededItems, set_data_epoch
from .optim import set_learning_rate

__all__ = ["LOSS_TERMS", "PretrainLoop"]

logger = get_logger(__name__)

LOSS_TERMS = ("loss", "loss_contrastive", "loss_layerwise", "loss_distill", "loss_gram")

@dataclass
class PretrainLoop:
    """The optimisation loop, from ``state`` (fresh or restored) to ``total_steps``.

    Steps are counted on ``accelerator.sync_gradients``; the learning rate and weight decay are set
    and the teacher EMA is applied (``momentum=`` of the model's forward) once per optimisation
    step, before its first micro-batch. `run` raises ``FloatingPointError`` naming the step at the
    first non-finite loss, before the backward pass and without writing a checkpoint. With
    ``knn_loaders``, the kNN accuracy is logged at step 0 of a fresh run (the initial encoder: what training has to
    beat) and every ``eval_every`` steps (it uses no global RNG).
    """

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    dataloader: Any
    dataset: SeededItems
    state: TrainingState
    train_args: Any  # run_pretrain.PretrainingArguments
    schedule: Callable[[int], dict[str, float]]  # step -> {"lr", "weight_decay", "momentum"}
    total_steps: int
    num_epochs: int
    checkpoint_dir: Path
    knn_loaders: tuple | None = None
    augment: Any = None  # GPUTwoViewAugment for --augment_on gpu: batches arrive as uint8, views are made here
    decoded_cache: Any = None  # DeviceDecodedCache: batches arrive as cache indices, pixels are gathered on the device
    last_losses: dict = field(default_factory=dict)

    def run(self) -> dict[str, float]:
        """Train to the end; returns the last optimisation step's losses (mean over processes)."""
        state = self.state
        self.progress = tqdm(range(self.total_steps), initial=state.step, desc="pretraining",
                             disable=not self.accelerator.is_local_main_process)
        self._sums = [0.0] * len(LOSS_TERMS)  # host floats: the losses are read once per micro-batch anyway
        self._micro = 0
        self._window_images, self._window_start = 0, time.perf_counter()
        if self.knn_loaders is not None and state.step == 0:  # the reference: the encoder before any update
            self.log_knn()
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
        process got an all-bad batch, which every process then drops so collectives stay in step.
        One process: no collective and no device round trip (a synchronisation per step on a GPU)."""
        skipped = self.train_args.per_device_train_batch_size if batch is None else batch["num_skipped"]
        if self.accelerator.num_processes == 1:
            self.state.skipped_images += int(skipped)
            return batch is None
        flags = torch.tensor([skipped, batch is None], dtype=torch.float64, device=self.accelerator.device)
        flags = self.accelerator.reduce(flags, "sum")
        self.state.skipped_images += int(flags[0].item())
        return bool(flags[1] > 0)

    def train_micro_batch(self, batch: dict) -> None:
        accelerator, state = self.accelerator, self.state
        if self.augment is not None:  # views seeded by (seed, epoch, batch, process): the same after a resume
            generator = augment_generator(self.train_args.seed, state.epoch, state.batches_in_epoch,
                                          accelerator.process_index)
            batch = make_two_view_batch(batch, self.augment, generator, accelerator.device, self.decoded_cache)
        self.values = self.schedule(state.step)
        first = self._micro == 0
        if first:
            set_learning_rate(self.optimizer, self.values["lr"], self.values["weight_decay"])
        with accelerator.accumulate(self.model):
            outputs = self.model(
                pixel_values=batch["pixel_values"],
                pixel_values_2=batch["pixel_values_2"],
                momentum=self.values["momentum"] if first else None,  # one EMA update per optimisation step
            )
            terms = torch.stack([getattr(outputs, name).detach().float() for name in LOSS_TERMS])
            # ONE synchronisation per micro-batch: the finiteness check and the logged losses read the same values
            values = accelerator.reduce(terms, "mean").tolist()
            if not all(math.isfinite(value) for value in values):
                raise FloatingPointError(
                    f"Non-finite loss at step {state.step + 1} (epoch {state.epoch}): "
                    + ", ".join(f"{n}={v:.4g}" for n, v in zip(LOSS_TERMS, values))
                    + f". Training stopped; the last good checkpoint is {latest_checkpoint(self.checkpoint_dir)}."
                )
            accelerator.backward(outputs.loss)
            if accelerator.sync_gradients and self.train_args.max_grad_norm:
                accelerator.clip_grad_norm_(self.model.parameters(), self.train_args.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self._sums = [total + value for total, value in zip(self._sums, values)]
        self._micro += 1
        images = int(batch["pixel_values"].shape[0]) * accelerator.num_processes
        self._window_images += images
        state.images_seen += images

    def end_step(self) -> None:
        """After an optimisation step: progress, logging, kNN monitor, checkpoint."""
        state, train_args = self.state, self.train_args
        state.step += 1
        self.last_losses = {name: value / self._micro for name, value in zip(LOSS_TERMS, self._sums)}
        self._sums = [0.0] * len(LOSS_TERMS)
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
        if self.knn_loaders is not None and state.step % train_args.eval_every == 0:
            self.log_knn()
        if train_args.checkpointing_steps and state.step % train_args.checkpointing_steps == 0:
            path = save_checkpoint(self.accelerator, self.checkpoint_dir, state.step,
                                   train_args.checkpoints_total_limit)
            logger.info(f"Saved checkpoint {path}")

    def log_knn(self) -> None:
        """kNN accuracy of the student's ``pooler_output`` (every process computes it on the whole split)."""
        train_loader, eval_loader, num_classes = self.knn_loaders
        with self.accelerator.autocast():
            acc = knn_accuracy(self.accelerator.unwrap_model(self.model), train_loader, eval_loader, num_classes,
                               k=self.train_args.knn_k, temperature=self.train_args.knn_temperature)
        self.accelerator.log({"eval/knn_acc": acc}, step=self.state.step)
        logger.info(f"step {self.state.step}: knn_acc {acc:.4f}")
        if self.accelerator.is_main_process:
            with open(Path(self.train_args.output_dir) / "eval_log.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": self.state.step, "knn_acc": acc}) + "\n")
