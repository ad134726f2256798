"""The S3 backend's settings: the environment variables it reads, and their validation.

In a cluster the credential variables (:data:`ENV_KEYS`) come from the Kubernetes Secret
:data:`SECRET_NAME`; the launcher, the pipeline and the manifests name these constants.

``SRS_S3_ENDPOINT``    ``host:port`` or ``http(s)://host:port`` of the server
``SRS_S3_ACCESS_KEY``  access key
``SRS_S3_SECRET_KEY``  secret key (never logged or put in an error message)
``SRS_S3_SECURE``      ``true``/``false``: TLS (default: true, or what the endpoint's scheme says)
``SRS_S3_REGION``      optional region
``SRS_S3_RETRIES``     retries of a request after a transient error (default 5, exponential
                       backoff); one budget per request, and at most about one per command
``SRS_S3_TIMEOUT``     seconds a request may wait on the server (default 60): the read timeout,
                       i.e. the longest silence while awaiting an answer or between two bytes of
                       a transfer, not a limit on a whole transfer; connecting waits at most
                       ``min(10, SRS_S3_TIMEOUT)``. A timed-out attempt is retried, so a server
                       that never answers fails after about ``(retries + 1) * timeout`` seconds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import urlparse

from srs_core.errors import StoreError

ENDPOINT_ENV = "SRS_S3_ENDPOINT"
ACCESS_KEY_ENV = "SRS_S3_ACCESS_KEY"
SECRET_KEY_ENV = "SRS_S3_SECRET_KEY"
SECURE_ENV = "SRS_S3_SECURE"
REGION_ENV = "SRS_S3_REGION"
RETRIES_ENV = "SRS_S3_RETRIES"
TIMEOUT_ENV = "SRS_S3_TIMEOUT"

# What a pod's Secret provides; without SECURE_ENV, TLS unless the endpoint says http://.
ENV_KEYS = (ENDPOINT_ENV, ACCESS_KEY_ENV, SECRET_KEY_ENV, SECURE_ENV)
OPTIONAL_ENV_KEYS = (SECURE_ENV,)
# The Kubernetes Secret holding ENV_KEYS in the workflow's namespace (manifests/base keep the
# same name as a literal; tests/test_manifests.py checks that they agree).
SECRET_NAME = "srs-minio"


class Settings(NamedTuple):
    endpoint: str
    access: str
    secret: str
    secure: bool
    region: str | None
    retries: int
    timeout: float


def endpoint() -> str:
    """``host:port`` of the configured endpoint ('' if unset); names it in messages."""
    value = os.environ.get(ENDPOINT_ENV, "")
    return urlparse(value).netloc if "://" in value else value


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise StoreError(f"{name}={value!r}: expected true or false")


def _env_number(name: str, default: float, parse: Callable[[str], float],
                valid: Callable[[float], bool], expected: str) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = parse(text)
    except ValueError:
        value = None
    if value is None or not valid(value):
        raise StoreError(f"{name}={text!r}: expected {expected}")
    return value


def settings() -> Settings:
    """The settings from the environment; StoreError naming the variable that is wrong."""
    raw = os.environ.get(ENDPOINT_ENV, "")
    if not raw:
        raise StoreError(f"s3:// URI used but {ENDPOINT_ENV} is not set (host:port of MinIO/S3)")
    access = os.environ.get(ACCESS_KEY_ENV, "")
    secret = os.environ.get(SECRET_KEY_ENV, "")
    if not access or not secret:
        raise StoreError(f"{ACCESS_KEY_ENV} and {SECRET_KEY_ENV} must both be set for s3:// URIs")
    retries = int(_env_number(RETRIES_ENV, 5, int, lambda v: v >= 0, "a whole number >= 0"))
    timeout = _env_number(TIMEOUT_ENV, 60.0, float, lambda v: 0 < v < math.inf,
                          "a number of seconds > 0")
    secure = _env_bool(SECURE_ENV, not raw.startswith("http://"))
    region = os.environ.get(REGION_ENV) or None
    return Settings(endpoint(), access, secret, secure, region, retries, timeout)
