"""Create (or adopt), follow, wait for, explain and clean up a training job on a cluster.

One loop for every job kind: :class:`JobLauncher` takes a :class:`~.backend.Backend`
(``pytorchjob``: Training Operator v1, ``trainjob``: Trainer v2) that renders the object and maps
its status onto neutral states; everything else — adopt on retry, stream the rank-0 log, say
why a job has not started, fail with every failed rank's exit code and last lines, timeouts,
cancel on SIGTERM, cleanup — is written once here.

Every request to the API server is bounded: a connect and a read timeout of ``SRS_K8S_TIMEOUT``
seconds (default 30), list calls also carry ``timeoutSeconds`` for the server, and the master's
log stream is re-opened after a silent spell. So a hung or partitioned API server makes
``run(timeout=T)`` end within about T plus one request timeout, with an error that says so.

The calls go through the ``kubernetes`` client's CustomObjectsApi/CoreV1Api with
``_request_timeout``; the ``kubeflow-training`` SDK supplies the job models only. Its
TrainingClient cannot bound them: ``create_job``/``delete_job`` take no timeout, and ``get_job``
only stops *waiting* while its request stays blocked in a thread pool that ``close()`` joins.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from srs_core.errors import ConfigError, JobError
from srs_core.launch._signals import cancel_on_sigterm
from srs_core.launch.backend import Backend, JobStatus, get_backend
from srs_core.launch.diagnose import PendingDiagnosis, ours
from srs_core.launch.logs import LogFollower, list_limits
from srs_core.launch.pytorchjob import API_VERSION
from srs_core.launch.spec import RUN_ID_LABEL, JobSpec

log = logging.getLogger(__name__)

CLEANUP_POLICIES = ("always", "on-success", "never")
TERMINAL = ("Succeeded", "Failed", "Timeout", "PendingTimeout", "Cancelled", "Vanished")
OWNER_ENV = ("SRS_POD_NAME", "SRS_POD_UID")  # the step pod, from the downward API
GROUP, VERSION = API_VERSION.split("/")
PLURAL = "pytorchjobs"
TIMEOUT_ENV = "SRS_K8S_TIMEOUT"
DEFAULT_REQUEST_TIMEOUT = 30.0


def request_timeout_from_env(environ: Mapping[str, str] | None = None) -> float:
    """Seconds each API request may wait to connect and for each read (``SRS_K8S_TIMEOUT``)."""
    text = (os.environ if environ is None else environ).get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_REQUEST_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (0 < seconds < math.inf):
        raise ConfigError(f"environment {TIMEOUT_ENV}={text!r}: expected a positive number of "
                          "seconds")
    return seconds


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


@functools.cache
def _api_errors() -> tuple[type[BaseException], ...]:
    """What a request can raise: an HTTP error status, or no usable answer at all."""
    import urllib3
    from kubernetes.client.rest import ApiException

    return ApiException, urllib3.exceptions.HTTPError


def _status_code(exc: BaseException) -> int | None:
    """HTTP status of an API error; None when the API server gave no answer."""
    from kubernetes.client.rest import ApiException

    return exc.status if isinstance(exc, ApiException) else None


def _problem(exc: BaseException, host: str, timeout: float) -> str:
    """One line on what went wrong between us and the API server (urllib3's text is cryptic)."""
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

    status = _status_code(exc)
    if status is not None:
        try:
            message = json.loads(exc.body)["message"]
        except (TypeError, ValueError, KeyError):
            message = exc.body or ""
        return f"the API server answered {status} {exc.reason}: {message}"
    where = f"the Kubernetes API server at {host}"
    if isinstance(exc, ReadTimeoutError):
        return f"{where} did not answer within {timeout:.3g}s"
    # NewConnectionError (refused, no route) subclasses ConnectTimeoutError in urllib3 2.
    if isinstance(exc, ConnectTimeoutError) and not isinstance(exc, NewConnectionError):
        return f"{where} did not accept a connection within {timeout:.3g}s"
    return f"{where} could not be reached ({type(exc).__name__}: {exc})"


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


class JobLauncher:
    """Runs one SRS job of the backend's kind at a time: submit or adopt, follow logs, wait,
    explain, clean up."""

    def __init__(self, configuration: Any = None, *, backend: str | Backend = "pytorchjob",
                 poll_interval: float = 10.0, request_timeout: float | None = None,
                 log_drain_timeout: float = 30.0, log_idle_timeout: float = 300.0,
                 max_api_failures: int = 5, pending_timeout: float | None = None):
        from kubernetes import client

        self.backend = get_backend(backend)
        self.configuration = configuration or kube_configuration()
        # urllib3 would retry a timed-out GET three times, each with a fresh timeout: the
        # watch loop retries instead, counting every failure and minding the deadline.
        self.configuration.retries = False
        self.api = client.ApiClient(self.configuration)
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
        self._cancelled = threading.Event()
        self._current: tuple[str, str] | None = None
        self._last_job: dict[str, Any] | None = None
        self._deleted_by_cancel = False

    @property
    def kind(self) -> str:
        return self.backend.kind

    def _api_path(self) -> tuple[str, str, str]:
        return self.backend.group, self.backend.version, self.backend.plural

    # -- single API calls -------------------------------------------------------------------
    def _timeout(self, deadline: float | None = None) -> tuple[float, float]:
        """(connect, read) timeouts of one request, cut to what is left before ``deadline``."""
        seconds = self.request_timeout
        if deadline is not None:
            seconds = min(seconds, max(deadline - time.monotonic(), 0.1))
        return seconds, seconds

    def _error(self, what: str, exc: BaseException, timeout: tuple[float, float]) -> JobError:
        return JobError(f"{what}: {_problem(exc, self.configuration.host, timeout[1])}")

    def get(self, name: str, namespace: str, deadline: float | None = None
            ) -> dict[str, Any] | None:
        """The job object (a dict, as the API server sent it), or None if it does not exist."""
        timeout = self._timeout(deadline)
        try:
            return self.custom.get_namespaced_custom_object(
                *self._api_path()[:2], namespace, self.backend.plural, name,
                _request_timeout=timeout)
        except _api_errors() as exc:
            if _status_code(exc) == 404:
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
        except _api_errors() as exc:
            if _status_code(exc) == 404:
                return False
            raise self._error(f"cannot delete {self.kind} {namespace}/{name}", exc,
                              timeout) from exc
        log.info("deleted %s %s/%s", self.kind, namespace, name)
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
        except _api_errors() as exc:
            status = _status_code(exc)
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
        start = time.monotonic()
        deadline = (started or start) + timeout if timeout else None
        pending_deadline = ((started or start) + self.pending_timeout
                            if self.pending_timeout else None)
        diagnosis = PendingDiagnosis(self.core, self.custom, self.backend, self.request_timeout)
        outcome = JobOutcome(name, namespace, state="Pending")
        kind = self.kind
        last, failures, error, ran = None, 0, None, False
        while True:
            if self._cancelled.is_set():
                outcome.state = "Cancelled"
                outcome.detail = (f"{kind} {namespace}/{name} was cancelled (SIGTERM: the "
                                  "pipeline step was stopped) and is deleted")
                break
            try:
                job = self.get(name, namespace, deadline)
                failures, error = 0, None
                if self._cancelled.is_set():  # cancel() ran during the request
                    continue
            except JobError as exc:
                failures, error = failures + 1, exc
                if failures > self.max_api_failures:
                    raise JobError(f"{exc} ({failures} requests in a row failed); the job is "
                                   "left as it is: a retry of this step adopts it") from exc
                log.warning("%s (attempt %d of %d)", exc, failures, self.max_api_failures)
            else:
                if job is None:
                    outcome.state = "Vanished"
                    outcome.detail = (f"{kind} {namespace}/{name} disappeared while running "
                                      "(deleted by someone else, or its TTL expired)")
                    break
                status = self.backend.status(job)
                state = status.state
                if state != last:
                    why = f": {status.reason} {status.message}" if status.reason else ""
                    level = logging.WARNING if state in ("Restarting", "Failed") else logging.INFO
                    log.log(level, "%s %s/%s is %s%s", kind, namespace, name, state, why)
                    outcome.restarts += state == "Restarting"
                    last = state
                ran = ran or status.started
                if state in ("Succeeded", "Failed"):
                    outcome.state = state
                    self._last_job = job
                    if state == "Failed" and explain:
                        outcome.detail = self.explain_failure(job)
                    break
                if not ran:
                    for line in diagnosis.new(job):
                        log.warning("%s %s/%s cannot start yet: %s", kind, namespace, name, line)
                    now = time.monotonic()
                    if pending_deadline is not None and now >= pending_deadline:
                        outcome.state = "PendingTimeout"
                        outcome.detail = self._pending_detail(
                            job, status, diagnosis.latest or sorted(diagnosis.seen))
                        break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                outcome.state = "Timeout"
                outcome.detail = (f"{kind} {namespace}/{name} did not finish within "
                                  f"{timeout:g}s (last state {last or 'unknown'})")
                if error is not None:  # the reason may be the API server, not the job
                    outcome.detail += f"; the last {failures} request(s) failed: {error}"
                break
            ends = [d for d in (deadline, None if ran else pending_deadline) if d is not None]
            wait = min([self.poll_interval] + [d - now for d in ends])
            self._cancelled.wait(max(wait, 0.0))
        outcome.seconds = time.monotonic() - start
        return outcome

    def _pending_detail(self, job: dict[str, Any], status: JobStatus,
                        reasons: list[str]) -> str:
        meta = job.get("metadata", {})
        name, namespace = meta.get("name"), meta.get("namespace")
        why = f" ({status.reason}: {status.message})" if status.reason else ""
        lines = [f"{self.kind} {namespace}/{name} did not start within "
                 f"{self.pending_timeout:g}s (pending_timeout); it is {status.state}{why}"]
        lines += [f"  {line}" for line in reasons] or [
            "  the cluster gave no reason (no Warning event, no unschedulable pod)"]
        lines.append(f"  inspect: kubectl -n {namespace} describe {self.kind.lower()} {name}")
        return "\n".join(lines)

    def explain_failure(self, job: dict[str, Any], follower: LogFollower | None = None) -> str:
        """Why the job failed: its Failed condition, every failed pod (rank, exit code, last
        log lines), Warning events, and the rank-0 log's last lines."""
        meta = job.get("metadata", {})
        name, namespace = meta.get("name"), meta.get("namespace")
        status = self.backend.status(job)
        lines = [f"{self.kind} {namespace}/{name} failed"
                 + (f": {status.reason}: {status.message}" if status.reason else "")]
        try:
            pods = self.core.list_namespaced_pod(
                namespace, label_selector=self.backend.pod_selector(name),
                **list_limits(self.request_timeout)).items
            for pod in pods:
                lines += self._failed_pod(pod, namespace)
            events = self.core.list_namespaced_event(namespace, field_selector="type=Warning",
                                                     **list_limits(self.request_timeout))
            found = [e for e in events.items if ours(name, e.involved_object.name)]
            found.sort(key=lambda e: str(e.last_timestamp or e.event_time or e.first_timestamp))
            for event in found[-5:]:
                lines.append(f"  event {event.involved_object.kind} {event.involved_object.name}"
                             f": {event.reason}: {event.message}")
        except Exception as exc:  # diagnostics must not hide the failure itself
            lines.append(f"  (could not read pods/events: {exc})")
        if follower is not None and follower.tail:
            lines.append("  last master log lines:")
            lines.extend(f"    {line}" for line in list(follower.tail)[-10:])
        lines.append(f"  inspect: kubectl -n {namespace} describe {self.kind.lower()} {name}")
        return "\n".join(lines)

    def _failed_pod(self, pod: Any, namespace: str, tail: int = 5) -> list[str]:
        """Lines on one pod whose training container exited non-zero: which rank, which code,
        and the last lines it wrote (of the failed run, if it has restarted since)."""
        lines = []
        rank = self.backend.rank_of(pod)
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
                text = self.core.read_namespaced_pod_log(
                    pod.metadata.name, namespace, container=status.name, tail_lines=tail,
                    previous=not terminated, _request_timeout=self._timeout())
            except Exception as exc:  # the log may be gone with the container
                log.debug("no log of %s: %s", pod.metadata.name, exc)
                continue
            lines += [f"    | {line}" for line in str(text).splitlines()[-tail:]]
        return lines

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
        self._cancelled.clear()
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
            outcome.detail = self.explain_failure(self._last_job, follower)
        if outcome.state == "Cancelled":
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


def step_owner(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The step pod's name and uid (``job_owner=step``), from the downward-API env."""
    env = os.environ if environ is None else environ
    name, uid = (env.get(key, "") for key in OWNER_ENV)
    if not (name and uid):
        raise ConfigError(f"job_owner=step needs {' and '.join(OWNER_ENV)} (the pipeline sets "
                          "them from the downward API; `srs job run` needs them exported)")
    return {"name": name, "uid": uid}


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
