"""Training utilities shared by ``run_pretrain.py`` and ``run_finetune.py``."""

from .checkpoint import (
    CHECKPOINT_PREFIX,
    TrainingState,
    latest_checkpoint,
    list_checkpoints,
    remove_incomplete_checkpoints,
    resolve_resume_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
)
from .data import EpochSeededSampler, SeededItems, item_seed, seeded_rng
from .optim import (
    LARS,
    NO_DECAY_KEYWORDS,
    build_optimizer,
    param_groups_no_decay,
    set_optimizer_values,
    split_decay_parameters,
)
from .schedules import cosine_lr, momentum_schedule, weight_decay_schedule

__all__ = [
    "CHECKPOINT_PREFIX",
    "LARS",
    "NO_DECAY_KEYWORDS",
    "EpochSeededSampler",
    "SeededItems",
    "TrainingState",
    "build_optimizer",
    "cosine_lr",
    "item_seed",
    "latest_checkpoint",
    "list_checkpoints",
    "momentum_schedule",
    "param_groups_no_decay",
    "remove_incomplete_checkpoints",
    "resolve_resume_checkpoint",
    "rotate_checkpoints",
    "save_checkpoint",
    "seeded_rng",
    "set_optimizer_values",
    "split_decay_parameters",
    "weight_decay_schedule",
]
