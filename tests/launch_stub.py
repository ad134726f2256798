"""A loopback stand-in for the few Kubernetes API endpoints the job launcher calls.

Both job kinds are served: Training Operator v1 PyTorchJobs and Trainer v2 TrainJobs (whose
pods carry JobSet's labels), plus Kueue's Workloads (``workloads`` = what Kueue would say), and
KServe InferenceServices for the deployer (create, replace with resourceVersion checks, get with
scripted statuses).

No cluster and no Training Operator exist on these machines. This threaded HTTP server answers
with the shapes of the Kubernetes / Training Operator REST API (objects, lists, ``Status``
errors, a chunked pod-log stream), records every request, and plays scripted job statuses: each
GET of a job returns the next step of its script (the last step repeats).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

GONE = object()  # script step: the job disappears (404 from now on)
NOW = "2025-01-01T00:00:00Z"
_JOBS = re.compile(r"^/apis/kubeflow\.org/v1/namespaces/([^/]+)/pytorchjobs(?:/([^/]+))?$")
_TRAINJOBS = re.compile(
    r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/]+))?$")
_WORKLOADS = re.compile(r"^/apis/kueue\.x-k8s\.io/v1beta1/namespaces/([^/]+)/workloads$")
_PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")
_EVENTS = re.compile(r"^/api/v1/namespaces/([^/]+)/events$")
_ISVCS = re.compile(
    r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices(?:/([^/]+))?$")


def conditions(state: str, reason: str = "", message: str = "") -> dict[str, Any]:
    """A job ``status`` as the Training Operator writes it on the way to ``state``."""
    def cond(kind: str, status: str = "True", why: str = "", text: str = "") -> dict[str, Any]:
        return {"type": kind, "status": status, "reason": why or f"PyTorchJob{kind}",
                "message": text or f"PyTorchJob is {kind.lower()}.",
                "lastUpdateTime": NOW, "lastTransitionTime": NOW}

    chain = [cond("Created")]
    if state == "Running":
        chain.append(cond("Running"))
    elif state in ("Restarting", "Succeeded", "Failed"):
        chain += [cond("Running", "False"), cond(state, why=reason, text=message)]
    return {"conditions": chain, "replicaStatuses": {"Master": {"active": 1}}}


def trainjob_status(state: str, reason: str = "", message: str = "") -> dict[str, Any]:
    """A TrainJob ``status`` as Trainer v2 writes it: Suspended/Complete/Failed conditions and
    the JobSet's jobs (active while it runs)."""
    def cond(kind: str, status: str = "True", why: str = "", text: str = "") -> dict[str, Any]:
        return {"type": kind, "status": status, "reason": why or kind,
                "message": text or f"TrainJob is {kind.lower()}", "lastTransitionTime": NOW}

    active = 1 if state == "Running" else 0
    conds = {"Suspended": [cond("Suspended", why=reason or "Suspended", text=message)],
             "Admitted": [cond("Suspended", "False", "Resumed")],
             "Succeeded": [cond("Complete", why=reason or "JobSetCompleted", text=message)],
             "Failed": [cond("Failed", why=reason or "JobSetFailed", text=message)]}
    return {"conditions": conds.get(state, []),
            "jobsStatus": [{"name": "node", "active": active, "ready": active, "succeeded": 0,
                            "failed": int(state == "Failed"), "suspended": 0}]}


