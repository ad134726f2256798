"""Mixed precision: which autocast dtype a ``precision`` setting means on a device."""

from __future__ import annotations

import contextlib

import torch

from srs_core.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype: ``auto`` is bf16 on GPU and full fp32 (None) elsewhere."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for the forward pass (a null context for fp32)."""
    dtype = resolve_precision(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def fp32_island(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device``'s type: inside, ops run in their inputs' dtype.

    For the numerically touchy parts of a bf16 step (losses, distillation targets): cast the
    inputs with ``.float()`` and compute inside; autocast would run a matmul there in bf16
    even on float32 inputs.
    """
    return torch.autocast(device_type=torch.device(device).type, enabled=False)
