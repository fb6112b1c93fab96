"""Per-step schedules as pure functions of the optimisation step.

Every schedule takes the *optimisation* step (counted on ``accelerator.sync_gradients``, so
gradient accumulation never skews it) and the total number of steps, and returns a float. Being
pure functions of the step, they need no state of their own: resuming at step ``k`` gives exactly
the values of an uninterrupted run.

- `cosine_lr`: linear warmup to ``base`` over ``warmup`` steps, then half-cosine to ``final``
  (MoCo v3, DINO).
- `momentum_schedule`: teacher EMA momentum, half-cosine from ``base`` to ``final`` (1.0)
  (BYOL, MoCo v3).
- `weight_decay_schedule`: half-cosine from ``base`` to ``final`` (DINO: 0.04 -> 0.4).
"""

from __future__ import annotations

import math

__all__ = ["cosine_lr", "momentum_schedule", "weight_decay_schedule"]


def _check(step: int, total: int) -> None:
    if total <= 0:
        raise ValueError(f"total (number of training steps) must be > 0, got {total}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")


def _half_cosine(progress: float, start: float, end: float) -> float:
    progress = min(max(progress, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def cosine_lr(step: int, total: int, warmup: int, base: float, final: float = 0.0) -> float:
    """Learning rate at ``step``: linear warmup then cosine decay.

    During warmup (``step < warmup``) the rate is ``base * (step + 1) / warmup``, so the first
    step already moves and step ``warmup - 1`` reaches ``base``. Afterwards it follows a
    half-cosine from ``base`` (at ``step == warmup``) to ``final`` (at ``step == total``); steps
    past ``total`` stay at ``final``.
    """
    _check(step, total)
    if not 0 <= warmup <= total:
        raise ValueError(f"warmup steps must be in [0, total={total}], got {warmup}")
    if step < warmup:
        return base * (step + 1) / warmup
    if total == warmup:
        return base
    return _half_cosine((step - warmup) / (total - warmup), base, final)


def momentum_schedule(step: int, total: int, base: float, final: float = 1.0) -> float:
    """Teacher EMA momentum: half-cosine from ``base`` (step 0) to ``final`` (step ``total``)."""
    _check(step, total)
    if not 0.0 <= base <= 1.0 or not 0.0 <= final <= 1.0:
        raise ValueError(f"momentum base/final must be in [0, 1], got {base}, {final}")
    return _half_cosine(step / total, base, final)


def weight_decay_schedule(step: int, total: int, base: float, final: float | None = None) -> float:
    """Weight decay: half-cosine from ``base`` (step 0) to ``final`` (step ``total``).

    ``final=None`` keeps the weight decay constant at ``base``.
    """
    _check(step, total)
    if base < 0 or (final is not None and final < 0):
        raise ValueError(f"weight decay must be >= 0, got base={base}, final={final}")
    if final is None:
        return base
    return _half_cosine(step / total, base, final)
