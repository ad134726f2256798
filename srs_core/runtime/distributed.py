"""Process-group setup and collectives shared by every training program.

Under ``torchrun`` (or a PyTorchJob pod) the environment names this process's place in the
job (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); alone, the
process is rank 0 of 1 and no process group is created.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from srs_core.errors import ConfigError
from srs_core.process import die_with_parent, keep_freed_memory
from srs_core.runtime.device import select_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_master: bool


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed() -> DistInfo:
    """Join the torchrun job described by the environment (NCCL on GPU, gloo on CPU).

    Safe to call more than once; a single process gets rank 0 of 1 without a process group.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun worker: never outlive the agent
        die_with_parent()
    keep_freed_memory()  # a training process: its steps free and allocate the same tensors
    device = select_device(local_rank)
    if world_size > 1 and not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        torch_dist.init_process_group(backend=backend, init_method="env://", rank=rank,
                                      world_size=world_size, **kwargs)
        log.info("joined process group: rank %d of %d (%s, %s)", rank, world_size, backend,
                 device)
    return DistInfo(rank, world_size, local_rank, device, rank == 0)


def is_distributed() -> bool:
    """True when a process group with more than one process is active."""
    return torch_dist.is_available() and torch_dist.is_initialized() and (
        torch_dist.get_world_size() > 1
    )


def barrier() -> None:
    """Wait for every rank (no-op alone)."""
    if is_distributed():
        torch_dist.barrier()


def all_gather_objects(value: object) -> list:
    """``value`` of every rank, in rank order (``[value]`` alone); every rank must call it."""
    if not is_distributed():
        return [value]
    gathered: list = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(gathered, value)
    return gathered


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op alone); returns it."""
    if is_distributed():
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


_flag_group: torch_dist.ProcessGroup | None = None  # gloo: flags travel without a device sync


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any (False/True alone); every rank must
    call it. A 1-element CPU all-reduce over gloo, so a GPU job does not wait for its device."""
    if not is_distributed():
        return flag
    global _flag_group
    if _flag_group is None:
        gloo = torch_dist.get_backend() == "gloo"
        _flag_group = torch_dist.group.WORLD if gloo else torch_dist.new_group(backend="gloo")
    value = torch.tensor([int(flag)], dtype=torch.int32)
    torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX, group=_flag_group)
    return bool(value.item())
