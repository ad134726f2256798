"""Stream the rank-0 pod's log of a job into our log, across container and pod restarts."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

from srs_core.launch.pytorchjob import CONTAINER, JOB_NAME_LABEL, JOB_ROLE_LABEL

log = logging.getLogger(__name__)


def list_limits(request_timeout: float) -> dict[str, Any]:
    """Keyword arguments that bound a CoreV1Api list call: on the server and on our socket."""
    return {"timeout_seconds": math.ceil(request_timeout),
            "_request_timeout": (request_timeout, request_timeout)}


class LogFollower(threading.Thread):
    """Streams the rank-0 pod's container log into our log; survives container restarts and
    replaced pods (a JobSet restart makes new pods: the newest one matching is followed).

    The pod-log API has no server-side timeout, so a read timeout of ``idle_timeout`` stands in:
    a stream silent that long (perhaps dropped without a FIN) is re-opened, and the re-read
    skips the lines already logged.
    """

    def __init__(self, core: Any, name: str, namespace: str, poll: float, tail: int = 30, *,
                 request_timeout: float = 30.0, idle_timeout: float = 300.0,
                 selector: str | None = None, container: str = CONTAINER):
        super().__init__(name=f"logs-{name}", daemon=True)
        self.core, self.job, self.namespace, self.poll = core, name, namespace, poll
        self.request_timeout, self.idle_timeout = request_timeout, idle_timeout
        self.selector = selector or f"{JOB_NAME_LABEL}={name},{JOB_ROLE_LABEL}=master"
        self.container = container
        self.tail: deque[str] = deque(maxlen=tail)
        self.stopping = threading.Event()
        self._response: Any = None
        self._emitted: dict[tuple[str, int], int] = {}  # (pod uid, restarts) -> lines logged

    def _master_pod(self) -> Any:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector,
                                             **list_limits(self.request_timeout)).items
        # After a restart of the whole group the old pod may linger: follow the newest.
        return max(pods, key=lambda p: str(p.metadata.creation_timestamp or "")) if pods else None

    def _container(self, pod: Any) -> tuple[int, bool]:
        for status in pod.status.container_statuses or []:
            if status.name == self.container:
                return status.restart_count or 0, bool(status.state and status.state.running)
        return 0, False

    def _lines(self, pod_name: str) -> Iterator[str]:
        self._response = self.core.read_namespaced_pod_log(
            pod_name, self.namespace, container=self.container, follow=True, _preload_content=False,
            _request_timeout=(self.request_timeout, self.idle_timeout))
        pending = b""
        try:
            for chunk in self._response.stream(1024, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", errors="replace").rstrip("\r")
            if pending:
                yield pending.decode("utf-8", errors="replace")
        finally:
            self._response.release_conn()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._follow_once()
            except Exception as exc:  # a log stream must never fail the job watch
                log.debug("log stream of %s interrupted: %s", self.job, exc)
            self.stopping.wait(self.poll)

    def _follow_once(self) -> None:
        pod = self._master_pod()
        if pod is None or pod.status is None or pod.status.phase == "Pending":
            return
        restarts, running = self._container(pod)
        key = (pod.metadata.uid or pod.metadata.name, restarts)
        if key in self._emitted and not running:
            return  # this container's log was read to its end; wait for a restart
        # A dropped connection re-reads the container's log: skip what was already logged.
        skip = self._emitted.get(key, 0)
        for count, line in enumerate(self._lines(pod.metadata.name), start=1):
            if count > skip:
                log.info("[%s] %s", pod.metadata.name, line)
                self.tail.append(line)
            self._emitted[key] = max(skip, count)
        self._emitted.setdefault(key, 0)

    def stop(self, drain: float) -> None:
        """Let the current stream finish for up to ``drain`` seconds, then cut it.

        Returns within about ``drain`` seconds: a thread still inside a request (a hung API
        server) is left behind, a daemon that ends with that request's timeout.
        """
        self.stopping.set()
        self.join(drain)
        if self.is_alive() and self._response is not None:
            with contextlib.suppress(Exception):  # closing from another thread: best effort
                self._response.close()
            self.join(min(drain, 1.0))
