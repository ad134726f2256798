"""Learning-rate schedules: linear warm-up, then cosine decay to a floor.

:func:`cosine_with_warmup` is a per-step ``LambdaLR``; :class:`PositionSchedule` sets the rate
from the position in training alone (timm's epoch-wise cosine, or per step).
"""

from __future__ import annotations

import math

import torch


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: ``lr * (step+1)/warmup`` for ``warmup`` steps, then cosine to
    ``lr * min_lr_ratio`` at ``total_steps`` (and flat after it). Call ``step()`` per batch."""
    warmup_steps = max(0, int(warmup_steps))
    total_steps = max(1, int(total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps  # never 0: the first step already learns
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


SCHEDULES = ("paper", "cosine_per_step")


class PositionSchedule:
    """The learning rate as a pure function of the position in training.

    Nothing to save or restore: a resumed run sets the same rate for the same (epoch,
    iteration, step) as an uninterrupted one.

    ``paper`` reproduces the SRS authors' use of timm's epoch-wise ``CosineLRScheduler``
    (``t_initial`` = epochs, ``warmup_t`` = warm-up epochs, ``warmup_prefix``, one cycle):
    in epoch 0 the scheduler is stepped to ``t = i // warmup_step_iterations`` *after*
    optimizer step ``i`` for ``i <= warmup_epochs * warmup_step_iterations``, and at the end
    of epoch ``e`` to ``t = e + warmup_epochs + 1``. With the paper's numbers: ``warmup_lr``
    for iterations 0-100 of epoch 0, ``lr`` for the rest of it, then one cosine value per
    epoch (9.14e-5, 6.89e-5, 4.11e-5, 1.86e-5 for epochs 1-4).

    ``cosine_per_step``: linear warm-up over ``warmup_epochs`` of steps, then cosine to
    ``min_lr`` at the last step, updated every step.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        kind: str,
        *,
        lr: float,
        min_lr: float,
        warmup_lr: float,
        epochs: int,
        warmup_epochs: float,
        steps_per_epoch: int,
        total_steps: int,
        warmup_step_iterations: int = 100,
    ) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"lr schedule {kind!r} is not one of {SCHEDULES}")
        self.optimizer, self.kind = optimizer, kind
        self.lr, self.min_lr, self.warmup_epochs = lr, min_lr, warmup_epochs
        self.warmup_steps = int(warmup_epochs * steps_per_epoch)
        self.total_steps = max(1, total_steps)
        self.warmup_step_iterations = max(1, warmup_step_iterations)
        for group in optimizer.param_groups:
            group["lr"] = lr
        self._timm = None
        if kind == "paper":
            from timm.scheduler import CosineLRScheduler

            for group in optimizer.param_groups:
                group.pop("initial_lr", None)
            self._timm = CosineLRScheduler(
                optimizer, t_initial=epochs, lr_min=min_lr, warmup_t=warmup_epochs,
                warmup_lr_init=warmup_lr, warmup_prefix=True, cycle_limit=1, t_in_epochs=True,
            )

    def _paper_t(self, epoch: int, iteration: int) -> float:
        if epoch > 0:
            return epoch + self.warmup_epochs
        if iteration == 0:
            return 0  # the rate the scheduler set at construction: warmup_lr
        last_call = int(self.warmup_epochs * self.warmup_step_iterations)
        last_call -= last_call % self.warmup_step_iterations
        stepped_at = min(iteration - 1, last_call)
        return stepped_at // self.warmup_step_iterations

    def _per_step_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = self.min_lr / self.lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self, epoch: int, iteration: int, step: int) -> float:
        """Set the rate of optimizer step ``step`` (iteration ``iteration`` of ``epoch``)."""
        if self._timm is not None:
            self._timm.step(self._paper_t(epoch, iteration))
        else:
            value = self.lr * self._per_step_factor(step)
            for group in self.optimizer.param_groups:
                group["lr"] = value
        return float(self.optimizer.param_groups[0]["lr"])
