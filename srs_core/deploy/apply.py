"""Create or update an InferenceService and wait until KServe says it is Ready.

Every request to the API server is bounded as the job launcher's are
(:mod:`srs_core.launch.kube`): connect and read timeouts of ``SRS_K8S_TIMEOUT`` seconds, no
urllib3 retries. An existing object is replaced with its resourceVersion (a concurrent change
is a 409: read again, retry), keeping what the server and KServe put in its metadata
(finalizers, owners). The wait ends after ``wait_seconds`` with the conditions' reasons, or
at once when KServe gives up on the model.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from srs_core.deploy.manifest import CRD_PATH, GROUP, KIND, PLURAL, VERSION
from srs_core.errors import ConfigError, JobError
from srs_core.launch.kube import (
    api_client,
    api_errors,
    bounded_timeout,
    describe_api_error,
    request_timeout_from_env,
    status_code,
)
from srs_core.launch.schema import validate_object

log = logging.getLogger(__name__)

# The namespace of the pod we run in: the downward API (the pipeline sets it), else the
# ServiceAccount's mount.
NAMESPACE_ENV = "SRS_NAMESPACE"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# KServe gives up on a model in these transition states; waiting longer changes nothing.
HOPELESS = ("BlockedByFailedLoad", "InvalidSpec")


class DeployError(JobError):
    """The InferenceService could not be created or updated, or did not become Ready."""


def current_namespace(environ: Mapping[str, str] | None = None) -> str:
    """The namespace this pod runs in ("" outside a cluster)."""
    env = os.environ if environ is None else environ
    if env.get(NAMESPACE_ENV):
        return env[NAMESPACE_ENV]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def ready_state(isvc: Mapping[str, Any]) -> tuple[bool, str]:
    """(Ready for the current generation, why not: the non-True conditions, KServe's failure)."""
    status = isvc.get("status") or {}
    conditions = status.get("conditions") or []
    generation = (isvc.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    current = generation is None or observed is None or observed >= generation
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    if ready and current:
        return True, ""
    lines = [f"{c.get('type')}={c.get('status')}"
             + (f" ({c.get('reason')}: {c.get('message', '')})" if c.get("reason") else "")
             for c in conditions if c.get("status") != "True"]
    failure = (status.get("modelStatus") or {}).get("lastFailureInfo") or {}
    if failure:
        lines.append(f"model: {failure.get('reason')}: {failure.get('message', '')}")
    if ready and not current:
        lines.append(f"Ready is for generation {observed}, not yet {generation}")
    return False, "; ".join(lines) or "no conditions yet (is the KServe controller running?)"


@dataclass
class DeployOutcome:
    """What :func:`apply_inference_service` did (what the pipeline step logs)."""

    name: str
    namespace: str
    created: bool
    generation: int | None = None
    url: str = ""
    seconds: float = 0.0
    conditions: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class InferenceServices:
    """Bounded get / create / replace of InferenceServices through CustomObjectsApi."""

    def __init__(self, configuration: Any = None, request_timeout: float | None = None):
        from kubernetes import client

        self.api = api_client(configuration)  # one bounded attempt per request; we retry
        self.configuration = self.api.configuration
        self.custom = client.CustomObjectsApi(self.api)
        self.request_timeout = request_timeout or request_timeout_from_env()

    def _timeout(self, deadline: float | None = None) -> tuple[float, float]:
        return bounded_timeout(self.request_timeout, deadline)

    def _error(self, what: str, exc: BaseException, timeout: tuple[float, float]
               ) -> DeployError:
        hint = ""
        status = status_code(exc)
        if status == 403:
            hint = (" — the runner's ServiceAccount needs get/create/update on "
                    f"{PLURAL}.{GROUP} in that namespace")
        elif status == 404:
            hint = f" — is KServe installed ({PLURAL}.{GROUP} {VERSION})?"
        problem = describe_api_error(exc, self.configuration.host, timeout[1])
        return DeployError(f"{what}: {problem}{hint}")

    def get(self, name: str, namespace: str, deadline: float | None = None
            ) -> dict[str, Any] | None:
        timeout = self._timeout(deadline)
        try:
            return self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=timeout)
        except api_errors() as exc:
            if status_code(exc) == 404:  # absent (or no such kind: create then says so)
                return None
            raise self._error(f"cannot read {KIND} {namespace}/{name}", exc, timeout) from exc

    def create(self, manifest: Mapping[str, Any], namespace: str) -> dict[str, Any] | None:
        """The created object, or None when one of that name appeared meanwhile (409)."""
        timeout = self._timeout()
        try:
            return self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, dict(manifest), _request_timeout=timeout)
        except api_errors() as exc:
            if status_code(exc) == 409:
                return None
            raise self._error(f"cannot create {KIND} {namespace}/{manifest['metadata']['name']}",
                              exc, timeout) from exc

    def replace(self, body: Mapping[str, Any], namespace: str) -> dict[str, Any] | None:
        """The updated object, or None when ``body``'s resourceVersion is stale (409)."""
        timeout = self._timeout()
        name = body["metadata"]["name"]
        try:
            return self.custom.replace_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, dict(body), _request_timeout=timeout)
        except api_errors() as exc:
            if status_code(exc) == 409:
                return None
            raise self._error(f"cannot update {KIND} {namespace}/{name}", exc, timeout) from exc

    def close(self) -> None:
        self.api.rest_client.pool_manager.clear()
        self.api.close()


