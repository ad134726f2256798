"""Create (or adopt), follow, wait for, explain and clean up a training job on a cluster.

One loop for every job kind: :class:`JobLauncher` takes a :class:`~.backend.Backend`
(``pytorchjob``: Training Operator v1, ``trainjob``: Trainer v2) that renders the object and maps
its status onto neutral states; adopt on retry, log streaming, the watch (:mod:`.watch`), the
explanation of a failure (:mod:`.explain`), cancel on SIGTERM and cleanup are written once.

Every request is bounded (:mod:`.kube`: ``SRS_K8S_TIMEOUT``), so a hung or partitioned API
server makes ``run(timeout=T)`` end within about T plus one request timeout, saying so. The
calls go through the ``kubernetes`` client with ``_request_timeout``; the ``kubeflow-training``
SDK's TrainingClient cannot bound ``create_job``/``delete_job``, so it is not used for them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from srs_core.errors import JobError
from srs_core.launch._signals import cancel_on_sigterm
from srs_core.launch.backend import Backend, JobStatus, get_backend
from srs_core.launch.explain import explain_failure, pending_detail
from srs_core.launch.kube import (
    api_client,
    api_errors,
    bounded_timeout,
    describe_api_error,
    request_timeout_from_env,
    status_code,
)
from srs_core.launch.logs import LogFollower
from srs_core.launch.pytorchjob import API_VERSION
from srs_core.launch.spec import RUN_ID_LABEL, JobSpec
from srs_core.launch.watch import watch_job

log = logging.getLogger(__name__)

CLEANUP_POLICIES = ("always", "on-success", "never")
TERMINAL = ("Succeeded", "Failed", "Timeout", "PendingTimeout", "Cancelled", "Vanished")
GROUP, VERSION = API_VERSION.split("/")
PLURAL = "pytorchjobs"


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


class JobLauncher:
    """Runs one SRS job of the backend's kind at a time: submit or adopt, follow logs, wait,
    explain, clean up."""

    def __init__(self, configuration: Any = None, *, backend: str | Backend = "pytorchjob",
                 poll_interval: float = 10.0, request_timeout: float | None = None,
                 log_drain_timeout: float = 30.0, log_idle_timeout: float = 300.0,
                 max_api_failures: int = 5, pending_timeout: float | None = None):
        from kubernetes import client

        self.backend = get_backend(backend)
        self.api = api_client(configuration)  # the watch loop retries, counting failures
        self.configuration = self.api.configuration
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.poll_interval = poll_interval
        self.request_timeout = request_timeout or request_timeout_from_env()
        self.log_drain_timeout = log_drain_timeout
        self.log_idle_timeout = log_idle_timeout
        self.max_api_failures = max_api_failures
        # Seconds a job may wait for nodes or admission before the step fails; separate from
        # the training timeout, which is far longer. None: wait as long as the timeout allows.
        self.pending_timeout = pending_timeout
        self.cancelled = threading.Event()  # set by cancel(): the watch stops at once
        self._current: tuple[str, str] | None = None
        self.last_job: dict[str, Any] | None = None  # as last seen by the watch
        self._deleted_by_cancel = False
        self._cancel_done = threading.Event()  # cancel() from another thread has finished

    @property
    def kind(self) -> str:
        return self.backend.kind

    def _api_path(self) -> tuple[str, str, str]:
        return self.backend.group, self.backend.version, self.backend.plural

    # -- single API calls -------------------------------------------------------------------
    def _timeout(self, deadline: float | None = None) -> tuple[float, float]:
        """(connect, read) timeouts of one request, cut to what is left before ``deadline``."""
        return bounded_timeout(self.request_timeout, deadline)

    def _error(self, what: str, exc: BaseException, timeout: tuple[float, float]) -> JobError:
        return JobError(f"{what}: {describe_api_error(exc, self.configuration.host, timeout[1])}")

    def get(self, name: str, namespace: str, deadline: float | None = None
            ) -> dict[str, Any] | None:
        """The job object (a dict, as the API server sent it), or None if it does not exist."""
        timeout = self._timeout(deadline)
        try:
            return self.custom.get_namespaced_custom_object(
                *self._api_path()[:2], namespace, self.backend.plural, name,
                _request_timeout=timeout)
        except api_errors() as exc:
            if status_code(exc) == 404:
                return None
            raise self._error(f"cannot read {self.kind} {namespace}/{name}", exc,
                              timeout) from exc

    def delete(self, name: str, namespace: str) -> bool:
        """Delete the job and, through owner references, its pods; False if already gone."""
        from kubernetes.client import V1DeleteOptions

        timeout = self._timeout()
        group, version, plural = self._api_path()
        try:
            self.custom.delete_namespaced_custom_object(
                group, version, namespace, plural, name,
                body=V1DeleteOptions(propagation_policy="Foreground"), _request_timeout=timeout)
        except api_errors() as exc:
            if status_code(exc) == 404:
                return False
            raise self._error(f"cannot delete {self.kind} {namespace}/{name}", exc,
                              timeout) from exc
        log.info("deleted %s %s/%s", self.kind, namespace, name)
        return True

    def cancel(self) -> None:
        """Stop waiting and delete the job being run (safe to call from a signal handler)."""
        self.cancelled.set()
        try:
            if self._current is not None:
                name, namespace = self._current
                try:
                    self.delete(name, namespace)
                    self._deleted_by_cancel = True
                except JobError as exc:
                    log.error("cancel: %s", exc)
        finally:
            self._cancel_done.set()

    # -- submit / adopt -----------------------------------------------------------------------
    def submit(self, spec: JobSpec, replace_failed: bool = False) -> bool:
        """Create the job, or adopt an existing one of the same name; True if created."""
        manifest = self.backend.render(spec)  # validated against the kind's CRD
        existing = self.get(spec.name, spec.namespace)
        if existing is not None:
            if not self._adoptable(existing, spec, replace_failed):
                self.delete(spec.name, spec.namespace)
                self._wait_gone(spec.name, spec.namespace)
            else:
                log.info("adopting existing %s %s/%s (state %s) instead of creating a second "
                         "one", self.kind, spec.namespace, spec.name,
                         self.backend.status(existing).state)
                return False
        timeout = self._timeout()
        group, version, plural = self._api_path()
        try:
            self.custom.create_namespaced_custom_object(
                group, version, spec.namespace, plural, manifest, _request_timeout=timeout)
        except api_errors() as exc:
            status = status_code(exc)
            if status == 409:  # another launcher created it between our GET and POST
                log.info("%s %s/%s appeared meanwhile: adopting it", self.kind, spec.namespace,
                         spec.name)
                return False
            hint = (" — the runner's ServiceAccount needs the srs-pipeline-runner Role of "
                    f"manifests/base (create {self.backend.resource})") if status == 403 else ""
            if status == 404 and self.backend.plural == "trainjobs":
                hint = (" — is Kubeflow Trainer v2 installed (trainjobs.trainer.kubeflow.org), "
                        "with the srs-torch runtime of manifests/trainer?")
            error = self._error(f"cannot create {self.kind} {spec.namespace}/{spec.name}", exc,
                                timeout)
            raise JobError(f"{error}{hint}") from exc
        queued = f", queue {spec.queue_name}" if spec.queue_name else ""
        log.info("created %s %s/%s (%d node(s) x %d process(es)%s)", self.kind, spec.namespace,
                 spec.name, spec.workers, spec.processes_per_worker, queued)
        return True

    def _adoptable(self, existing: dict[str, Any], spec: JobSpec, replace_failed: bool) -> bool:
        labels = existing.get("metadata", {}).get("labels") or {}
        if spec.run_id and labels.get(RUN_ID_LABEL) != spec.run_id:
            raise JobError(f"{self.kind} {spec.namespace}/{spec.name} already exists for run "
                           f"{labels.get(RUN_ID_LABEL)!r}, not {spec.run_id!r}; pick another "
                           "job name or delete the old job")
        if replace_failed and self.backend.status(existing).state == "Failed":
            log.warning("existing %s %s/%s has Failed: replacing it (training resumes from its "
                        "checkpoint)", self.kind, spec.namespace, spec.name)
            return False
        return True

    def _wait_gone(self, name: str, namespace: str) -> None:
        deadline = time.monotonic() + max(self.request_timeout, 10 * self.poll_interval)
        while self.get(name, namespace) is not None:
            if time.monotonic() > deadline:
                raise JobError(f"{self.kind} {namespace}/{name} is still being deleted; retry "
                               "later")
            time.sleep(self.poll_interval)

    # -- watch ----------------------------------------------------------------------------------
    def watch(self, name: str, namespace: str, timeout: float | None = None,
              explain: bool = True, started: float | None = None) -> JobOutcome:
        """Poll until a terminal state (see :data:`TERMINAL`) or ``timeout`` seconds after
        ``started`` (a ``time.monotonic()``; default now). While the job has not started, the
        reasons the cluster gives are logged as they appear, and after ``pending_timeout``
        seconds the watch ends with them. Raises JobError only when ``max_api_failures``
        requests in a row failed before any deadline."""
        return watch_job(self, JobOutcome(name, namespace, state="Pending"), timeout, explain,
                         started)

    def pending_detail(self, job: dict[str, Any], status: JobStatus,
                        reasons: list[str]) -> str:
        return pending_detail(self.kind, job, status, reasons, self.pending_timeout)

    def explain_failure(self, job: dict[str, Any], follower: LogFollower | None = None) -> str:
        """Why the job failed: its Failed condition, every failed pod (rank, exit code, last
        log lines), Warning events, and the rank-0 log's last lines."""
        return explain_failure(self.core, self.backend, job, self.request_timeout,
                               follower.tail if follower is not None else ())

    # -- everything together --------------------------------------------------------------------
    def run(self, spec: JobSpec, *, timeout: float | None = None, cleanup: str = "on-success",
            replace_failed: bool = False, follow_logs: bool = True) -> JobOutcome:
        """Submit or adopt, stream logs, wait; JobError unless it Succeeded.

        ``cleanup``: ``always`` deletes the job at the end, ``on-success`` keeps failed jobs
        for inspection, ``never`` keeps it. A job that times out (or never starts within
        ``pending_timeout``) is deleted unless ``never``: nothing would watch it any more.
        SIGTERM (a cancelled KFP step) deletes the job.
        """
        if cleanup not in CLEANUP_POLICIES:
            raise JobError(f"cleanup={cleanup!r}: use one of {', '.join(CLEANUP_POLICIES)}")
        self.cancelled.clear()
        self._cancel_done.clear()
        self._deleted_by_cancel = False
        follower, outcome = None, None
        started = time.monotonic()  # --timeout counts from here: submitting is part of it
        try:
            with cancel_on_sigterm(self.cancel):
                created = self.submit(spec, replace_failed=replace_failed)
                self._current = (spec.name, spec.namespace)
                if follow_logs:
                    follower = LogFollower(self.core, spec.name, spec.namespace,
                                           self.poll_interval,
                                           request_timeout=self.request_timeout,
                                           idle_timeout=self.log_idle_timeout,
                                           selector=self.backend.rank0_selector(spec.name),
                                           container=self.backend.container)
                    follower.start()
                outcome = self.watch(spec.name, spec.namespace, timeout, explain=False,
                                     started=started)
        finally:
            if follower is not None:
                # Let the master's last lines arrive before explaining or returning.
                finished = outcome is not None and outcome.state in ("Succeeded", "Failed")
                # Otherwise do not wait: --timeout or a cancel must end the run now.
                follower.stop(self.log_drain_timeout if finished else 0.0)
            self._current = None
        if outcome.state == "Failed":
            outcome.detail = self.explain_failure(self.last_job, follower)
        if outcome.state == "Cancelled":
            self._cancel_done.wait(self.request_timeout)  # its delete may still be under way
            # SIGTERM may have come before the job existed: then cancel() deleted nothing.
            outcome.deleted = self._deleted_by_cancel or self._delete_at_end(outcome)
        outcome.created = created
        delete = (outcome.state == "Succeeded" and cleanup in ("always", "on-success")
                  or outcome.state == "Failed" and cleanup == "always"
                  or outcome.state in ("Timeout", "PendingTimeout") and cleanup != "never")
        if delete:
            outcome.deleted = self._delete_at_end(outcome)
        if outcome.state != "Succeeded":
            raise JobError(outcome.detail)
        log.info("%s %s/%s succeeded in %.0fs", self.kind, spec.namespace, spec.name,
                 outcome.seconds)
        return outcome

    def _delete_at_end(self, outcome: JobOutcome) -> bool:
        """Delete the job; if that fails, say so without hiding how the job ended."""
        try:
            return self.delete(outcome.name, outcome.namespace)
        except JobError as exc:
            note = (f"it was not deleted ({exc}); delete it with: kubectl -n "
                    f"{outcome.namespace} delete {self.kind.lower()} {outcome.name}")
            if outcome.state == "Succeeded":  # training is done; its TTL removes it later
                log.warning("%s %s/%s succeeded but %s", self.kind, outcome.namespace,
                            outcome.name, note)
            outcome.detail = f"{outcome.detail}; {note}" if outcome.detail else note
            return False

    def close(self) -> None:
        """Release the HTTP connections (no request is left running: none is asynchronous)."""
        self.api.rest_client.pool_manager.clear()
        self.api.close()


