"""Why a job has not started: what the cluster says about its pods, its events and Kueue.

Read while a job is Pending or Suspended, so the step's log says within a poll or two that the
job waits for GPUs ("0/12 nodes are available: insufficient nvidia.com/gpu"), cannot pull its
image, exceeds a quota or is not admitted by its Kueue queue — instead of silence until a
timeout. Every reader is best effort: a diagnosis must never fail the watch.
"""

from __future__ import annotations

import logging
from typing import Any

from srs_core.launch.backend import Backend
from srs_core.launch.logs import list_limits

log = logging.getLogger(__name__)

# Container waiting reasons that will not fix themselves.
WAITING_PROBLEMS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                    "CreateContainerConfigError", "CreateContainerError", "CrashLoopBackOff")
KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta1"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"  # Kueue labels a job's Workload with the job's uid


def ours(name: str, involved: str | None) -> bool:
    """Whether an event is about job ``name`` or one of its children (pods, Jobs, JobSet)."""
    return involved == name or (involved or "").startswith(f"{name}-")


def pod_problems(pods: list[Any]) -> list[str]:
    """Unschedulable pods and containers stuck waiting, one line each."""
    lines = []
    for pod in pods:
        name = pod.metadata.name
        for condition in (pod.status.conditions or []) if pod.status else []:
            if condition.type == "PodScheduled" and condition.status == "False":
                lines.append(f"pod {name} is not scheduled: {condition.reason or ''}: "
                             f"{condition.message or ''}".rstrip(": "))
        for status in (pod.status.container_statuses or []) if pod.status else []:
            waiting = status.state and status.state.waiting
            if waiting and waiting.reason in WAITING_PROBLEMS:
                lines.append(f"pod {name}: container {status.name} {waiting.reason}: "
                             f"{waiting.message or ''}".rstrip(": "))
    return lines


def event_problems(events: list[Any], name: str, limit: int = 5) -> list[str]:
    """The newest Warning events about the job and its children (FailedScheduling, quota)."""
    found = [e for e in events if ours(name, e.involved_object.name)]
    found.sort(key=lambda e: str(e.last_timestamp or e.event_time or e.first_timestamp))
    return [f"event {e.involved_object.kind} {e.involved_object.name}: {e.reason}: {e.message}"
            for e in found[-limit:]]


def workload_problems(workloads: list[dict[str, Any]]) -> list[str]:
    """Kueue's word on admission: quota not reserved, not admitted, evicted or preempted."""
    lines = []
    for workload in workloads:
        name = workload.get("metadata", {}).get("name", "?")
        for c in (workload.get("status") or {}).get("conditions") or []:
            waiting = c.get("type") in ("QuotaReserved", "Admitted") and c.get("status") == "False"
            pushed = c.get("type") in ("Evicted", "Preempted") and c.get("status") == "True"
            if waiting or pushed:
                lines.append(f"Kueue workload {name} {c['type']}={c.get('status')}: "
                             f"{c.get('reason', '')}: {c.get('message', '')}".rstrip(": "))
    return lines


class PendingDiagnosis:
    """Collects the reasons a job waits; remembers which were logged so each is said once."""

    def __init__(self, core: Any, custom: Any, backend: Backend, request_timeout: float):
        self.core, self.custom, self.backend = core, custom, backend
        self.request_timeout = request_timeout
        self.seen: set[str] = set()
        self.latest: list[str] = []
        self._kueue = True  # False once the cluster says it has no Kueue (404)

    def reasons(self, job: dict[str, Any]) -> list[str]:
        meta = job.get("metadata", {})
        name, namespace = meta.get("name", ""), meta.get("namespace", "")
        lines: list[str] = []
        limits = list_limits(self.request_timeout)
        try:
            pods = self.core.list_namespaced_pod(
                namespace, label_selector=self.backend.pod_selector(name), **limits).items
            lines += pod_problems(pods)
            events = self.core.list_namespaced_event(namespace, field_selector="type=Warning",
                                                     **limits).items
            lines += event_problems(events, name)
        except Exception as exc:  # diagnostics must not fail the watch
            log.debug("cannot read pods/events of %s: %s", name, exc)
        uid = meta.get("uid")
        queued = "kueue.x-k8s.io/queue-name" in (meta.get("labels") or {})
        if self._kueue and queued and uid:
            lines += self._workloads(namespace, uid)
        self.latest = lines
        return lines

    def _workloads(self, namespace: str, uid: str) -> list[str]:
        from kubernetes.client.rest import ApiException

        try:
            data = self.custom.list_namespaced_custom_object(
                KUEUE_GROUP, KUEUE_VERSION, namespace, "workloads",
                label_selector=f"{JOB_UID_LABEL}={uid}", **list_limits(self.request_timeout))
        except ApiException as exc:
            if exc.status == 404:
                self._kueue = False
                return ["the job has a queue label but the cluster has no Kueue (no "
                        "workloads.kueue.x-k8s.io): nothing will admit it"]
            log.debug("cannot read Kueue workloads: %s", exc)
            return []
        except Exception as exc:
            log.debug("cannot read Kueue workloads: %s", exc)
            return []
        return workload_problems(data.get("items") or [])

    def new(self, job: dict[str, Any]) -> list[str]:
        """Reasons not logged before (all are kept in :attr:`latest`)."""
        fresh = [line for line in self.reasons(job) if line not in self.seen]
        self.seen.update(fresh)
        return fresh
