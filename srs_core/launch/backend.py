"""What the launcher needs to know about one job kind: the small interface of a backend.

The watch/adopt/stream/fail/timeout/cancel/cleanup loop (:mod:`.client`) is written once
against this interface; a job kind is one module with one :class:`Backend` subclass, listed in
:data:`BACKENDS` by :func:`get_backend`. Statuses are mapped onto the neutral states below so
the loop never reads a kind's own condition names.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from srs_core.errors import ConfigError
from srs_core.launch.spec import JobSpec

# Neutral job states. Pending and Suspended have not started; Restarting is still running.
STATES = ("Pending", "Suspended", "Running", "Restarting", "Succeeded", "Failed")
# kind name -> "module:class"; adding a kind is one module plus one line here.
BACKENDS = {
    "pytorchjob": "srs_core.launch.pytorchjob:PyTorchJobBackend",
    "trainjob": "srs_core.launch.trainjob:TrainJobBackend",
}


@dataclass
class JobStatus:
    """A job's neutral state, with the reason and message of the condition behind it."""

    state: str
    reason: str = ""
    message: str = ""

    @classmethod
    def of(cls, state: str, condition: Mapping[str, Any] | None) -> JobStatus:
        condition = condition or {}
        return cls(state, condition.get("reason") or "", condition.get("message") or "")

    @property
    def started(self) -> bool:
        """Whether the job ever got past waiting for nodes or admission."""
        return self.state not in ("Pending", "Suspended")


class Backend(ABC):
    """One job kind: how to render it, where its API is, how to read its status and pods."""

    kind: str  # e.g. "PyTorchJob" (messages, kubectl hints)
    group: str
    version: str
    plural: str
    container: str  # the training container's name in every pod

    @abstractmethod
    def render(self, spec: JobSpec) -> dict[str, Any]:
        """The object to create, validated against the kind's CRD schema."""

    @abstractmethod
    def status(self, job: Mapping[str, Any]) -> JobStatus:
        """Map the object's ``status`` onto one of :data:`STATES`."""

    @abstractmethod
    def pod_selector(self, name: str) -> str:
        """Label selector of every pod of job ``name``."""

    @abstractmethod
    def rank0_selector(self, name: str) -> str:
        """Label selector of the pod running node rank 0 (whose log is streamed)."""

    def rank_of(self, pod: Any) -> str:
        """A short name of the pod's place in the job, for failure messages."""
        return ""

    @property
    def resource(self) -> str:
        """``plural.group``, as RBAC and kubectl name it."""
        return f"{self.plural}.{self.group}"


def get_backend(kind: str | Backend) -> Backend:
    """The backend of ``kind`` (``pytorchjob`` or ``trainjob``), or a Backend unchanged."""
    if isinstance(kind, Backend):
        return kind
    target = BACKENDS.get(kind)
    if target is None:
        raise ConfigError(f"job kind {kind!r}: use one of {', '.join(BACKENDS)}")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)()
