"""Atomic checkpoints in the object store and resume from the latest one.

A checkpoint is written with ``torch.save`` through ``store.open_write``, so it appears whole
or not at all; the pointer object ``LATEST`` (the name of the newest checkpoint) is written
after it. Checkpoints are loaded with ``torch.load(weights_only=True)``: they may hold only
tensors and plain containers of numbers and strings (RNG states as tensors), never pickled
objects.
"""

from __future__ import annotations

import io
import logging
import pickle
from typing import Any

import torch

from srs_core import store
from srs_core.errors import StoreError

log = logging.getLogger(__name__)

POINTER = "LATEST"


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


class CheckpointManager:
    """Saves named checkpoints under ``root_uri`` and finds the newest one."""

    def __init__(self, root_uri: str) -> None:
        self.root = root_uri

    def uri(self, name: str) -> str:
        return store.join(self.root, name)

    def save(self, state: dict, name: str = "latest.pt") -> str:
        """Write ``state`` as ``<root>/<name>`` atomically, then point ``LATEST`` at it."""
        uri = self.uri(name)
        save_torch(state, uri)
        store.write_text(self.uri(POINTER), name + "\n")
        log.debug("checkpoint saved: %s", uri)
        return uri

    def latest_name(self) -> str | None:
        """Name of the newest complete checkpoint, or None when there is none."""
        pointer = self.uri(POINTER)
        if store.exists(pointer):
            name = store.read_text(pointer).strip()
            if name and store.exists(self.uri(name)):
                return name
        # A checkpoint written before its pointer (a kill between the two writes) still counts.
        return "latest.pt" if store.exists(self.uri("latest.pt")) else None

    def load(self, name: str, map_location: str | torch.device = "cpu") -> dict:
        return load_torch(self.uri(name), map_location)

    def latest(self, map_location: str | torch.device = "cpu") -> dict | None:
        """The newest checkpoint's state, or None to start from scratch."""
        name = self.latest_name()
        if name is None:
            return None
        log.info("resuming from %s", self.uri(name))
        return self.load(name, map_location)
