"""The selector's learning rate against its batch: scaling to the global batch of a run.

The schedule itself (:class:`srs_core.runtime.schedule.PositionSchedule`) knows nothing of
the paper's batch; this module does.
"""

from __future__ import annotations

import logging
import math

import torch

from srs_core.config import Config
from srs_core.errors import ConfigError
from srs_core.runtime.schedule import PositionSchedule

log = logging.getLogger(__name__)

LR_SCALINGS = ("none", "linear", "sqrt")
PAPER_GLOBAL_BATCH = 8  # 2 GPUs x 4 dialogs (configs/SRS.yaml, train.sh)


def lr_scale(global_batch: int, scaling: str) -> float:
    """Factor on every learning rate of the schedule for ``global_batch`` dialogs per step,
    relative to the paper's 8 (``none``: 1; ``linear``: batch/8; ``sqrt``: sqrt(batch/8))."""
    if scaling not in LR_SCALINGS:
        raise ValueError(f"lr scaling {scaling!r} is not one of {LR_SCALINGS}")
    ratio = global_batch / PAPER_GLOBAL_BATCH
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[scaling]


def global_batch(cfg: Config, world_size: int, is_master: bool) -> tuple[int, float]:
    """Dialogs per optimizer step (``batch_size x processes x grad_accumulation``) and the
    factor on the learning rates; says both."""
    t = cfg.train
    per_micro_batch = t.batch_size * world_size
    batch = per_micro_batch * t.grad_accumulation
    if t.global_batch_size and t.global_batch_size != batch:
        accumulated = f" x {t.grad_accumulation} micro-batches" if t.grad_accumulation > 1 else ""
        raise ConfigError(
            f"train.global_batch_size={t.global_batch_size} but this run has {t.batch_size} "
            f"dialogs x {world_size} processes{accumulated} = {batch}; "
            f"{_batch_fix(t.global_batch_size, per_micro_batch)}"
        )
    scale = lr_scale(batch, t.lr_scaling)
    if is_master:
        log.info("global batch %d (%d dialogs x %d processes x %d micro-batches); lr %.3g "
                 "(%s scaling x%.3g)", batch, t.batch_size, world_size, t.grad_accumulation,
                 t.lr * scale, t.lr_scaling, scale)
        if batch != PAPER_GLOBAL_BATCH:
            log.warning(
                "global batch %d differs from the paper's %d (2 GPUs x 4 dialogs at lr 1e-4): "
                "%.3gx the dialogs per step and %.3gx fewer steps; train.lr_scaling=%s",
                batch, PAPER_GLOBAL_BATCH, batch / PAPER_GLOBAL_BATCH,
                batch / PAPER_GLOBAL_BATCH, t.lr_scaling)
    return batch, scale


def _batch_fix(wanted: int, per_micro_batch: int) -> str:
    """How to reach ``wanted`` dialogs per step from ``per_micro_batch`` per micro-batch."""
    if wanted % per_micro_batch == 0:
        return (f"set train.grad_accumulation={wanted // per_micro_batch} to keep "
                f"train.batch_size, or change train.batch_size or the number of processes")
    return ("change train.batch_size, train.grad_accumulation or the number of processes, or "
            "unset train.global_batch_size")


def selector_schedule(cfg: Config, optimizer: torch.optim.Optimizer, scale: float,
                      steps_per_epoch: int, total_steps: int) -> PositionSchedule:
    """``train.lr_schedule`` with every rate of ``train`` times ``scale``."""
    t = cfg.train
    return PositionSchedule(
        optimizer, t.lr_schedule, lr=t.lr * scale, min_lr=t.min_lr * scale,
        warmup_lr=t.warmup_lr * scale, epochs=t.epochs, warmup_epochs=t.warmup_epochs,
        steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        warmup_step_iterations=t.warmup_step_iterations,
    )
