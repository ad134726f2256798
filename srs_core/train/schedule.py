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
    """Dialogs per optimizer step and the factor on the learning rates; says both."""
    batch = cfg.train.batch_size * world_size
    if cfg.train.global_batch_size and cfg.train.global_batch_size != batch:
        raise ConfigError(
            f"train.global_batch_size={cfg.train.global_batch_size} but this run has "
            f"{cfg.train.batch_size} dialogs x {world_size} processes = {batch}; change "
            "train.batch_size or the number of processes, or unset train.global_batch_size"
        )
    scale = lr_scale(batch, cfg.train.lr_scaling)
    if is_master:
        log.info("global batch %d (%d dialogs x %d processes); lr %.3g (%s scaling x%.3g)",
                 batch, cfg.train.batch_size, world_size, cfg.train.lr * scale,
                 cfg.train.lr_scaling, scale)
        if batch != PAPER_GLOBAL_BATCH:
            log.warning(
                "global batch %d differs from the paper's %d (2 GPUs x 4 dialogs at lr 1e-4): "
                "%.3gx the dialogs per step and %.3gx fewer steps; train.lr_scaling=%s",
                batch, PAPER_GLOBAL_BATCH, batch / PAPER_GLOBAL_BATCH,
                batch / PAPER_GLOBAL_BATCH, cfg.train.lr_scaling)
    return batch, scale


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
