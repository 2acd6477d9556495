"""Learning-rate schedules per optimizer step: warmup, then multistep, cosine or constant.

The paper protocol (`Sparser, Better, Deeper, Stronger: Improving Static Sparse Training with
Exact Orthogonal Initialization` - Nowak et al. (2024), arXiv 2406.01755) multiplies the
learning rate by 0.1 at 50% and 75% of the epochs (``multistep``).

Example:
    >>> scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(
    ...     steps_per_epoch=100, epochs=20, schedule="multistep"))
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["lr_factor", "LRSchedule"]


def lr_factor(step: int, *, steps_per_epoch: int, epochs: int, schedule: str,
              milestones: Iterable[float] = (0.5, 0.75), lr_decay: float = 0.1,
              warmup_epochs: float = 0.0) -> float:
    """Return the learning-rate multiplier for optimizer step ``step`` (0-based).

    warmup (linear, ``(step + 1) / warmup_steps``) for ``round(warmup_epochs * steps_per_epoch)``
    steps, then:
    - ``multistep``: ``lr_decay ** #{m : epoch >= round(m * epochs)}`` with ``epoch = step //
      steps_per_epoch`` (paper: x0.1 at 50% and 75% of the epochs);
    - ``cosine``: ``(1 + cos(pi * t)) / 2``, ``t`` = fraction of the post-warmup steps done;
    - ``constant``: 1.

    Raises:
        ValueError: an unknown schedule name.

    Example:
        >>> lr_factor(50, steps_per_epoch=1, epochs=100, schedule="multistep")
        0.1
    """
    warmup = round(warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "multistep":
        epoch = step // steps_per_epoch
        return lr_decay ** sum(epoch >= round(m * epochs) for m in milestones)
    if schedule == "cosine":
        total = epochs * steps_per_epoch
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"schedule={schedule!r} must be one of: multistep, cosine, constant")


class LRSchedule:
    """:func:`lr_factor` as a ``LambdaLR`` lambda: a plain object, so ``LambdaLR.state_dict()``
    holds only plain values (checkpoints load with ``weights_only=True``)."""

    def __init__(self, **kw: Any) -> None:
        self.kw = kw

    def __call__(self, step: int) -> float:
        return lr_factor(step, **self.kw)
