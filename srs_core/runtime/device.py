"""The one place that picks this process's device."""

from __future__ import annotations

import torch


def select_device(local_rank: int = 0) -> torch.device:
    """``cuda:<local_rank>`` when a GPU is visible (made the current device), else the CPU."""
    if torch.cuda.is_available():
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")
