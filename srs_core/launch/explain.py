"""Why a job ended badly, in words a person can act on: the job's condition, every failed
rank's exit code and last lines, the Warning events, and what to run next.

Best effort like the pending diagnosis: reading pods or events may fail, and that must not
hide the failure itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from srs_core.launch.backend import Backend, JobStatus
from srs_core.launch.diagnose import ours
from srs_core.launch.logs import list_limits

log = logging.getLogger(__name__)


def _job_name(job: dict[str, Any]) -> tuple[str, str]:
    meta = job.get("metadata", {})
    return meta.get("name"), meta.get("namespace")


def pending_detail(kind: str, job: dict[str, Any], status: JobStatus, reasons: list[str],
                   pending_timeout: float) -> str:
    """Why a job that never started was given up after ``pending_timeout`` seconds."""
    name, namespace = _job_name(job)
    why = f" ({status.reason}: {status.message})" if status.reason else ""
    lines = [f"{kind} {namespace}/{name} did not start within "
             f"{pending_timeout:g}s (pending_timeout); it is {status.state}{why}"]
    lines += [f"  {line}" for line in reasons] or [
        "  the cluster gave no reason (no Warning event, no unschedulable pod)"]
    lines.append(f"  inspect: kubectl -n {namespace} describe {kind.lower()} {name}")
    return "\n".join(lines)


def explain_failure(core: Any, backend: Backend, job: dict[str, Any], request_timeout: float,
                    master_tail: Iterable[str] = ()) -> str:
    """The failed job's condition, its failed pods, its last Warning events and the last
    lines of the rank-0 log (``master_tail``), ending with the command to look further."""
    name, namespace = _job_name(job)
    kind = backend.kind
    status = backend.status(job)
    lines = [f"{kind} {namespace}/{name} failed"
             + (f": {status.reason}: {status.message}" if status.reason else "")]
    try:
        pods = core.list_namespaced_pod(
            namespace, label_selector=backend.pod_selector(name),
            **list_limits(request_timeout)).items
        for pod in pods:
            lines += failed_pod(core, backend, pod, namespace, request_timeout)
        lines += _warning_events(core, name, namespace, request_timeout)
    except Exception as exc:  # diagnostics must not hide the failure itself
        lines.append(f"  (could not read pods/events: {exc})")
    tail = list(master_tail)
    if tail:
        lines.append("  last master log lines:")
        lines.extend(f"    {line}" for line in tail[-10:])
    lines.append(f"  inspect: kubectl -n {namespace} describe {kind.lower()} {name}")
    return "\n".join(lines)


def _warning_events(core: Any, name: str, namespace: str, request_timeout: float,
                    last: int = 5) -> list[str]:
    events = core.list_namespaced_event(namespace, field_selector="type=Warning",
                                        **list_limits(request_timeout))
    found = [e for e in events.items if ours(name, e.involved_object.name)]
    found.sort(key=lambda e: str(e.last_timestamp or e.event_time or e.first_timestamp))
    return [f"  event {event.involved_object.kind} {event.involved_object.name}"
            f": {event.reason}: {event.message}" for event in found[-last:]]


def failed_pod(core: Any, backend: Backend, pod: Any, namespace: str, request_timeout: float,
               tail: int = 5) -> list[str]:
    """Lines on one pod whose training container exited non-zero: which rank, which code,
    and the last lines it wrote (of the failed run, if it has restarted since)."""
    lines = []
    rank = backend.rank_of(pod)
    for status in (pod.status.container_statuses or []) if pod.status else []:
        terminated = status.state and status.state.terminated
        ended = terminated or (status.last_state and status.last_state.terminated)
        if not (ended and ended.exit_code):
            continue
        where = f" ({rank})" if rank else ""
        lines.append(f"  pod {pod.metadata.name}{where}: container {status.name} exited "
                     f"with code {ended.exit_code} ({ended.reason or 'Error'}), "
                     f"{status.restart_count or 0} restart(s)")
        try:
            text = core.read_namespaced_pod_log(
                pod.metadata.name, namespace, container=status.name, tail_lines=tail,
                previous=not terminated, _request_timeout=(request_timeout, request_timeout))
        except Exception as exc:  # the log may be gone with the container
            log.debug("no log of %s: %s", pod.metadata.name, exc)
            continue
        lines += [f"    | {line}" for line in str(text).splitlines()[-tail:]]
    return lines