def isvc_status(ready: bool | None, reason: str = "", message: str = "",
               generation: int = 1, url: str = "", failure: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """An InferenceService ``status`` as KServe writes it: ``None`` = not reconciled yet,
    else the Ready condition (and PredictorReady) for ``generation``."""
    if ready is None:
        return {}
    value = "True" if ready else "False"
    conds = [{"type": kind, "status": value, "lastTransitionTime": NOW,
              **({"reason": reason, "message": message} if not ready and reason else {})}
             for kind in ("PredictorReady", "Ready")]
    status: dict[str, Any] = {"conditions": conds, "observedGeneration": generation,
                              "modelStatus": {"transitionStatus": "UpToDate" if ready
                                              else "InProgress"}}
    if url:
        status["url"] = url
    if failure:
        status["modelStatus"] = {"transitionStatus": "BlockedByFailedLoad",
                                 "lastFailureInfo": failure}
    return status


def _pod_status(container: str, phase: str, restarts: int, state: dict[str, Any],
                unschedulable: str) -> dict[str, Any]:
    """A pod's status: one container in ``state``, or Pending and unschedulable."""
    if unschedulable:
        return {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": unschedulable}]}
    return {"phase": phase, "containerStatuses": [
        {"name": container, "image": "srs:test", "imageID": "", "ready": phase == "Running",
         "restartCount": restarts, "state": state}]}


def _container_state(exit_code: int | None, reason: str, waiting: str) -> dict[str, Any]:
    if waiting:
        return {"waiting": {"reason": waiting, "message": f"stub: {waiting}"}}
    if exit_code is not None:
        return {"terminated": {"exitCode": exit_code, "reason": reason or "Error",
                               "startedAt": NOW, "finishedAt": NOW}}
    return {"running": {"startedAt": NOW}}


def trainjob_pod(job: str, index: int = 0, phase: str = "Running", restarts: int = 0,
                 exit_code: int | None = None, reason: str = "", attempt: int = 0,
                 waiting: str = "", unschedulable: str = "",
                 created: str = NOW) -> dict[str, Any]:
    """A pod of TrainJob ``job`` as JobSet makes it (node rank = the completion index)."""
    status = _pod_status("node", phase, restarts, _container_state(exit_code, reason, waiting),
                         unschedulable)
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{job}-node-0-{index}-{uuid.uuid4().hex[:5]}",
                     "uid": str(uuid.uuid4()), "creationTimestamp": created,
                     "labels": {"jobset.sigs.k8s.io/jobset-name": job,
                                "jobset.sigs.k8s.io/replicatedjob-name": "node",
                                "jobset.sigs.k8s.io/restart-attempt": str(attempt),
                                "batch.kubernetes.io/job-completion-index": str(index)}},
        "spec": {"containers": [{"name": "node", "image": "srs:test"}]},
        "status": status,
    }


def workload(job_uid: str, admitted: bool, message: str = "") -> dict[str, Any]:
    """A Kueue Workload of the job with uid ``job_uid``: admitted, or waiting for quota."""
    status = "True" if admitted else "False"
    return {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "Workload",
            "metadata": {"name": f"job-{job_uid[:8]}", "labels": {
                "kueue.x-k8s.io/job-uid": job_uid}},
            "status": {"conditions": [{"type": "QuotaReserved", "status": status,
                                       "reason": "QuotaReserved" if admitted else "Pending",
                                       "message": message, "lastTransitionTime": NOW}]}}


def pod(job: str, role: str = "master", index: int = 0, phase: str = "Running",
        restarts: int = 0, exit_code: int | None = None, reason: str = "",
        waiting: str = "", unschedulable: str = "") -> dict[str, Any]:
    """A pod of ``job`` with the operator's labels; ``exit_code`` makes it terminated."""
    status = _pod_status("pytorch", phase, restarts,
                         _container_state(exit_code, reason, waiting), unschedulable)
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{job}-{role}-{index}", "uid": str(uuid.uuid4()),
                     "labels": {"training.kubeflow.org/job-name": job,
                                "training.kubeflow.org/job-role": role,
                                "training.kubeflow.org/replica-type": role,
                                "training.kubeflow.org/replica-index": str(index)}},
        "spec": {"containers": [{"name": "pytorch", "image": "srs:test"}]},
        "status": status,
    }


def event(name: str, kind: str, reason: str, message: str, type_: str = "Warning",
          when: str = NOW) -> dict[str, Any]:
    """A core/v1 Event about object ``kind``/``name``."""
    return {"apiVersion": "v1", "kind": "Event", "type": type_, "reason": reason,
            "message": message, "lastTimestamp": when, "firstTimestamp": when,
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:8]}"},
            "involvedObject": {"kind": kind, "name": name}}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]


