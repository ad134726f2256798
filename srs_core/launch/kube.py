"""Talking to the Kubernetes API server: credentials, bounded request timeouts, and errors
in words (urllib3's are cryptic). Shared by the job launcher and the serving deployer."""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from srs_core.errors import ConfigError, JobError

TIMEOUT_ENV = "SRS_K8S_TIMEOUT"
OWNER_ENV = ("SRS_POD_NAME", "SRS_POD_UID")  # the step pod, from the downward API
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


@functools.cache
def api_errors() -> tuple[type[BaseException], ...]:
    """What a request can raise: an HTTP error status, or no usable answer at all."""
    import urllib3
    from kubernetes.client.rest import ApiException

    return ApiException, urllib3.exceptions.HTTPError


def status_code(exc: BaseException) -> int | None:
    """HTTP status of an API error; None when the API server gave no answer."""
    from kubernetes.client.rest import ApiException

    return exc.status if isinstance(exc, ApiException) else None


def describe_api_error(exc: BaseException, host: str, timeout: float) -> str:
    """One line on what went wrong between us and the API server (urllib3's text is cryptic)."""
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

    status = status_code(exc)
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


def step_owner(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The step pod's name and uid (``job_owner=step``), from the downward-API env."""
    env = os.environ if environ is None else environ
    name, uid = (env.get(key, "") for key in OWNER_ENV)
    if not (name and uid):
        raise ConfigError(f"job_owner=step needs {' and '.join(OWNER_ENV)} (the pipeline sets "
                          "them from the downward API; `srs job run` needs them exported)")
    return {"name": name, "uid": uid}


def bounded_timeout(seconds: float, deadline: float | None = None) -> tuple[float, float]:
    """(connect, read) timeouts of one request: ``seconds``, cut to what is left before
    ``deadline`` (a ``time.monotonic()``)."""
    if deadline is not None:
        seconds = min(seconds, max(deadline - time.monotonic(), 0.1))
    return seconds, seconds


def api_client(configuration: Any = None) -> Any:
    """An ApiClient that makes one attempt per request: urllib3 would retry a timed-out GET
    three times, each with a fresh timeout; callers retry instead, minding their deadlines."""
    from kubernetes import client

    configuration = configuration or kube_configuration()
    configuration.retries = False
    return client.ApiClient(configuration)
