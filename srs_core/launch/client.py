"""Create (or adopt), follow, wait for, explain and clean up a PyTorchJob on a cluster.

Job create/get/delete and the pod list go through the ``kubeflow-training`` SDK's
``TrainingClient``; the master's log stream and the events go through its ``kubernetes``
CoreV1Api, because the SDK prints followed logs to stdout and only lists events unfiltered.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from srs_core.errors import JobError
from srs_core.launch._signals import cancel_on_sigterm
from srs_core.launch.logs import JOB_NAME_LABEL, LogFollower
from srs_core.launch.pytorchjob import (
    RUN_ID_LABEL,
    JobSpec,
    build_pytorchjob,
    to_dict,
    validate_pytorchjob,
)

log = logging.getLogger(__name__)

CLEANUP_POLICIES = ("always", "on-success", "never")
TERMINAL = ("Succeeded", "Failed", "Timeout", "Cancelled", "Vanished")


def kube_configuration(kubeconfig: str | None = None, context: str | None = None):
    """In-cluster credentials inside a pod (unless a kubeconfig is named), else the kubeconfig."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(config_file=kubeconfig, context=context,
                                    client_configuration=configuration)
    except (config.ConfigException, OSError, TypeError, ValueError) as exc:
        raise JobError(f"no Kubernetes credentials: not in a pod and kubeconfig "
                       f"{kubeconfig or '~/.kube/config'} is unusable ({exc}); pass --kubeconfig "
                       "or run inside the cluster") from exc
    return configuration


@dataclass
class JobOutcome:
    """How a watched job ended; ``state`` is one of :data:`TERMINAL`."""

    name: str
    namespace: str
    state: str
    created: bool = True  # False: an existing job of the same name was adopted
    restarts: int = 0  # Restarting conditions seen while watching
    seconds: float = 0.0
    detail: str = ""
    deleted: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (what `srs job run` prints)."""
        return asdict(self)


def _status_code(exc: BaseException) -> int | None:
    """HTTP status behind an SDK error (the SDK wraps ApiException in RuntimeError)."""
    from kubernetes.client.rest import ApiException

    while exc is not None:
        if isinstance(exc, ApiException):
            return exc.status
        exc = exc.__cause__
    return None


def _reason(exc: BaseException) -> str:
    """The SDK's message plus the error it wrapped (it drops the cause of non-API errors)."""
    inner = exc.__cause__ or exc.__context__
    return f"{exc} ({type(inner).__name__}: {inner})" if inner else str(exc)


def job_state(job: Any) -> tuple[str, Any]:
    """(state, condition): Failed/Succeeded win; else the newest true condition; else Pending."""
    conditions = [c for c in (getattr(job.status, "conditions", None) or [])
                  if c.status == "True"]
    for terminal in ("Failed", "Succeeded"):
        for condition in conditions:
            if condition.type == terminal:
                return terminal, condition
    if conditions:
        return conditions[-1].type, conditions[-1]
    return "Pending", None


