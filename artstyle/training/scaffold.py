"""Set-up and tear-down shared by ``run_pretrain.py`` and ``run_finetune.py``.

The parts every Hugging Face ``*_no_trainer.py`` example writes inline, written once: the
`Accelerator` (mixed precision, trackers, optional ``torch.compile``), per-process logging, the output
folder with its ``checkpoints/`` (accelerate training states ``step_<N>``, in both scripts), and the final
save (``save_pretrained`` + image processor + ``all_results.json`` + model card) and Hub upload.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import ProjectConfiguration

from ..hub import push_to_hub, save_model_card
from ..processing import build_image_processor
from .checkpoint import latest_checkpoint, remove_incomplete_checkpoints

__all__ = [
    "CHECKPOINT_SUBDIR",
    "build_accelerator",
    "compile_model",
    "end_training_with_curves",
    "hub_repo_id",
    "loggable_hparams",
    "prepare_output_dir",
    "push_folder",
    "resolve_mixed_precision",
    "save_final",
    "setup_logging",
]

CHECKPOINT_SUBDIR = "checkpoints"  # <output_dir>/checkpoints/step_<N>: accelerate training states


def resolve_mixed_precision(value: str) -> str | None:
    """``auto``: the ``accelerate launch`` / config setting if any, else bf16 on a GPU that supports it, else no."""
    if value != "auto":
        return value
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None  # accelerate reads it from the environment
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def trackers(with_tracking: bool, report_to: str | None) -> str | list[str] | None:
    """``log_with`` for the Accelerator: None unless ``with_tracking``; ``report_to`` "none" also turns it off."""
    if not with_tracking or report_to in (None, "", "none"):
        return None
    names = [name.strip() for name in report_to.split(",") if name.strip()]
    return "all" if names == ["all"] else names


def build_accelerator(
    output_dir: str | Path,
    *,
    gradient_accumulation_steps: int = 1,
    mixed_precision: str = "auto",
    with_tracking: bool = False,
    report_to: str | None = "tensorboard",
    use_cpu: bool = False,
    find_unused_parameters: bool = False,
) -> Accelerator:
    """An Accelerator logging to ``<output_dir>/runs``; CPU when asked or when no accelerator is present
    (``cpu=True`` lets ``torchrun`` / ``accelerate launch --multi_cpu`` start gloo processes)."""
    output_dir = str(output_dir)
    return Accelerator(
        cpu=use_cpu or not torch.accelerator.is_available(),
        gradient_accumulation_steps=gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(mixed_precision),
        log_with=trackers(with_tracking, report_to),
        project_config=ProjectConfiguration(project_dir=output_dir, logging_dir=os.path.join(output_dir, "runs")),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )


def setup_logging(accelerator: Accelerator) -> None:
    """INFO logs on the local main process; datasets / transformers warnings there, errors elsewhere."""
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if accelerator.is_local_main_process else logging.ERROR)
    verbosity = "warning" if accelerator.is_local_main_process else "error"
    getattr(datasets.utils.logging, f"set_verbosity_{verbosity}")()
    getattr(transformers.utils.logging, f"set_verbosity_{verbosity}")()


def compile_model(model: torch.nn.Module, enabled: bool, backend: str = "inductor", mode: str | None = None):
    """``torch.compile`` the model's forward in place (``nn.Module.compile``): parameter names, ``state_dict``,
    checkpoints and ``save_pretrained`` stay those of the eager model, so EMA, queue and resume are unchanged."""
    if enabled:
        model.compile(backend=backend, mode=mode)
    return model


def prepare_output_dir(accelerator: Accelerator, output_dir: str | Path, resume: str | None,
                       overwrite: bool) -> Path:
    """Create ``output_dir``; refuse to mix runs in a folder holding checkpoints unless resuming or
    ``overwrite``; remove half-written checkpoints. Returns ``<output_dir>/checkpoints``."""
    output_dir = Path(output_dir)
    checkpoint_dir = output_dir / CHECKPOINT_SUBDIR
    if latest_checkpoint(checkpoint_dir) and not (resume or overwrite):
        raise ValueError(
            f"output_dir {str(output_dir)!r} already holds checkpoints: pass --resume_from_checkpoint latest to "
            "continue, or --overwrite_output_dir to start again"
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_incomplete_checkpoints(checkpoint_dir)
    accelerator.wait_for_everyone()
    return checkpoint_dir


def loggable_hparams(*argument_groups) -> dict[str, Any]:
    """Scalar arguments of the given dataclasses, for the trackers; never the Hub token."""
    merged = {k: v for group in argument_groups for k, v in vars(group).items()}
    return {k: v for k, v in merged.items() if isinstance(v, (int, float, str, bool)) and k != "hub_token"}


def hub_repo_id(output_dir: str | Path, hub_model_id: str | None) -> str:
    """``--hub_model_id``, or the output folder's name."""
    return hub_model_id or Path(output_dir).resolve().name


def save_final(
    accelerator: Accelerator,
    model: torch.nn.Module,
    output_dir: str | Path,
    results: Mapping[str, Any] | None = None,
    card: Mapping[str, Any] | None = None,
) -> Path:
    """``save_pretrained`` (safetensors) + image processor on the main process; with ``results``
    ``all_results.json``, with ``card`` (keyword arguments of `save_model_card`) the model card."""
    output_dir = Path(output_dir)
    unwrapped = accelerator.unwrap_model(model)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    unwrapped.save_pretrained(output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save)
    if accelerator.is_main_process:
        build_image_processor(unwrapped.config).save_pretrained(output_dir)
        if results is not None:
            with open(output_dir / "all_results.json", "w", encoding="utf-8") as handle:
                json.dump(results, handle, indent=2)
        if card is not None:
            save_model_card(output_dir, config=unwrapped.config, **card)
    accelerator.wait_for_everyone()
    return output_dir


def push_folder(accelerator: Accelerator, output_dir: str | Path, repo_id: str, token: str | None, private: bool,
                commit_message: str) -> str | None:
    """Upload ``output_dir`` to the Hub from the main process; returns the repo URL there (None elsewhere)."""
    url = None
    if accelerator.is_main_process:
        url = push_to_hub(output_dir, repo_id, token=token, private=private, commit_message=commit_message)
    accelerator.wait_for_everyone()
    return url


def end_training_with_curves(accelerator: Accelerator, output_dir: str | Path,
                             name: str = "training_curves.png") -> Path | None:
    """``accelerator.end_training()`` (flushes the TensorBoard events), then, on the main process and when
    TensorBoard tracking was on, `artstyle.plots.plot_training_curves` of the run to ``<output_dir>/<name>``.

    Returns the figure's path (None elsewhere). A figure that cannot be drawn is a warning: the model is saved.
    """
    tensorboard = any(getattr(tracker, "name", None) == "tensorboard" for tracker in accelerator.trackers)
    accelerator.end_training()
    if not (tensorboard and accelerator.is_main_process):
        return None
    from ..plots import plot_training_curves

    output_dir = Path(output_dir)
    try:
        return plot_training_curves(output_dir, output_dir / name)
    except (FileNotFoundError, ValueError) as err:
        logging.getLogger(__name__).warning("No training curves written: %s", err)
        return None