def updated(existing: Mapping[str, Any], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """``existing`` with our spec, labels and annotations: what the API server and KServe
    keep in metadata (resourceVersion for the conflict check, finalizers, owners) stays."""
    body = copy.deepcopy(dict(existing))
    body.pop("status", None)  # the status subresource; a PUT of the object ignores it
    ours = manifest["metadata"]
    meta = body.setdefault("metadata", {})
    for key in ("labels", "annotations"):
        if ours.get(key):
            meta[key] = {**(meta.get(key) or {}), **ours[key]}
    body["spec"] = copy.deepcopy(manifest["spec"])
    return body


def _create_or_update(api: InferenceServices, manifest: Mapping[str, Any], namespace: str,
                      attempts: int = 3) -> tuple[dict[str, Any], bool]:
    """(the object as stored, created?); a stale resourceVersion is re-read and retried."""
    name = manifest["metadata"]["name"]
    for _ in range(attempts):
        existing = api.get(name, namespace)
        if existing is None:
            stored = api.create(manifest, namespace)
            if stored is not None:
                log.info("created %s %s/%s", KIND, namespace, name)
                return stored, True
            continue  # created by someone else meanwhile: update that one
        stored = api.replace(updated(existing, manifest), namespace)
        if stored is not None:
            log.info("updated %s %s/%s (resourceVersion %s -> %s)", KIND, namespace, name,
                     existing["metadata"].get("resourceVersion"),
                     stored["metadata"].get("resourceVersion"))
            return stored, False
        log.info("%s %s/%s changed while we updated it: reading it again", KIND, namespace, name)
    raise DeployError(f"{KIND} {namespace}/{name} kept changing under us ({attempts} conflicting "
                      "updates); is another deploy running? Retry the step")


def _wait_ready(api: InferenceServices, name: str, namespace: str, generation: int | None,
                wait_seconds: float, poll_interval: float) -> dict[str, Any]:
    deadline = time.monotonic() + wait_seconds
    why, isvc = "not read yet", None
    while True:
        try:
            isvc = api.get(name, namespace, deadline)
        except DeployError as exc:  # a flaky API server is not a failed deploy; keep trying
            why = str(exc)
            log.warning("%s", exc)
        else:
            if isvc is None:
                raise DeployError(f"{KIND} {namespace}/{name} disappeared while we waited for it "
                                  "to become Ready (deleted by someone else?)")
            ready, why = ready_state(isvc)
            if ready:
                return isvc
            transition = ((isvc.get("status") or {}).get("modelStatus") or {}).get(
                "transitionStatus")
            if transition in HOPELESS:
                raise DeployError(f"{KIND} {namespace}/{name} failed ({transition}): {why}")
        if time.monotonic() >= deadline:
            raise DeployError(
                f"{KIND} {namespace}/{name} did not become Ready within {wait_seconds:g}s: "
                f"{why}\n  inspect: kubectl -n {namespace} describe inferenceservice {name}")
        time.sleep(max(0.0, min(poll_interval, deadline - time.monotonic())))


def apply_inference_service(manifest: Mapping[str, Any], configuration: Any = None, *,
                            wait_seconds: float = 900.0, poll_interval: float = 5.0,
                            request_timeout: float | None = None) -> DeployOutcome:
    """Create ``manifest`` or update the InferenceService of its name, then wait up to
    ``wait_seconds`` (0: do not wait) for Ready; DeployError says why it is not."""
    meta = manifest["metadata"]
    name, namespace = meta["name"], meta.get("namespace") or current_namespace()
    if not namespace:
        raise ConfigError(f"{KIND} {name}: no namespace given and none to inherit (not in a pod)")
    manifest = {**manifest, "metadata": {**meta, "namespace": namespace}}
    validate_object(manifest, CRD_PATH, VERSION)
    started = time.monotonic()
    api = InferenceServices(configuration, request_timeout)
    try:
        stored, created = _create_or_update(api, manifest, namespace)
        generation = stored.get("metadata", {}).get("generation")
        final = stored
        if wait_seconds > 0:
            final = _wait_ready(api, name, namespace, generation, wait_seconds, poll_interval)
    finally:
        api.close()
    status = final.get("status") or {}
    outcome = DeployOutcome(name, namespace, created, generation, status.get("url", ""),
                            round(time.monotonic() - started, 3), status.get("conditions", []))
    log.info("%s %s/%s is Ready at %s", KIND, namespace, name, outcome.url or "(no URL)")
    return outcome