class PyTorchJobLauncher:
    """Runs one SRS PyTorchJob at a time: submit or adopt, follow logs, wait, clean up."""

    def __init__(self, configuration: Any = None, *, poll_interval: float = 10.0,
                 request_timeout: float = 30.0, log_drain_timeout: float = 30.0,
                 max_api_failures: int = 5):
        from kubeflow.training import TrainingClient

        self.configuration = configuration or kube_configuration()
        self.training = TrainingClient(client_configuration=self.configuration,
                                       namespace="default")
        self.core = self.training.core_api
        self.poll_interval = poll_interval
        self.request_timeout = request_timeout
        self.log_drain_timeout = log_drain_timeout
        self.max_api_failures = max_api_failures
        self._cancelled = threading.Event()
        self._current: tuple[str, str] | None = None
        self._last_job: Any = None
        self._deleted_by_cancel = False

    # -- single API calls -------------------------------------------------------------------
    def get(self, name: str, namespace: str) -> Any:
        """The job model, or None if it does not exist."""
        try:
            return self.training.get_job(name, namespace, timeout=int(self.request_timeout))
        except (RuntimeError, TimeoutError) as exc:
            if _status_code(exc) == 404:
                return None
            raise JobError(f"cannot read PyTorchJob {namespace}/{name}: {_reason(exc)}") from exc

    def delete(self, name: str, namespace: str) -> bool:
        """Delete the job and, through owner references, its pods; False if already gone."""
        from kubernetes.client import V1DeleteOptions

        try:
            self.training.delete_job(name, namespace, delete_options=V1DeleteOptions(
                propagation_policy="Foreground"))
        except (RuntimeError, TimeoutError) as exc:
            if _status_code(exc) == 404:
                return False
            raise JobError(f"cannot delete PyTorchJob {namespace}/{name}: {_reason(exc)}") from exc
        log.info("deleted PyTorchJob %s/%s", namespace, name)
        return True

    def cancel(self) -> None:
        """Stop waiting and delete the job being run (safe to call from a signal handler)."""
        self._cancelled.set()
        if self._current is not None:
            name, namespace = self._current
            try:
                self.delete(name, namespace)
                self._deleted_by_cancel = True
            except JobError as exc:
                log.error("cancel: %s", exc)

    # -- submit / adopt -----------------------------------------------------------------------
    def submit(self, spec: JobSpec, replace_failed: bool = False) -> bool:
        """Create the job, or adopt an existing one of the same name; True if created."""
        job = build_pytorchjob(spec)
        validate_pytorchjob(to_dict(job))
        existing = self.get(spec.name, spec.namespace)
        if existing is not None:
            if not self._adoptable(existing, spec, replace_failed):
                self.delete(spec.name, spec.namespace)
                self._wait_gone(spec.name, spec.namespace)
            else:
                log.info("adopting existing PyTorchJob %s/%s (state %s) instead of creating "
                         "a second one", spec.namespace, spec.name, job_state(existing)[0])
                return False
        try:
            self.training.create_job(job=job, namespace=spec.namespace)
        except (RuntimeError, TimeoutError) as exc:
            status = _status_code(exc)
            if status == 409:  # another launcher created it between our GET and POST
                log.info("PyTorchJob %s/%s appeared meanwhile: adopting it", spec.namespace,
                         spec.name)
                return False
            hint = (" — the runner's ServiceAccount needs the srs-pipeline-runner Role of "
                    "manifests/base (create pytorchjobs.kubeflow.org)") if status == 403 else ""
            raise JobError(f"cannot create PyTorchJob {spec.namespace}/{spec.name}: "
                           f"{_reason(exc)}{hint}") from exc
        log.info("created PyTorchJob %s/%s (%d replica(s) x %d process(es))", spec.namespace,
                 spec.name, spec.workers, spec.processes_per_worker)
        return True

    def _adoptable(self, existing: Any, spec: JobSpec, replace_failed: bool) -> bool:
        labels = existing.metadata.labels or {}
        if spec.run_id and labels.get(RUN_ID_LABEL) != spec.run_id:
            raise JobError(f"PyTorchJob {spec.namespace}/{spec.name} already exists for run "
                           f"{labels.get(RUN_ID_LABEL)!r}, not {spec.run_id!r}; pick another "
                           "job name or delete the old job")
        if replace_failed and job_state(existing)[0] == "Failed":
            log.warning("existing PyTorchJob %s/%s has Failed: replacing it (training resumes "
                        "from its checkpoint)", spec.namespace, spec.name)
            return False
        return True

    def _wait_gone(self, name: str, namespace: str) -> None:
        deadline = time.monotonic() + max(self.request_timeout, 10 * self.poll_interval)
        while self.get(name, namespace) is not None:
            if time.monotonic() > deadline:
                raise JobError(f"PyTorchJob {namespace}/{name} is still being deleted; retry "
                               "later")
            time.sleep(self.poll_interval)

    # -- watch ----------------------------------------------------------------------------------
    def watch(self, name: str, namespace: str, timeout: float | None = None,
              explain: bool = True) -> JobOutcome:
        """Poll until a terminal state (see :data:`TERMINAL`); raises only if the API fails."""
        start = time.monotonic()
        deadline = start + timeout if timeout else None
        outcome = JobOutcome(name, namespace, state="Pending")
        last, failures = None, 0
        while True:
            if self._cancelled.is_set():
                outcome.state = "Cancelled"
                outcome.detail = (f"PyTorchJob {namespace}/{name} was cancelled (SIGTERM: the "
                                  "pipeline step was stopped) and is deleted")
                break
            try:
                job = self.get(name, namespace)
                failures = 0
                if self._cancelled.is_set():  # cancel() ran during the request
                    continue
            except JobError as exc:
                failures += 1
                if failures > self.max_api_failures:
                    raise
                log.warning("%s (attempt %d of %d)", exc, failures, self.max_api_failures)
            else:
                if job is None:
                    outcome.state = "Vanished"
                    outcome.detail = (f"PyTorchJob {namespace}/{name} disappeared while running "
                                      "(deleted by someone else, or its TTL expired)")
                    break
                state, condition = job_state(job)
                if state != last:
                    why = f": {condition.reason} {condition.message or ''}" if condition else ""
                    level = logging.WARNING if state in ("Restarting", "Failed") else logging.INFO
                    log.log(level, "PyTorchJob %s/%s is %s%s", namespace, name, state, why)
                    outcome.restarts += state == "Restarting"
                    last = state
                if state in ("Succeeded", "Failed"):
                    outcome.state = state
                    self._last_job = job
                    if state == "Failed" and explain:
                        outcome.detail = self.explain_failure(job)
                    break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                outcome.state = "Timeout"
                outcome.detail = (f"PyTorchJob {namespace}/{name} did not finish within "
                                  f"{timeout:g}s (last state {last or 'unknown'})")
                break
            wait = self.poll_interval if deadline is None else min(self.poll_interval,
                                                                    deadline - now)
            self._cancelled.wait(max(wait, 0.0))
        outcome.seconds = time.monotonic() - start
        return outcome

    def explain_failure(self, job: Any, follower: LogFollower | None = None) -> str:
        """Why the job failed: its Failed condition, pod exits, Warning events, last log lines."""
        name, namespace = job.metadata.name, job.metadata.namespace
        _, condition = job_state(job)
        lines = [f"PyTorchJob {namespace}/{name} failed"
                 + (f": {condition.reason}: {condition.message}" if condition else "")]
        try:
            selector = f"{JOB_NAME_LABEL}={name}"
            for pod in self.core.list_namespaced_pod(namespace, label_selector=selector).items:
                for status in pod.status.container_statuses or []:
                    ended = (status.state and status.state.terminated) or (
                        status.last_state and status.last_state.terminated)
                    if ended and ended.exit_code:
                        lines.append(f"  pod {pod.metadata.name}: container {status.name} exited "
                                     f"with code {ended.exit_code} ({ended.reason or 'Error'}), "
                                     f"{status.restart_count or 0} restart(s)")
            events = self.core.list_namespaced_event(namespace, field_selector="type=Warning")
            ours = [e for e in events.items if e.involved_object.name == name
                    or (e.involved_object.name or "").startswith(f"{name}-")]
            ours.sort(key=lambda e: str(e.last_timestamp or e.event_time or e.first_timestamp))
            for event in ours[-5:]:
                lines.append(f"  event {event.involved_object.kind} {event.involved_object.name}"
                             f": {event.reason}: {event.message}")
        except Exception as exc:  # diagnostics must not hide the failure itself
            lines.append(f"  (could not read pods/events: {exc})")
        if follower is not None and follower.tail:
            lines.append("  last master log lines:")
            lines.extend(f"    {line}" for line in list(follower.tail)[-10:])
        lines.append(f"  inspect: kubectl -n {namespace} describe pytorchjob {name}")
        return "\n".join(lines)

    # -- everything together --------------------------------------------------------------------
    def run(self, spec: JobSpec, *, timeout: float | None = None, cleanup: str = "on-success",
            replace_failed: bool = False, follow_logs: bool = True) -> JobOutcome:
        """Submit or adopt, stream logs, wait; JobError unless it Succeeded.

        ``cleanup``: ``always`` deletes the job at the end, ``on-success`` keeps failed jobs
        for inspection, ``never`` keeps it. A job that times out is deleted unless ``never``:
        nothing would watch it any more. SIGTERM (a cancelled KFP step) deletes the job.
        """
        if cleanup not in CLEANUP_POLICIES:
            raise JobError(f"cleanup={cleanup!r}: use one of {', '.join(CLEANUP_POLICIES)}")
        self._cancelled.clear()
        self._deleted_by_cancel = False
        follower, outcome = None, None
        try:
            with cancel_on_sigterm(self.cancel):
                created = self.submit(spec, replace_failed=replace_failed)
                self._current = (spec.name, spec.namespace)
                if follow_logs:
                    follower = LogFollower(self.core, spec.name, spec.namespace,
                                            self.poll_interval)
                    follower.start()
                outcome = self.watch(spec.name, spec.namespace, timeout, explain=False)
        finally:
            if follower is not None:
                # Let the master's last lines arrive before explaining or returning.
                finished = outcome is not None and outcome.state in ("Succeeded", "Failed")
                follower.stop(self.log_drain_timeout if finished else 1.0)
            self._current = None
        if outcome.state == "Failed":
            outcome.detail = self.explain_failure(self._last_job, follower)
        if outcome.state == "Cancelled":
            # SIGTERM may have come before the job existed: then cancel() deleted nothing.
            outcome.deleted = self._deleted_by_cancel or self.delete(spec.name, spec.namespace)
        outcome.created = created
        delete = (outcome.state == "Succeeded" and cleanup in ("always", "on-success")
                  or outcome.state == "Failed" and cleanup == "always"
                  or outcome.state == "Timeout" and cleanup != "never")
        if delete:
            outcome.deleted = self.delete(spec.name, spec.namespace)
        if outcome.state != "Succeeded":
            raise JobError(outcome.detail)
        log.info("PyTorchJob %s/%s succeeded in %.0fs", spec.namespace, spec.name,
                 outcome.seconds)
        return outcome

    def close(self) -> None:
        """Release the HTTP connections and the SDK's thread pool."""
        self.core.api_client.close()


def run_pytorchjob(spec: JobSpec, *, timeout: float | None = None, cleanup: str = "on-success",
                   configuration: Any = None, poll_interval: float = 10.0,
                   replace_failed: bool = False) -> JobOutcome:
    """One call for the train step: run ``spec`` on the cluster and wait (JobError on failure)."""
    launcher = PyTorchJobLauncher(configuration, poll_interval=poll_interval)
    try:
        return launcher.run(spec, timeout=timeout, cleanup=cleanup,
                            replace_failed=replace_failed)
    finally:
        launcher.close()
