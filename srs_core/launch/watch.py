"""Watching a job until it ends: one poll at a time, each bounded, with the job's state
changes logged, the reasons it cannot start diagnosed, and every deadline minded."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from srs_core.errors import JobError
from srs_core.launch.diagnose import PendingDiagnosis

if TYPE_CHECKING:
    from srs_core.launch.client import JobLauncher, JobOutcome

log = logging.getLogger(__name__)


@dataclass
class _Watch:
    """What one watch has seen so far."""

    outcome: JobOutcome
    diagnosis: PendingDiagnosis
    deadline: float | None
    pending_deadline: float | None
    last: str | None = None
    ran: bool = False
    failures: int = 0
    error: JobError | None = None

    def end(self, state: str, detail: str) -> bool:
        self.outcome.state, self.outcome.detail = state, detail
        return True


def watch_job(launcher: JobLauncher, outcome: JobOutcome, timeout: float | None = None,
              explain: bool = True, started: float | None = None) -> JobOutcome:
    """:meth:`JobLauncher.watch`: fills ``outcome`` and returns it."""
    start = time.monotonic()
    name, namespace = outcome.name, outcome.namespace
    w = _Watch(outcome, PendingDiagnosis(launcher.core, launcher.custom, launcher.backend,
                                         launcher.request_timeout),
               deadline=(started or start) + timeout if timeout else None,
               pending_deadline=((started or start) + launcher.pending_timeout
                                 if launcher.pending_timeout else None))
    while not _poll(launcher, w, explain):
        now = time.monotonic()
        if w.deadline is not None and now >= w.deadline:
            w.end("Timeout", f"{launcher.kind} {namespace}/{name} did not finish within "
                             f"{timeout:g}s (last state {w.last or 'unknown'})")
            if w.error is not None:  # the reason may be the API server, not the job
                w.outcome.detail += f"; the last {w.failures} request(s) failed: {w.error}"
            break
        ends = [d for d in (w.deadline, None if w.ran else w.pending_deadline)
                if d is not None]
        wait = min([launcher.poll_interval] + [d - now for d in ends])
        launcher.cancelled.wait(max(wait, 0.0))
    w.outcome.seconds = time.monotonic() - start
    return w.outcome


def _poll(launcher: JobLauncher, w: _Watch, explain: bool) -> bool:
    """One look at the job; True when the watch is over (``w.outcome`` says how)."""
    name, namespace, kind = w.outcome.name, w.outcome.namespace, launcher.kind
    if launcher.cancelled.is_set():
        return w.end("Cancelled", f"{kind} {namespace}/{name} was cancelled (SIGTERM: the "
                                  "pipeline step was stopped) and is deleted")
    try:
        job = launcher.get(name, namespace, w.deadline)
        w.failures, w.error = 0, None
        if launcher.cancelled.is_set():  # cancel() ran during the request
            return _poll(launcher, w, explain)
    except JobError as exc:
        w.failures, w.error = w.failures + 1, exc
        if w.failures > launcher.max_api_failures:
            raise JobError(f"{exc} ({w.failures} requests in a row failed); the job is "
                           "left as it is: a retry of this step adopts it") from exc
        log.warning("%s (attempt %d of %d)", exc, w.failures, launcher.max_api_failures)
        return False
    if job is None:
        return w.end("Vanished", f"{kind} {namespace}/{name} disappeared while running "
                                 "(deleted by someone else, or its TTL expired)")
    return _observe(launcher, w, job, explain)


def _observe(launcher: JobLauncher, w: _Watch, job: dict[str, Any], explain: bool) -> bool:
    """Log a change of state, end on success or failure, diagnose a job still waiting."""
    name, namespace, kind = w.outcome.name, w.outcome.namespace, launcher.kind
    status = launcher.backend.status(job)
    state = status.state
    if state != w.last:
        why = f": {status.reason} {status.message}" if status.reason else ""
        level = logging.WARNING if state in ("Restarting", "Failed") else logging.INFO
        log.log(level, "%s %s/%s is %s%s", kind, namespace, name, state, why)
        w.outcome.restarts += state == "Restarting"
        w.last = state
    w.ran = w.ran or status.started
    if state in ("Succeeded", "Failed"):
        launcher.last_job = job
        detail = launcher.explain_failure(job) if state == "Failed" and explain else ""
        return w.end(state, detail)
    if not w.ran:
        for line in w.diagnosis.new(job):
            log.warning("%s %s/%s cannot start yet: %s", kind, namespace, name, line)
        if w.pending_deadline is not None and time.monotonic() >= w.pending_deadline:
            return w.end("PendingTimeout", launcher.pending_detail(
                job, status, w.diagnosis.latest or sorted(w.diagnosis.seen)))
    return False
