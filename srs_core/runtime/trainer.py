"""The scaffold every trainer shares: where a run stands, its lock, DDP, AdamW, resume,
checkpoints and master-only validation that keeps the best model.

A trainer reads top-down with these (torchtitan style)::

    with run_lock(dist, output, "srs train"):
        model = ...; trained = wrap_ddp(model, dist)
        optimizer = build_optimizer(groups, lr)
        state, checkpoints = MyState(), open_checkpoints(dist, uri, settings, keep)
        resume(checkpoints, state, model=model, optimizer=optimizer)
        with StopRequest().installed() as stop:
            while state.epoch < epochs:
                ...one step after another; stop.agreed(): checkpoint, raise Preempted...
                metrics, best = keep_best(dist.is_master, best, validate, "accuracy", save_best)
                save_checkpoint(checkpoints, state, step, model=model, optimizer=optimizer)
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol

import torch

from srs_core.errors import ConfigError, SrsError
from srs_core.runlock import RunLock
from srs_core.runtime.checkpoint import CheckpointManager
from srs_core.runtime.distributed import DistInfo, any_rank

log = logging.getLogger(__name__)


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class TrainState:
    """Where a run stands besides its weights and optimizer.

    A trainer subclasses it with its fields (step, epoch, position in the epoch, best metric,
    RNG states...); the field names *are* the keys of its checkpoint, so a checkpoint is
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


SETTINGS_KEY = "settings"  # a checkpoint's record of the run settings it belongs to
ON_SETTINGS_CHANGE = ("refuse", "restart_schedule")
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: the exit code of a process that SIGTERM ended


def changed_settings(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key old -> new`` for every setting that differs (one absent on a side shows as
    ``(none)``), in key order."""
    missing = "(none)"
    return [f"{key} {saved.get(key, missing)!r} -> {current.get(key, missing)!r}"
            for key in sorted(set(saved) | set(current))
            if saved.get(key, missing) != current.get(key, missing)]


@dataclass
class RunCheckpoints:
    """A run's checkpoints, the settings that define its data order and optimisation (flat,
    plain values: every checkpoint records them, a resume compares them) and what a resume
    does when they differ (one of :data:`ON_SETTINGS_CHANGE`)."""

    manager: CheckpointManager
    settings: dict[str, Any]
    on_change: str = "refuse"


def open_checkpoints(dist: DistInfo, root_uri: str, settings: Mapping[str, Any], keep: int = 2,
                     on_change: str = "refuse") -> RunCheckpoints:
    """The run's checkpoints under ``root_uri`` (``settings`` plus the number of processes);
    rank 0, which holds the run lock, first deletes the temporary files of checkpoint writes
    that a kill interrupted (no other writer can be alive)."""
    if on_change not in ON_SETTINGS_CHANGE:
        raise ConfigError(f"on_change {on_change!r} is not one of {', '.join(ON_SETTINGS_CHANGE)}")
    manager = CheckpointManager(root_uri, keep)
    if dist.is_master:
        manager.remove_stale_temporaries()
    return RunCheckpoints(manager, {**settings, "world_size": dist.world_size}, on_change)


def resume(checkpoints: RunCheckpoints, state: TrainState, **components: Stateful) -> bool:
    """Load the newest checkpoint into ``state`` and each component (``model=``,
    ``optimizer=``, ...: the keyword is its checkpoint key); False when there is none.

    A checkpoint recorded with other settings is refused (:class:`ConfigError` naming each
    change) unless ``on_change`` is ``restart_schedule``: then only its ``model`` weights are
    loaded, ``state`` and the other components stay fresh (a new schedule from step 0), and
    False is returned. A checkpoint of an earlier version, which recorded no settings, is
    resumed with a warning.
    """
    found = checkpoints.manager.latest()
    if found is None:
        return False
    name, saved = found
    uri = checkpoints.manager.uri(name)
    if SETTINGS_KEY not in saved:
        log.warning("%s records no run settings (written by an earlier version): resuming "
                    "without checking that they are unchanged", uri)
    elif changes := changed_settings(saved[SETTINGS_KEY], checkpoints.settings):
        if checkpoints.on_change != "restart_schedule":
            raise ConfigError(
                f"{uri} belongs to a run with other settings: {'; '.join(changes)}; rerun "
                "with the checkpoint's settings, choose another output, or pass "
                "--restart-schedule (train.on_settings_change=restart_schedule) to start a "
                "new schedule from its weights")
        log.warning("RESTARTING THE SCHEDULE: %s has other settings (%s); loading its model "
                    "weights only, starting at step 0 with a fresh optimizer "
                    "(train.on_settings_change=restart_schedule)", uri, "; ".join(changes))
        components["model"].load_state_dict(saved["model"])
        return False
    for key, component in components.items():
        component.load_state_dict(saved[key])
    state.load_state_dict(saved)
    return True


def save_checkpoint(checkpoints: RunCheckpoints, state: TrainState, step: int,
                    **components: Stateful) -> str:
    """Write the components' state dicts (by keyword), ``state``'s fields and the run's
    settings as the checkpoint of ``step``."""
    payload = {key: component.state_dict() for key, component in components.items()}
    return checkpoints.manager.save(
        {**payload, **state.state_dict(), SETTINGS_KEY: checkpoints.settings}, step)


class Preempted(SrsError):
    """The run stopped on SIGTERM at a step boundary, after a checkpoint; rerun to resume."""


class StopRequest:
    """SIGTERM (a preempted node, a deleted pod, torchrun passing it on) asks the run to stop
    at the next step boundary instead of ending it at once. Further SIGTERMs change nothing
    (a signal to a torchrun process group reaches a worker twice: directly and passed on);
    SIGKILL, after the grace period, or SIGINT end it at once.

    :meth:`agreed` is a collective every rank calls after each step: True on every rank
    when any rank was signalled, so that all of them checkpoint the same step and stop.
    """

    def __init__(self) -> None:
        self.signalled = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Catch SIGTERM inside the block (main thread only: elsewhere it keeps its default)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous is None:  # set outside Python: restore the default
            previous = signal.SIG_DFL

        def handler(signum: int, frame: object) -> None:
            self.signalled = True

        signal.signal(signal.SIGTERM, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    def agreed(self) -> bool:
        return any_rank(self.signalled)


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
