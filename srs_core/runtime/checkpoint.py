"""Atomic checkpoints in the object store, the last few kept, and resume from the newest
one that loads.

A checkpoint is written with ``torch.save`` through ``store.open_write``, so it appears whole
or not at all, as ``ckpt-<step>.pt``; the pointer object ``LATEST`` (the name of the newest
checkpoint, for people and tools; a resume goes by the step numbers) is written after it, then
the checkpoints beyond the newest ``keep`` are deleted. A resume tries the newest first and
falls back to the next one that loads, with a warning (a file damaged after it was written,
e.g. by a full disk or a copy). ``latest.pt``, the single checkpoint of earlier versions, is
still read, as the oldest. Checkpoints are loaded with ``torch.load(weights_only=True)``: they
may hold only tensors and plain containers of numbers and strings (RNG states as tensors),
never pickled objects.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
from typing import Any

import torch

from srs_core import store
from srs_core.errors import StoreError
from srs_core.store.local import TMP_MARK

log = logging.getLogger(__name__)

POINTER = "LATEST"
LEGACY_NAME = "latest.pt"  # the one checkpoint of earlier versions
_STEP_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


def save_torch(obj: Any, uri: str) -> None:
    """``torch.save`` to any store URI, atomically."""
    with store.open_write(uri) as handle:
        torch.save(obj, handle)


def load_torch(uri: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` from any store URI (S3 bodies are not seekable)."""
    path = store.local_path(uri)
    try:
        if path is not None:
            if not path.is_file():
                store.size(uri)  # raises StoreNotFound with the store's message
            return torch.load(path, map_location=map_location, weights_only=True)
        buffer = io.BytesIO(store.read_bytes(uri))
        return torch.load(buffer, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        # UnpicklingError: a pickled object refused by weights_only; RuntimeError: not a zip
        raise StoreError(
            f"{uri}: cannot be loaded as a weights-only torch checkpoint "
            f"({type(exc).__name__}): it is corrupt or truncated, or holds pickled objects "
            "(only tensors and plain containers are accepted); re-create it"
        ) from None


def checkpoint_name(step: int) -> str:
    """``ckpt-<step>.pt``, zero-padded so that names sort by step."""
    return f"ckpt-{step:09d}.pt"


class CheckpointManager:
    """Saves step-numbered checkpoints under ``root_uri``, keeps the newest ``keep`` of them,
    and loads the newest one that loads."""

    def __init__(self, root_uri: str, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.root, self.keep = root_uri, keep
        self.unloadable: set[str] = set()  # found by latest(); deleted by the next save()

    def uri(self, name: str) -> str:
        return store.join(self.root, name)

    def save(self, state: dict, step: int) -> str:
        """Write ``state`` as ``ckpt-<step>.pt`` atomically, point ``LATEST`` at it, then delete
        those of later steps or found unloadable, and those beyond the newest ``keep``."""
        name = checkpoint_name(step)
        uri = self.uri(name)
        save_torch(state, uri)
        store.write_text(self.uri(POINTER), name + "\n")
        # A checkpoint of a later step belongs to a schedule this run replaced (a restarted
        # schedule): it must never be resumed instead of this one. One that did not load
        # counts for nothing.
        names = self.names()
        dropped = [old for old in names if _step_of(old) > step or old in self.unloadable]
        kept = [old for old in names if old not in dropped]
        for old in dropped + kept[self.keep:]:
            store.delete(self.uri(old))
        self.unloadable.clear()
        log.debug("checkpoint saved: %s", uri)
        return uri

    def names(self) -> list[str]:
        """Checkpoints present, newest first (the legacy ``latest.pt`` last)."""
        if not self._exists():
            return []
        stepped = []
        for info in store.list_objects(self.root, recursive=False):
            match = _STEP_NAME.match(info.relpath)
            if match:
                stepped.append((int(match.group(1)), info.relpath))
        names = [name for _, name in sorted(stepped, reverse=True)]
        if store.exists(self.uri(LEGACY_NAME)):
            names.append(LEGACY_NAME)
        return names

    def _exists(self) -> bool:
        path = store.local_path(self.root)
        return path.is_dir() if path is not None else True

    def latest_name(self) -> str | None:
        """Name of the newest checkpoint present (loadable or not), or None when there is none."""
        names = self.names()
        return names[0] if names else None

    def load(self, name: str, map_location: str | torch.device = "cpu") -> dict:
        return load_torch(self.uri(name), map_location)

    def latest(self, map_location: str | torch.device = "cpu") -> tuple[str, dict] | None:
        """The newest checkpoint that loads, as ``(name, state)``, or None to start from
        scratch; one that does not load is skipped with a warning naming it."""
        failures = []
        for name in self.names():
            try:
                state = self.load(name, map_location)
            except StoreError as exc:
                failures.append(str(exc))
                self.unloadable.add(name)
                log.warning("checkpoint %s does not load; trying the one before it (%s)",
                            self.uri(name), exc)
                continue
            if failures:
                log.warning("resuming from the older checkpoint %s: %d newer one(s) do not load",
                            self.uri(name), len(failures))
            else:
                log.info("resuming from %s", self.uri(name))
            return name, state
        if failures:
            raise StoreError(f"{self.root}: no checkpoint loads ({len(failures)} tried; newest: "
                             f"{failures[0]}); move the checkpoints away to start afresh")
        return None

    def remove_stale_temporaries(self) -> list[str]:
        """Delete the temporary files that killed writers left in a local checkpoint directory.

        Call it only while holding the output's run lock: then no other writer is alive, so
        every temporary file there is stale. Returns the names removed."""
        path = store.local_path(self.root)
        if path is None or not path.is_dir():
            return []  # an S3 upload is staged elsewhere and appears whole or not at all
        removed = []
        for stale in sorted(path.glob(f".*{TMP_MARK}*")):
            if stale.is_file():
                stale.unlink(missing_ok=True)
                removed.append(stale.name)
        if removed:
            log.warning("removed %d temporary file(s) of interrupted checkpoint writes in %s: %s",
                        len(removed), self.root, ", ".join(removed))
        return removed


def _step_of(name: str) -> int:
    match = _STEP_NAME.match(name)
    return int(match.group(1)) if match else -1