@dataclass
class StubApiServer:
    """Scripted fake API server on 127.0.0.1; ``url`` goes into ``Configuration(host=...)``."""

    requests: list[Request] = field(default_factory=list)
    jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    scripts: dict[str, list[Any]] = field(default_factory=dict)
    pods: list[dict[str, Any]] = field(default_factory=list)
    logs: dict[str, list[str]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    workloads: list[dict[str, Any]] | None = field(default_factory=list)  # None: no Kueue
    job_errors: list[int] = field(default_factory=list)  # statuses for the next job GETs
    create_error: int | None = None
    conflict_job: dict[str, Any] | None = None  # appears just before the POST, which gets 409
    on_create: Callable[[], None] | None = None  # runs while a POST is being answered
    log_reads: dict[str, int] = field(default_factory=dict)
    # Requests it matches are recorded but never answered: an API server that stopped
    # answering (overloaded, partitioned, or a load balancer holding a dead backend).
    hang: Callable[[Request], bool] | None = None
    silent_logs: bool = False  # log streams stay open after their lines, without a word
    isvcs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    isvc_errors: dict[str, int] = field(default_factory=dict)  # method -> status, every time
    on_replace: Callable[[], None] | None = None  # runs before a PUT is checked (a racing writer)

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self._released = threading.Event()  # set by stop(): hanging handlers end then
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                stub._serve(self, "GET")

            def do_POST(self) -> None:
                stub._serve(self, "POST")

            def do_DELETE(self) -> None:
                stub._serve(self, "DELETE")

            def do_PUT(self) -> None:
                stub._serve(self, "PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> StubApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    # -- test helpers ------------------------------------------------------------------------
    def add_job(self, manifest: dict[str, Any], status: dict[str, Any] | None = None) -> None:
        meta = manifest["metadata"]
        stored = json.loads(json.dumps(manifest))
        stored["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=NOW)
        stored["status"] = status or {}
        self.jobs[(meta.get("namespace", "default"), meta["name"])] = stored

    def add_isvc(self, manifest: dict[str, Any], status: dict[str, Any] | None = None) -> None:
        """An InferenceService that exists already (resourceVersion 1, generation 1)."""
        stored = json.loads(json.dumps(manifest))
        meta = stored["metadata"]
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=NOW, resourceVersion="1",
                    generation=1, finalizers=["inferenceservice.finalizers"])
        stored["status"] = status or {}
        self.isvcs[(meta.get("namespace", "default"), meta["name"])] = stored

    def script(self, name: str, *steps: Any) -> None:
        """Statuses (dicts), ``GONE`` or callables ``(stub) -> status | GONE`` per job GET."""
        self.scripts[name] = list(steps)

    def calls(self, method: str, fragment: str = "") -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == method and fragment in r.path]

    def _next_status(self, name: str) -> Any:
        """The next scripted status of ``name`` (None: no script)."""
        steps = self.scripts.get(name)
        if not steps:
            return None
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        return step(self) if callable(step) else step

    # -- serving -------------------------------------------------------------------------------
    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        request = Request(method, parts.path, query, body,
                          {k.lower(): v for k, v in handler.headers.items()})
        with self.lock:
            self.requests.append(request)
            hang = self.hang is not None and self.hang(request)
        if hang:
            # No status line, no headers: only the client's read timeout ends this request.
            self._released.wait()
            handler.close_connection = True
            return None
        route = [(_JOBS, self._jobs), (_TRAINJOBS, self._jobs), (_WORKLOADS, self._workloads),
                 (_PODS, self._pods), (_LOG, self._log),
                 (_EVENTS, self._events), (_ISVCS, self._isvcs)]
        for pattern, serve in route:
            match = pattern.match(parts.path)
            if match:
                return serve(handler, method, query, body, *match.groups())
        self._reply(handler, 404, _status(404, "NotFound", f"stub: no route {parts.path}"))

    def _jobs(self, handler: Any, method: str, query: dict, body: Any, namespace: str,
              name: str | None) -> None:
        with self.lock:
            if name is None and method == "POST":
                if self.create_error:
                    return self._reply(handler, self.create_error,
                                       _status(self.create_error, "Forbidden", "stub: denied"))
                name = body["metadata"]["name"]
                if self.conflict_job is not None:
                    self.add_job(self.conflict_job)
                    self.conflict_job = None
                if (namespace, name) in self.jobs:
                    return self._reply(handler, 409, _status(
                        409, "AlreadyExists", f'pytorchjobs.kubeflow.org "{name}" already exists'))
                self.add_job(body)
                if self.on_create is not None:
                    self.on_create()
                return self._reply(handler, 201, self.jobs[(namespace, name)])
            if name is None:
                return self._reply(handler, 405, _status(405, "MethodNotAllowed", "stub"))
            if method == "GET" and self.job_errors:
                code = self.job_errors.pop(0)
                return self._reply(handler, code, _status(code, "InternalError", "stub: flaky"))
            job = self.jobs.get((namespace, name))
            if job is None:
                return self._reply(handler, 404, _status(
                    404, "NotFound", f'pytorchjobs.kubeflow.org "{name}" not found'))
            if method == "DELETE":
                del self.jobs[(namespace, name)]
                return self._reply(handler, 200, _status(200, "", "deleted", "Success"))
            step = self._next_status(name)
            if step is not None:
                if step is GONE:
                    del self.jobs[(namespace, name)]
                    return self._reply(handler, 404, _status(404, "NotFound", "gone"))
                job["status"] = step
            return self._reply(handler, 200, job)

    def _isvcs(self, handler: Any, method: str, query: dict, body: Any, namespace: str,
               name: str | None) -> None:
        """InferenceServices: POST creates (409 if present), PUT replaces when the body's
        resourceVersion is current (else 409), GET plays the script; status stays server-side."""
        with self.lock:
            if method in self.isvc_errors:
                code = self.isvc_errors[method]
                return self._reply(handler, code, _status(code, _REASONS.get(code, "Invalid"),
                                                          f"stub: {method} refused ({code})"))
            if name is None and method == "POST":
                name = body["metadata"]["name"]
                if (namespace, name) in self.isvcs:
                    return self._reply(handler, 409, _status(409, "AlreadyExists", (
                        f'inferenceservices.serving.kserve.io "{name}" already exists')))
                self.add_isvc({**body, "metadata": {**body["metadata"], "namespace": namespace}})
                return self._reply(handler, 201, self.isvcs[(namespace, name)])
            stored = self.isvcs.get((namespace, name)) if name else None
            if stored is None:
                return self._reply(handler, 404, _status(
                    404, "NotFound", f'inferenceservices.serving.kserve.io "{name}" not found'))
            if method == "PUT":
                return self._replace_isvc(handler, stored, body)
            if method == "GET":
                step = self._next_status(name)
                if step is not None:
                    stored["status"] = step
                return self._reply(handler, 200, stored)
            return self._reply(handler, 405, _status(405, "MethodNotAllowed", "stub"))

    def _replace_isvc(self, handler: Any, stored: dict[str, Any], body: dict[str, Any]) -> None:
        if self.on_replace is not None:
            self.on_replace()
        meta = stored["metadata"]
        if body["metadata"].get("resourceVersion") != meta["resourceVersion"]:
            return self._reply(handler, 409, _status(409, "Conflict", (
                f'Operation cannot be fulfilled on inferenceservices.serving.kserve.io '
                f'"{meta["name"]}": the object has been modified; please apply your changes '
                "to the latest version and try again")))
        spec_changed = body.get("spec") != stored.get("spec")
        status = stored.get("status", {})
        stored.clear()
        stored.update(json.loads(json.dumps(body)), status=status)  # PUT keeps the status
        stored["metadata"].update(
            uid=meta["uid"], creationTimestamp=meta["creationTimestamp"],
            resourceVersion=str(int(meta["resourceVersion"]) + 1),
            generation=meta["generation"] + int(spec_changed))
        return self._reply(handler, 200, stored)

    def _workloads(self, handler: Any, method: str, query: dict, body: Any,
                   namespace: str) -> None:
        if self.workloads is None:
            return self._reply(handler, 404, _status(404, "NotFound", "the server could not "
                                                     "find the requested resource"))
        wanted = dict(item.split("=", 1) for item in query.get("labelSelector", "").split(",")
                      if item)
        with self.lock:
            items = [w for w in self.workloads
                     if all(w["metadata"]["labels"].get(k) == v for k, v in wanted.items())]
        self._reply(handler, 200, {"apiVersion": "kueue.x-k8s.io/v1beta1",
                                   "kind": "WorkloadList", "metadata": {}, "items": items})

    def _pods(self, handler: Any, method: str, query: dict, body: Any, namespace: str) -> None:
        wanted = dict(item.split("=", 1) for item in query.get("labelSelector", "").split(",")
                      if item)
        with self.lock:
            items = [p for p in self.pods
                     if all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())]
        self._reply(handler, 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {},
                                   "items": items})

    def _log(self, handler: Any, method: str, query: dict, body: Any, namespace: str,
             name: str) -> None:
        with self.lock:
            lines = list(self.logs.get(name, []))
            self.log_reads[name] = self.log_reads.get(name, 0) + 1
        # Like the API server's follow=true stream: chunked, ends when the container stops.
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for line in lines:
            data = (line + "\n").encode()
            handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        if self.silent_logs:
            # A quiet container, or a connection dropped without a FIN: the reader cannot
            # tell them apart and only its read timeout ends the stream.
            handler.wfile.flush()
            self._released.wait()
            handler.close_connection = True
            return
        handler.wfile.write(b"0\r\n\r\n")

    def _events(self, handler: Any, method: str, query: dict, body: Any, namespace: str) -> None:
        # Field selectors the launcher uses: type=Warning and involvedObject.<field>=value.
        selector = [item.split("=", 1) for item in query.get("fieldSelector", "").split(",")
                    if item]
        with self.lock:
            items = [e for e in self.events if all(
                e.get(key) == value if "." not in key
                else e["involvedObject"].get(key.split(".", 1)[1]) == value
                for key, value in selector)]
        self._reply(handler, 200, {"apiVersion": "v1", "kind": "EventList", "metadata": {},
                                   "items": items})

    @staticmethod
    def _reply(handler: Any, code: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
            409: "Conflict", 422: "Invalid", 500: "InternalError"}


def _status(code: int, reason: str, message: str, status: str = "Failure") -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": status,
            "message": message, "reason": reason, "code": code}


def serve(setup: Callable[[StubApiServer], None] | None = None) -> StubApiServer:
    """A started stub, after ``setup(stub)``."""
    stub = StubApiServer()
    if setup:
        setup(stub)
    return stub.start()
