"""Crash-safe training checkpoints on top of ``accelerator.save_state``.

Layout: ``<checkpoint_dir>/step_<N>`` (one folder per optimisation step). A checkpoint is written
to ``.tmp-step_<N>`` first and renamed once every process has finished writing, so a folder named
``step_<N>`` is always complete: a crash (or ``kill -9``) while saving leaves only a temporary
folder, which `latest_checkpoint` ignores and `remove_incomplete_checkpoints` deletes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import torch

__all__ = [
    "CHECKPOINT_PREFIX",
    "TrainingState",
    "latest_checkpoint",
    "list_checkpoints",
    "remove_incomplete_checkpoints",
    "resolve_resume_checkpoint",
    "rotate_checkpoints",
    "save_checkpoint",
    "state_checksums",
]

CHECKPOINT_PREFIX = "step_"
_TMP_PREFIX = ".tmp-"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


class TrainingState:
    """Loop position saved with every checkpoint (``accelerator.register_for_checkpointing``).

    ``step``: optimisation steps done; ``epoch``: current epoch; ``batches_in_epoch``: batches
    (per process) already consumed in that epoch, skipped with ``skip_first_batches`` on resume;
    ``skipped_images``: undecodable images skipped so far, summed over processes;
    ``images_seen``: images trained on, summed over processes; ``num_processes`` and
    ``per_device_batch_size``: the data layout, which a resume must match (0 = not recorded).
    """

    def __init__(self) -> None:
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.skipped_images = 0
        self.images_seen = 0
        self.num_processes = 0
        self.per_device_batch_size = 0

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        for key in vars(self):
            setattr(self, key, int(state.get(key, getattr(self, key))))

    def __repr__(self) -> str:
        return f"TrainingState({self.state_dict()})"


def list_checkpoints(checkpoint_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``checkpoint_dir`` as ``(step, path)``, sorted by step."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for path in checkpoint_dir.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    checkpoints = list_checkpoints(checkpoint_dir)
    return checkpoints[-1][1] if checkpoints else None


def resolve_resume_checkpoint(value: str | None, checkpoint_dir: str | Path) -> Path | None:
    """Resolve ``--resume_from_checkpoint``: None/"" -> None; ``"latest"`` -> the newest complete
    checkpoint in ``checkpoint_dir`` (None if there is none yet, so a restarted job can always pass
    ``latest``); otherwise an existing checkpoint folder."""
    if not value:
        return None
    if value == "latest":
        return latest_checkpoint(checkpoint_dir)
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint: checkpoint folder {value!r} does not exist")
    if path.name.startswith(_TMP_PREFIX):
        raise ValueError(f"--resume_from_checkpoint: {value!r} is an incomplete (temporary) checkpoint")
    return path


def remove_incomplete_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """Delete temporary folders left by an interrupted save; returns what was removed."""
    checkpoint_dir = Path(checkpoint_dir)
    removed = []
    if checkpoint_dir.is_dir():
        for path in checkpoint_dir.iterdir():
            if path.name.startswith(_TMP_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def rotate_checkpoints(checkpoint_dir: str | Path, total_limit: int | None) -> list[Path]:
    """Keep the ``total_limit`` newest checkpoints; returns the deleted folders."""
    if total_limit is None or total_limit <= 0:
        return []
    checkpoints = list_checkpoints(checkpoint_dir)
    removed = [path for _, path in checkpoints[: max(0, len(checkpoints) - total_limit)]]
    for path in removed:
        shutil.rmtree(path)
    return removed


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as handle:
                os.fsync(handle.fileno())


def save_checkpoint(accelerator, checkpoint_dir: str | Path, step: int, total_limit: int | None = None) -> Path:
    """Save the full training state (``accelerator.save_state``) as ``checkpoint_dir/step_<step>``.

    Call on every process. Files are written to a temporary folder; the main process renames it
    once all processes are done, then deletes checkpoints beyond ``total_limit``.
    """
    checkpoint_dir = Path(checkpoint_dir)
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = checkpoint_dir / f"{_TMP_PREFIX}{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        rotate_checkpoints(checkpoint_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


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
