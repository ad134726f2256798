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
