"""The scaffold every trainer shares: where a run stands, its lock, DDP, AdamW, resume,
checkpoints and master-only validation that keeps the best model.

A trainer reads top-down with these (torchtitan style)::

    with run_lock(dist, output, "srs train"):
        model = ...; trained = wrap_ddp(model, dist)
        optimizer = build_optimizer(groups, lr)
        state = MyState()
        resume(checkpoints, state, model=model, optimizer=optimizer)
        while state.epoch < epochs:
            ...one step after another...
            metrics, best = keep_best(dist.is_master, best, validate, "accuracy", save_best)
            save_checkpoint(checkpoints, state, model=model, optimizer=optimizer)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol

import torch

from srs_core.errors import ConfigError
from srs_core.runlock import RunLock
from srs_core.runtime.checkpoint import CheckpointManager
from srs_core.runtime.distributed import DistInfo

log = logging.getLogger(__name__)


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class TrainState:
    """Where a run stands besides its weights and optimizer.

    A trainer subclasses it with its fields (step, epoch, position in the epoch, best metric,
    RNG states...); the field names *are* the keys of its checkpoint, so a ``latest.pt`` is
    one flat dict and this class needs no per-trainer code. Fields named in ``optional`` may
    be absent from older checkpoints (they keep their initial value).
    """

    optional: ClassVar[frozenset[str]] = frozenset()

    def state_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for f in fields(self):
            if f.name in state or f.name not in self.optional:
                setattr(self, f.name, state[f.name])


@contextlib.contextmanager
def run_lock(dist: DistInfo, output: str, program: str) -> Iterator[None]:
    """Rank 0 holds ``output``'s run lock (:mod:`srs_core.runlock`) for the whole run: a second
    run on the same output is refused before any work."""
    with RunLock(output, program) if dist.is_master else contextlib.nullcontext():
        yield


def wrap_ddp(model: torch.nn.Module, dist: DistInfo,
             find_unused_parameters: bool = False) -> torch.nn.Module:
    """The module to train: ``model`` in DistributedDataParallel when the job has several
    processes, ``model`` itself alone. Both share the parameters: save and evaluate ``model``."""
    if dist.world_size == 1:
        return model
    device = dist.device
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


def compile_module(module: torch.nn.Module, mode: str = "none",
                   backend: str = "inductor") -> torch.nn.Module:
    """``module`` through ``torch.compile`` (``mode`` ``none``: ``module`` itself).

    Compile *after* DDP wrapping, as PyTorch recommends: Dynamo's DDPOptimizer then splits
    the graph at the gradient buckets, so the all-reduce still overlaps the backward pass. The
    wrapper shares the parameters; checkpoints and evaluation keep the bare model
    (``srs_core.model.selector.unwrap`` knows ``_orig_mod``). The modes are inductor's; other
    backends (``aot_eager``: no C++ compiler needed) compile with their defaults.
    """
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile mode {mode!r} is not one of {', '.join(COMPILE_MODES)}")
    if mode == "none":
        return module
    options = {"mode": mode} if backend == "inductor" else {}
    return torch.compile(module, backend=backend, **options)


def gradient_sync(trained: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Where gradient accumulation runs a micro-batch: DDP's ``no_sync()`` unless ``sync`` (the
    last micro-batch of a step all-reduces the accumulated gradients); a no-op without DDP.
    Forward and backward both belong inside. Looks through a ``torch.compile`` wrapper."""
    module = trained
    while not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        module = getattr(module, "_orig_mod", None)
        if module is None:
            return contextlib.nullcontext()
    return contextlib.nullcontext() if sync else module.no_sync()


def build_optimizer(param_groups: list[dict], lr: float) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` (each group carries its weight decay)."""
    return torch.optim.AdamW(param_groups, lr=lr)


def resume(checkpoints: CheckpointManager, state: TrainState,
           **components: Stateful) -> bool:
    """Load the newest checkpoint into ``state`` and each component (``model=``,
    ``optimizer=``, ...: the keyword is its checkpoint key); False when there is none."""
    saved = checkpoints.latest()
    if saved is None:
        return False
    for key, component in components.items():
        component.load_state_dict(saved[key])
    state.load_state_dict(saved)
    return True


def save_checkpoint(checkpoints: CheckpointManager, state: TrainState, name: str = "latest.pt",
                    **components: Stateful) -> str:
    """Write the components' state dicts (by keyword) and ``state``'s fields as ``name``."""
    payload = {key: component.state_dict() for key, component in components.items()}
    return checkpoints.save({**payload, **state.state_dict()}, name)


def keep_best(
    is_master: bool, best: float, validate: Callable[[], dict[str, Any]], metric: str,
    save_best: Callable[[dict[str, Any]], None],
) -> tuple[dict[str, Any] | None, float]:
    """Validate on rank 0 only; a ``metrics[metric]`` above ``best`` is saved with
    ``save_best(metrics)``. Returns the metrics (None on other ranks) and the best value."""
    if not is_master:
        return None, best
    metrics = validate()
    if metrics[metric] > best:
        best = metrics[metric]
        save_best(metrics)
    return metrics, best


def rng_state(device: torch.device, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """This rank's random state: the global CPU (and CUDA) RNG and ``generator``."""
    state = {"cpu": torch.get_rng_state(), "mining": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).cpu()
    return state


def restore_rng(saved: list[dict], rank: int, device: torch.device,
                generator: torch.Generator) -> None:
    """Restore this rank's :func:`rng_state` from every rank's (in rank order); a job resumed
    on another world size keeps fresh seeds for the ranks it did not have."""
    if rank >= len(saved):
        log.warning("checkpoint has RNG states of %d ranks; rank %d keeps its seed", len(saved),
                    rank)
        return
    torch.set_rng_state(saved[rank]["cpu"])
    generator.set_state(saved[rank]["mining"])
    if device.type == "cuda" and "cuda" in saved[rank]:
        torch.cuda.set_rng_state(saved[rank]["cuda"], device)
