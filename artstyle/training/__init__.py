"""Training utilities shared by ``run_pretrain.py`` and ``run_finetune.py``.

`arguments` (command-line plumbing, config from preset + overrides), `scaffold` (accelerator, logging,
output folders, final save and push), `checkpoint` (crash-safe training states), `data` (seeded order and
augmentations), `optim` (parameter groups, AdamW / LARS), `schedules` (per-step schedules); the scripts'
loops and reports: `pretrain_loop`, `finetune_loop`, `finetune_reports` (imported from there, not re-exported).
"""

from .checkpoint import (
    CHECKPOINT_PREFIX,
    TrainingState,
    latest_checkpoint,
    list_checkpoints,
    remove_incomplete_checkpoints,
    resolve_resume_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
    state_checksums,
)
from .data import EpochSeededSampler, SeededItems, item_seed, seeded_dataloader, seeded_rng, set_data_epoch
from .optim import (
    LARS,
    NO_DECAY_KEYWORDS,
    build_optimizer,
    layer_decay_param_groups,
    param_groups_no_decay,
    set_learning_rate,
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
    "layer_decay_param_groups",
    "latest_checkpoint",
    "list_checkpoints",
    "momentum_schedule",
    "param_groups_no_decay",
    "remove_incomplete_checkpoints",
    "resolve_resume_checkpoint",
    "rotate_checkpoints",
    "save_checkpoint",
    "seeded_dataloader",
    "seeded_rng",
    "set_data_epoch",
    "set_learning_rate",
    "set_optimizer_values",
    "split_decay_parameters",
    "state_checksums",
    "weight_decay_schedule",
]