class PyTorchJobLauncher(JobLauncher):
    """:class:`JobLauncher` for Training Operator v1 PyTorchJobs (the historical entry)."""

    def __init__(self, configuration: Any = None, **options: Any):
        options.setdefault("backend", "pytorchjob")
        super().__init__(configuration, **options)


def run_job(spec: JobSpec, *, kind: str = "pytorchjob", timeout: float | None = None,
            cleanup: str = "on-success", configuration: Any = None, poll_interval: float = 10.0,
            replace_failed: bool = False, pending_timeout: float | None = None) -> JobOutcome:
    """One call for the train step: run ``spec`` as a ``kind`` job and wait (JobError on
    failure, or when it has not started within ``pending_timeout`` seconds)."""
    launcher = JobLauncher(configuration, backend=kind, poll_interval=poll_interval,
                           pending_timeout=pending_timeout)
    try:
        return launcher.run(spec, timeout=timeout, cleanup=cleanup,
                            replace_failed=replace_failed)
    finally:
        launcher.close()


def run_pytorchjob(spec: JobSpec, *, timeout: float | None = None, cleanup: str = "on-success",
                   configuration: Any = None, poll_interval: float = 10.0,
                   replace_failed: bool = False, pending_timeout: float | None = None
                   ) -> JobOutcome:
    """:func:`run_job` with ``kind="pytorchjob"``."""
    return run_job(spec, kind="pytorchjob", timeout=timeout, cleanup=cleanup,
                   configuration=configuration, poll_interval=poll_interval,
                   replace_failed=replace_failed, pending_timeout=pending_timeout)
