"""The one place that picks this process's device (and the memory layout of convolutions)."""

from __future__ import annotations

import torch


def select_device(local_rank: int = 0) -> torch.device:
    """``cuda:<local_rank>`` when a GPU is visible (made the current device), else the CPU."""
    if torch.cuda.is_available():
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def memory_format_for(device: torch.device | str, choice: str = "auto") -> torch.memory_format:
    """The layout of a convolutional network's weights and images on ``device``.

    ``auto``: channels-last on CUDA (cuDNN's tensor-core convolutions read NHWC without
    transposing), contiguous NCHW elsewhere; ``channels_last`` / ``contiguous`` force one.
    """
    if choice not in MEMORY_FORMATS:
        raise ValueError(f"memory format {choice!r} is not one of {MEMORY_FORMATS}")
    if choice == "channels_last" or (choice == "auto" and torch.device(device).type == "cuda"):
        return torch.channels_last
    return torch.contiguous_format
